"""Per-channel moments merged exactly in float64 (Chan et al.), BN levels, and the merge across workers.
numpy only: no TensorFlow (tests run without it)."""
from __future__ import annotations

import numpy as np

from ckptkit.ir import Graph


class Moments:
    """Per-channel count/mean/M2 merged exactly in float64 (Chan et al.)."""

    def __init__(self, channels: int):
        self.n = 0.0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def add(self, n: float, mean: np.ndarray, m2: np.ndarray) -> None:
        if n <= 0:  # nothing measured (a worker whose shard was empty)
            return
        mean = mean.astype(np.float64)
        m2 = m2.astype(np.float64)
        total = self.n + n
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing data: checked, and refused, later
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta ** 2 * (self.n * n / total)
        self.n = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / max(self.n, 1.0)


def bn_levels(graph: Graph) -> dict[str, int]:
    """For each BN: 1 + the largest level of the BNs above it."""
    level: dict[str, int] = {}
    above: dict[str, int] = {}  # for every node: the largest BN level at or above it
    for node in graph.nodes:
        up = max((above.get(i, 0) for i in node.inputs), default=0)
        if node.op == "BatchNorm":
            level[node.name] = up + 1
            above[node.name] = up + 1
        else:
            above[node.name] = up
    return level


def merge_workers(cluster, full: dict, halves: list, seen: int, channels: dict[str, int]):
    """Every worker's (count, mean, M2) per BN, gathered (float64) and merged in rank order with Chan's
    formula: the same statistics on every worker, as if one process had seen every shard."""
    names = sorted(full)
    parts = [full, halves[0], halves[1]]
    row = [float(seen)]
    for moments in parts:
        for n in names:
            m = moments[n]
            row += [m.n, *m.mean, *m.m2]
    rows = cluster.gather(np.asarray(row, np.float64))
    merged = [{n: Moments(channels[n]) for n in names} for _ in parts]
    for r in rows:
        at = 1
        for target in merged:
            for n in names:
                c = channels[n]
                target[n].add(r[at], r[at + 1:at + 1 + c], r[at + 1 + c:at + 1 + 2 * c])
                at += 1 + 2 * c
    return merged[0], merged[1:], int(round(rows[:, 0].sum()))
