"""Recalibration across machines: tf.distribute.MultiWorkerMirroredStrategy, configured by TF_CONFIG.

Every worker runs the same command. Each reads its own shard of the data (`rank::workers`) and runs its
forward passes on its own devices, with no collective per batch (uneven shards and slow readers never
stall one another). At the end of each pass a single all-gather brings every worker's float64
(count, mean, M2) per BatchNorm channel to every worker; each merges the rows in rank order with Chan's
formula, so all hold the same statistics, and only the chief writes the checkpoint.

    TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'

A `chief` task, if the cluster lists one, is rank 0 and writes; otherwise worker 0 does.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError

log = logging.getLogger("ckptkit")

TIMEOUT_ENV = "CKPTKIT_COLLECTIVE_TIMEOUT"  # seconds a worker waits for the others at the merge (default 1 h)


@dataclass
class Cluster:
    strategy: object  # tf.distribute.MultiWorkerMirroredStrategy
    task_type: str
    task_index: int
    rank: int  # 0 = the chief
    workers: int

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def job(self) -> str:
        return f"/job:{self.task_type}/replica:0/task:{self.task_index}"

    def describe(self) -> str:
        return f"{self.task_type} {self.task_index} (rank {self.rank} of {self.workers})"

    def gather(self, row: np.ndarray) -> np.ndarray:
        """Every worker's float64 row, stacked in rank order (a collective: every worker must call it). A
        worker with several local replicas sends its row once, zeros from the others (a zero count adds
        nothing to a merge)."""
        _tf = tf()
        local = _tf.constant(np.asarray(row, np.float64)[None])
        empty = _tf.zeros_like(local)
        values = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: local if _is_first_local(ctx, self.strategy) else empty)
        try:
            rows = self.strategy.gather(values, axis=0).numpy()
        except _tf.errors.OpError as err:
            first = str(err).strip().splitlines()[0][:160]
            raise CkptkitError(f"the workers of TF_CONFIG could not exchange their statistics ({first}): check that "
                               f"every worker runs the same command and can reach the others (or raise "
                               f"{TIMEOUT_ENV})") from None
        return rows


def _is_first_local(ctx, strategy) -> bool:
    local = strategy.extended.worker_devices
    return len(local) == 1 or ctx.replica_id_in_sync_group % len(local) == 0


def _parse(text: str) -> tuple[dict, str, int]:
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
        if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CkptkitError("TF_CONFIG is not a cluster description: expected {\"cluster\": {\"worker\": "
                           "[\"host:port\", ...]}, \"task\": {\"type\": \"worker\", \"index\": 0}} (or unset it to "
                           "run on this machine alone)") from None
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise CkptkitError(f"TF_CONFIG lists {', '.join(sorted(unknown))} tasks: recalibration runs on `worker` "
                           "tasks (and an optional `chief`); remove the others")
    if task_type not in cluster or not 0 <= task_index < len(cluster[task_type]):
        raise CkptkitError(f"TF_CONFIG's task {task_type} {task_index} is not in its cluster "
                           f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items())}): fix task.index")
    if len(cluster.get("chief", [])) > 1:
        raise CkptkitError("TF_CONFIG lists several chiefs: give at most one")
    return cluster, task_type, task_index


_CURRENT: Optional[Cluster] = None


def from_environment() -> Optional[Cluster]:
    """The cluster TF_CONFIG describes (None when it is unset or names a single task). Call it before
    TensorFlow runs anything: the strategy has to configure the runtime first."""
    global _CURRENT
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    cluster, task_type, task_index = _parse(text)
    workers = sum(len(v) for v in cluster.values())
    if workers == 1:
        return None
    if _CURRENT is not None:
        return _CURRENT
    _tf = tf()
    timeout = float(os.environ.get(TIMEOUT_ENV, "3600"))
    try:
        strategy = _tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=_tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout))
    except (RuntimeError, ValueError, _tf.errors.OpError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise CkptkitError(f"cannot join the cluster of TF_CONFIG ({first}): start the command in a fresh process "
                           "on every worker, with its own task index") from None
    rank = task_index + (1 if "chief" in cluster and task_type == "worker" else 0)
    _CURRENT = Cluster(strategy, task_type, task_index, rank, workers)
    log.info("TF_CONFIG: %s", _CURRENT.describe())
    return _CURRENT
