"""What a recalibration shows and keeps: the result, per-layer drift rows, the figure, and the record of how
the statistics were made, written beside the output checkpoint (read back by `recorded_preprocessing`: later
recalibrations and every export's verification inputs use it)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ckptkit.read.checkpoint import SIDECAR
from ckptkit.core.bn_health import statistics_issues
from ckptkit.ir import Graph, shorten


@dataclass
class Recalibration:
    statistics: dict[str, tuple[np.ndarray, np.ndarray]]  # BN node -> (mean, variance), float32
    report: list[dict]
    samples: int
    mode: str
    files: list[str] = field(default_factory=list)
    halves: list = field(default_factory=list, repr=False)  # the two halves' {BN: (mean, variance)}: the noise
    preprocessing: Optional[dict] = None  # how images were turned into inputs (None: arrays as they are)
    data: Optional[dict] = None  # where the samples came from and how many of the files were usable

    checkpoint: str = ""
    cluster: Optional[object] = None  # ckptkit.run.cluster.Cluster when TF_CONFIG spread the work over workers

    def to_json(self) -> dict:
        return {"format_version": 1, "checkpoint": self.checkpoint, "mode": self.mode, "samples": self.samples,
                "preprocessing": self.preprocessing, "data": self.data, "layers": self.report, "files": self.files}


_FLAGS = {"missing_statistics": "was_missing", "never_updated": "never_updated", "invalid_variance": "invalid"}


def layer_report(graph: Graph, full: dict, halves: list, order: list[str]) -> list[dict]:
    rows = []
    for position, name in enumerate(order):
        node = graph[name]
        eps = node.attrs.epsilon
        new_m, new_v = full[name].mean, full[name].variance
        old_m, old_v = node.params.get("mean"), node.params.get("variance")
        flags = sorted({_FLAGS[i.code] for i in statistics_issues(name, old_m, old_v)})
        if (new_v < 1e-8).any():
            flags.append("near_zero_variance")
        std = np.sqrt(new_v + eps)
        mean_shift = None if old_m is None else float(np.max(np.abs(new_m - old_m) / std))
        var_ratio = None
        if old_v is not None and np.all(old_v > 0) and np.all(np.isfinite(old_v)):
            var_ratio = float(np.max(np.abs(np.log((old_v + eps) / (new_v + eps)))))
        a, b = halves[0].get(name), halves[1].get(name)
        stability = mean_noise = log_var_noise = None
        if a is not None and b is not None and a.n and b.n:
            stability = float(np.max(np.abs(a.mean - b.mean) / std))
            # standard error of the full-data estimate, from the two halves' difference (n_a n_b / n^2 weights
            # unequal halves), pooled over channels (in the channel's std; log variance as it is)
            weight = math.sqrt(a.n * b.n) / (a.n + b.n)
            mean_noise = float(np.sqrt(np.mean(((a.mean - b.mean) / std * weight) ** 2)))
            with np.errstate(divide="ignore", invalid="ignore"):
                d = np.log((a.variance + eps) / (b.variance + eps)) * weight
            log_var_noise = float(np.sqrt(np.mean(d ** 2))) if np.all(np.isfinite(d)) else None
        rows.append({"layer": name, "variables": {k: node.sources.get(k) for k in ("mean", "variance")},
                     "channels": int(new_m.size), "samples": int(full[name].n), "mean_shift": mean_shift,
                     "log_variance_ratio": var_ratio, "split_half_mean_diff": stability, "mean_noise": mean_noise,
                     "log_variance_noise": log_var_noise, "flags": flags, "order": position})
    drift = lambda r: (r["mean_shift"] if r["mean_shift"] is not None else math.inf) + (  # noqa: E731
        r["log_variance_ratio"] if r["log_variance_ratio"] is not None else math.inf)
    return sorted(rows, key=drift, reverse=True)


STABLE_SPLIT_HALF = 0.05  # split-half mean difference (in stds) above which more samples are needed


def plot(result: "Recalibration", path: str) -> str:
    """Write `figure(result)` as a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def figure(result: "Recalibration"):
    """A figure for a bug report: per BN layer in network order, how far the stored statistics were from
    the data's (mean and variance), and how stable the new ones are (split-half, with the 0.05 line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result.report, key=lambda r: r.get("order", 0))
    n = len(rows)
    names = [r["layer"] for r in rows]
    fig, axes = plt.subplots(1, 3, sharey=True, figsize=(14, max(3.5, 0.24 * n + 1.6)))
    y = np.arange(n)
    panels = (("mean_shift", "stored vs data mean\nmax |Δmean| / std", "tab:blue"),
              ("log_variance_ratio", "stored vs data variance\nmax |log(var_stored / var_data)|", "tab:orange"),
              ("split_half_mean_diff", "stability of the new mean\nsplit-half max |Δmean| / std", "tab:green"))
    for ax, (key, title, colour) in zip(axes, panels):
        values = [r[key] for r in rows]
        ax.barh(y, [v if v is not None else 0.0 for v in values], color=colour, height=0.7)
        for i, (v, r) in enumerate(zip(values, rows)):
            if v is None:  # missing (or unusable) stored statistics: nothing to compare, said in words
                ax.text(0, i, "  missing" if "was_missing" in r["flags"] else "  n/a", va="center", fontsize=7,
                        color="tab:red")
            elif r["flags"] and key != "split_half_mean_diff":
                ax.text(v, i, "  " + ",".join(r["flags"]), va="center", fontsize=6, color="tab:red")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        top = max([v for v in values if v is not None] + [STABLE_SPLIT_HALF if key == "split_half_mean_diff" else 0.1])
        ax.set_xlim(0, top * 1.35)  # room for the flags written after the bars
    axes[2].axvline(STABLE_SPLIT_HALF, color="tab:red", linestyle="--", linewidth=1,
                    label=f"{STABLE_SPLIT_HALF}: above it, use more samples")
    axes[2].legend(loc="lower right", fontsize=7)
    axes[0].set_yticks(y, [shorten(name, 48) for name in names], fontsize=7 if n < 60 else 5)
    axes[0].invert_yaxis()  # network order, input at the top
    prep = result.preprocessing
    how = f"--preprocess {prep['preset']}" if prep else ".npy/.npz samples as they are"
    fig.suptitle(f"BatchNorm statistics of {result.checkpoint or 'the checkpoint'}\n{n} layers, "
                 f"{result.samples} samples ({result.mode} mode), {how}", fontsize=10)
    fig.tight_layout()
    return fig


def recorded_preprocessing(prefix: str) -> Optional[dict]:
    """The preprocessing recorded beside a checkpoint by an earlier recalibration, if any."""
    from ckptkit.core.safe_io import read_optional

    data = read_optional(prefix + SIDECAR, "record")  # a FIFO or a link to /dev/zero is refused, never read
    try:
        return json.loads(data).get("preprocessing") if data is not None else None
    except (ValueError, AttributeError):
        return None


def record(result: Recalibration, recalibrated_from: str) -> Optional[dict]:
    """The side file's content (None when nothing needs recording: arrays used as they are)."""
    if not result.preprocessing:
        return None
    return {"preprocessing": result.preprocessing, "recalibrated_from": recalibrated_from,
            "samples": result.samples, "mode": result.mode}
