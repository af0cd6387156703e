"""Recompute BatchNorm moving statistics exactly from data (see docs/RECALIBRATION.md).

precise:    one pass; every BatchNorm normalises by its batch statistics, all else runs in
            inference mode. Per BN and channel, each batch gives (count, mean, M2) computed
            on the device; batches merge on the host in float64 with Chan's parallel formula,
            giving the pooled population variance over all N*H*W values.
sequential: inference-consistent. BNs are estimated level by level (level = longest chain of
            BNs above it); upstream BNs already run in inference mode with their new statistics,
            so each BN is measured on the distribution the deployed model will see.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ._tf import eager, tf
from .checkpoint import SIDECAR, Checkpoint, check_output_prefix, input_files, write_checkpoint
from .publish import check_outputs, publish_file
from . import validate
from .errors import CkptkitError
from .health import statistics_issues
from .ir import Graph, Node, bn_gamma_beta, shorten
from .phases import phase
from .tf_exec import inference_bn, run_graph, weight_tensors

log = logging.getLogger("ckptkit")
Progress = Callable[[int], None]


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


def _batch_moments(x, axes):
    _tf = tf()
    n = _tf.cast(_tf.reduce_prod(_tf.gather(_tf.shape(x), axes)), _tf.float32)
    mean = _tf.reduce_mean(x, axes)
    m2 = _tf.reduce_sum(_tf.square(x - mean), axes)  # two-pass within the batch: no cancellation
    return n, mean, m2


def _levels(graph: Graph) -> dict[str, int]:
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


# cuDNN's smallest epsilon (TF's own fused_batch_norm clamps the same way). It only touches the
# normalised output passed downstream, by < 1e-5 / variance relative; the moments are exact.
_CUDNN_MIN_EPS = 1.001e-5


def _fused(node: Node) -> bool:
    """A 4-D BN of known spatial size: measured by FusedBatchNormV3 (mean and Bessel-corrected variance
    over samples*H*W values; `_host_moments` turns them into count and M2)."""
    return len(node.shape) == 4 and None not in node.shape[1:3]


def _host_moments(node: Node, samples: int, got: tuple) -> tuple[float, np.ndarray, np.ndarray]:
    """(count, mean, M2) from what `_stats_fn` measured on one device for one BN."""
    if len(got) == 3:
        n, mean, m2 = got
        return float(n.numpy()), mean.numpy(), m2.numpy()
    mean, var = got
    n = float(samples * node.shape[1] * node.shape[2])
    # the kernel's variance is Bessel-corrected (and undefined for a single value: M2 = 0)
    m2 = var.numpy().astype(np.float64) * (n - 1.0) if n > 1 else np.zeros(var.shape)
    return n, mean.numpy(), m2


def _stats_fn(graph: Graph, measure: set[str], fixed: dict[str, tuple[np.ndarray, np.ndarray]], weights: dict):
    """batch -> ({bn: (n, mean, M2), or (mean, Bessel-corrected variance) for a `_fused` BN} for BNs in
    `measure`, samples); `_host_moments` makes both (count, mean, M2). BNs in `fixed` use those statistics.

    `weights` comes from `weight_tensors(graph)`. A plain function, traced by `_stepper` (once per
    replica under tf.distribute)."""
    _tf = tf()

    def hook(node: Node, x, collected: dict, empty):
        axes = list(range(len(node.shape) - 1))
        p = node.params
        if node.name in fixed:
            mean, var = fixed[node.name]
            fake = Node(node.name, "BatchNorm", node.inputs, node.shape, node.attrs,
                        dict(p, mean=mean.astype(np.float32), variance=var.astype(np.float32)))
            return inference_bn(fake, x)
        if _fused(node):  # one fused kernel: normalised output and the batch moments
            gamma, beta = bn_gamma_beta(node)
            y, mean, var, *_ = _tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
                epsilon=max(node.attrs.epsilon, _CUDNN_MIN_EPS), exponential_avg_factor=1.0, data_format="NHWC",
                is_training=True)
            if node.name in measure:  # the count and M2 are made on the host: fewer ops to trace
                collected[node.name] = (mean, var)
            return y
        n, mean, m2 = _batch_moments(x, axes)
        if node.name in measure:
            collected[node.name] = (n, mean, m2)
        var = m2 / n
        y = (x - mean) * _tf.math.rsqrt(var + node.attrs.epsilon)
        if p.get("gamma") is not None:
            y = y * p["gamma"]
        return y if p.get("beta") is None else y + p["beta"]

    def fn(x):
        collected: dict = {}
        empty = _tf.constant([], _tf.float32)
        run_graph(graph, x, lambda node, y: hook(node, y, collected, empty), params=weights)
        return collected, _tf.shape(x)[0]

    return fn


def _stepper(fn, devices: list[str]):
    """batch -> list of per-device ({bn: (n, mean, M2)}, samples).

    One device: plain placement. Several: tf.distribute.MirroredStrategy splits every batch
    across them; each replica's moments come back separately and merge exactly on the host."""
    _tf = tf()
    compiled = _tf.function(fn, reduce_retracing=True, autograph=False)  # plain Python: nothing to convert

    def single(batch):
        with _tf.device(devices[0]):
            return [compiled(batch)]

    if len(devices) == 1:
        return single
    strategy = _tf.distribute.MirroredStrategy(devices)

    @_tf.function(reduce_retracing=True, autograph=False)
    def step(batch):
        return strategy.run(fn, args=(batch,))

    def run(batch):
        if int(batch.shape[0]) < len(devices):  # too few samples to give every replica one
            return single(batch)
        parts = strategy.experimental_distribute_values_from_function(
            lambda ctx: _replica_slice(batch, ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync))
        out = step(parts)
        per_leaf = [strategy.experimental_local_results(leaf) for leaf in _tf.nest.flatten(out)]
        return [_tf.nest.pack_sequence_as(out, [v[min(r, len(v) - 1)] for v in per_leaf])
                for r in range(len(devices))]

    return run


def _replica_slice(batch, replica: int, replicas: int):
    """Contiguous, non-empty share of the batch for one replica (sizes differ by at most one)."""
    n = int(batch.shape[0])
    lo, hi = replica * n // replicas, (replica + 1) * n // replicas
    return batch[lo:hi]


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
    cluster: Optional[object] = None  # ckptkit.cluster.Cluster when TF_CONFIG spread the work over workers

    def to_json(self) -> dict:
        return {"format_version": 1, "checkpoint": self.checkpoint, "mode": self.mode, "samples": self.samples,
                "preprocessing": self.preprocessing, "data": self.data, "layers": self.report, "files": self.files}


def _accumulate(fn, batches, graph: Graph, names: set[str], progress: Optional[Progress], devices: list[str]):
    step = _stepper(fn, devices)
    full = {n: Moments(graph[n].shape[-1]) for n in names}
    halves = [{n: Moments(graph[n].shape[-1]) for n in names} for _ in range(2)]
    seen = 0
    batches = iter(batches)
    for i in itertools.count():
        with phase("recalibrate: read and preprocess data"):
            batch = next(batches, None)
        if batch is None:
            break
        batch = tf().convert_to_tensor(batch)  # numpy when the data are arrays alone
        count = 0
        with phase("recalibrate: first batch (trace and compile)" if i == 0 else "recalibrate: forward passes"):
            for moments, samples in step(batch):
                samples = int(samples)
                for name, got in moments.items():
                    n, mean, m2 = _host_moments(graph[name], samples, got)
                    full[name].add(n, mean, m2)
                    halves[i % 2][name].add(n, mean, m2)
                count += samples
        seen += count
        if progress:
            progress(count)
    return full, halves, seen


def _merge_workers(cluster, full: dict, halves: list, seen: int, channels: dict[str, int]):
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


def estimate(graph: Graph, batches, *, mode: str = "precise", device: Optional[str] = None,
             progress: Optional[Progress] = None, samples: Optional[int] = None,
             progress_total: Optional[Callable[[int], None]] = None, cluster=None) -> tuple[dict, dict, list, int]:
    """New (mean, variance) per BN node from an iterable of NHWC batches (re-iterable for sequential).

    `cluster` (ckptkit.cluster.Cluster): `batches` is this worker's shard; each pass ends with every
    worker's moments merged, so the result is the whole data's on every worker."""
    bns = [n for n in graph.nodes if n.op == "BatchNorm"]
    if not bns:
        raise CkptkitError("the graph has no BatchNorm: nothing to recalibrate")
    validate.choice("--mode", mode, ("precise", "sequential"))
    channels = {n.name: n.shape[-1] for n in bns}
    devices = resolve_devices(device)
    weights = weight_tensors(graph)  # once, shared by every pass
    # precise: one pass measuring every BN; sequential: one pass per BN level
    levels = _levels(graph) if mode == "sequential" else {n.name: 1 for n in bns}
    if progress_total and samples:
        progress_total(samples * len(set(levels.values())))
    fixed: dict = {}
    full, halves, seen = {}, [{}, {}], 0
    for level in sorted(set(levels.values())):
        names = {n for n, lv in levels.items() if lv == level}
        f, h, seen = _accumulate(_stats_fn(graph, names, dict(fixed), weights), batches, graph, names, progress,
                                 devices)
        if cluster is not None:
            f, h, seen = _merge_workers(cluster, f, h, seen, channels)
        full.update(f)
        halves[0].update(h[0])
        halves[1].update(h[1])
        for n in names:
            fixed[n] = (f[n].mean, f[n].variance)
    return full, halves, [n.name for n in bns], seen


def resolve_devices(device: Optional[str] = None, job: Optional[str] = None) -> list[str]:
    """Devices to run on: `device` ("/GPU:0", or a comma-separated list), else every GPU, else the CPU.
    `job` ("/job:worker/replica:0/task:1"): in a cluster, only this task's own devices."""
    if isinstance(device, list):  # already resolved
        return device
    _tf = tf()
    available = [d for d in _tf.config.list_logical_devices() if job is None or d.name.startswith(job + "/")]
    if device is not None and not device.replace(",", "").strip():
        raise CkptkitError(f"--device {device!r} names no device: give one such as /CPU:0 or /GPU:0, or leave it out "
                           "to use every GPU (else the CPU)")
    if not device:
        gpus = [d.name for d in available if d.device_type == "GPU"]
        return gpus or ["/CPU:0"]
    known = {(d.device_type, _tf.DeviceSpec.from_string(d.name).device_index): d.name for d in available}
    chosen = []
    for text in (d.strip() for d in device.split(",") if d.strip()):
        try:
            spec = _tf.DeviceSpec.from_string(text if text.startswith("/") else "/" + text)
            key = (spec.device_type.upper(), spec.device_index or 0) if spec.device_type else None
        except ValueError:
            key = None
        if key not in known:
            names = ", ".join(f"/{kind}:{index}" for kind, index in known)
            raise CkptkitError(f"--device {text} is not available here (devices: {names or 'none'}): pass one of them")
        chosen.append(known[key])
    if len(set(chosen)) != len(chosen):
        raise CkptkitError(f"--device {device} names a device twice: list each device once")
    return chosen


_FLAGS = {"missing_statistics": "was_missing", "never_updated": "never_updated", "invalid_variance": "invalid"}


def _report(graph: Graph, full: dict, halves: list, order: list[str]) -> list[dict]:
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


def write_statistics(ckpt: Checkpoint, graph: Graph, stats: dict, output: str,
                     extra_files: Optional[dict] = None) -> list[str]:
    """The input checkpoint with every BN's moving statistics replaced (or created); all else bit for bit."""
    new: dict[str, np.ndarray] = {}
    for name, (mean, var) in stats.items():
        node = graph[name]
        for key, value in (("mean", mean), ("variance", var)):
            var_name = node.sources.get(key)
            if not var_name:
                raise CkptkitError(f"BatchNorm {name} has no checkpoint variable for its moving {key}: "
                                   "recalibrate needs a graph that names its variables (.meta, --arch, builder)")
            dtype = ckpt.tensors[var_name].dtype if var_name in ckpt else "float32"
            new[var_name] = value.astype(dtype)
        # zero-debias: moving_mean = biased / (1 - decay^local_step); biased = mean and a huge
        # local_step make that identity hold whatever the decay.
        scope = node.sources["mean"]
        for extra in ckpt.names:
            if extra.endswith(scope + "/biased"):
                new[extra] = mean.astype(ckpt.tensors[extra].dtype)
            elif extra.endswith(scope + "/local_step"):
                new[extra] = np.asarray(1e9, ckpt.tensors[extra].dtype)

    def tensors():
        for name in ckpt.names:
            yield name, (new.pop(name) if name in new else ckpt.get(name))
        yield from sorted(new.items())  # statistics that were missing

    return write_checkpoint(output, tensors(), protect=[ckpt.prefix], extra_files=extra_files)


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
    try:
        with open(prefix + SIDECAR) as f:
            return json.load(f).get("preprocessing")
    except (OSError, ValueError, AttributeError):
        return None


def _check_outputs(output: Optional[str], ckpt_prefix: str, *paths: Optional[str]) -> None:
    """Every output path checked before any work: nothing fails after the checkpoint is written."""
    if output is not None:
        check_output_prefix(output, ckpt_prefix)
    check_outputs([p for p in paths if p], input_files(ckpt_prefix))


def _check_new_statistics(stats: dict) -> None:
    """No non-finite or negative statistic is ever written."""
    for name, (mean, var) in stats.items():
        bad = [i for i in statistics_issues(name, mean, var) if i.code == "invalid_variance"]
        if bad:
            raise CkptkitError(f"the new statistics of {name} are not finite ({bad[0].message.split(':')[0]}): the "
                               "data drive the network to overflow; check --preprocess and the samples' scale. "
                               "Nothing was written")


@eager
def measure(checkpoint: str, data: str, *, model=None, batch_size: int = 32, max_samples: Optional[int] = None,
            preprocess: Optional[str] = None, mean=None, std=None, resize: Optional[str] = None,
            mode: str = "precise", device: Optional[str] = None, seed: int = 0, image_key: str = "image/encoded",
            progress: Optional[Progress] = None, progress_total: Optional[Callable[[int], None]] = None,
            before_work: Optional[Callable[[], None]] = None, min_batches: int = 0, **load_args):
    """(model, samples, Recalibration): the statistics of `data` per BN, nothing written. `before_work` runs
    once the options are checked, before the model is loaded (output checks)."""
    from .cluster import from_environment
    from .data import Preprocessing, dataset, preprocessing
    from .sources import load

    cluster = from_environment()  # TF_CONFIG: first, before TensorFlow runs anything
    ckpt_prefix = Checkpoint(checkpoint).prefix
    if before_work:
        before_work()
    validate.count("--batch-size", batch_size, 2, "batch statistics need at least 2 samples")
    validate.count("--max-samples", max_samples, 1, optional=True)
    validate.count("--seed", seed, 0)
    validate.choice("--mode", mode, ("precise", "sequential"))
    model = model or load(checkpoint, **load_args)
    channels = int(model.input_shape[-1])
    prep: Optional[Preprocessing] = None
    if preprocess is None and (mean is not None or std is not None or resize is not None):
        raise CkptkitError("--mean/--std/--resize refine a --preprocess preset: give --preprocess too")
    if preprocess is None:
        recorded = recorded_preprocessing(ckpt_prefix)
        if recorded:
            prep = preprocessing(recorded["preset"], recorded["mean"], recorded["std"], channels, recorded["geometry"])
            log.info("preprocessing recorded beside %s: %s", ckpt_prefix, prep.describe())
    else:
        prep = preprocessing(preprocess, mean, std, channels, resize)
    devices = resolve_devices(device, cluster.job if cluster else None)
    make = lambda size: dataset(data, model.input_shape[1:], batch_size=size, max_samples=max_samples,  # noqa: E731
                                preprocess=prep, image_key=image_key, seed=seed,
                                shard=(cluster.rank, cluster.workers) if cluster else (0, 1))
    samples = make(batch_size)
    if min_batches and cluster is None and samples.count and samples.count < min_batches * batch_size:
        # the noise of the estimate comes from its halves (alternate batches): small data needs small batches;
        # precise statistics are pooled exactly, whatever the batch size
        quiet, log.disabled = log.disabled, True  # its skipped files were named by the first listing
        try:
            samples = make(max(2, samples.count // min_batches))
        finally:
            log.disabled = quiet
    full, halves, order, seen = estimate(model.graph, samples, mode=mode, device=devices, progress=progress,
                                         samples=samples.count, progress_total=progress_total, cluster=cluster)
    used = samples.summary()
    if seen == 0:
        raise CkptkitError(f"no usable samples in --data {data}: every sample was skipped (see the warnings)")
    stats = {n: (full[n].mean.astype(np.float32), full[n].variance.astype(np.float32)) for n in order}
    _check_new_statistics(stats)
    halves_stats = [{n: (h[n].mean.astype(np.float32), h[n].variance.astype(np.float32)) for n in order
                     if n in h and h[n].n} for h in halves]
    result = Recalibration(stats, _report(model.graph, full, halves, order), seen, mode, halves=halves_stats,
                           preprocessing=prep.to_json() if (prep is not None and samples.has_images) else None,
                           data={"source": os.path.abspath(data), "used": used, **samples.to_json()},
                           checkpoint=ckpt_prefix)
    result.cluster = cluster
    return model, samples, result


@eager
def recalibrate(checkpoint: str, data: str, output: Optional[str] = None, *, model=None,
                report_path: Optional[str] = None, plot_path: Optional[str] = None, **options) -> Recalibration:
    """Recompute the moving statistics of `checkpoint` from `data`; write `output` if given.

    Images need `preprocess` (a preset of ckptkit.data.PRESETS) unless an earlier recalibration recorded
    one beside the checkpoint. The graph's `.meta` (unchanged by recalibration) is written beside the
    output, so the next command finds it.

    Args:
        checkpoint: the input (never modified).  data: folder of images, .npy/.npz arrays, TFRecords.
        output: the output checkpoint prefix (None: measure only).
        model: a loaded Model (else `ckptkit.load(checkpoint, **load options)`).
        report_path, plot_path: also write the per-layer report (JSON) and its figure (PNG).
        options: `measure`'s (batch_size, max_samples, preprocess, mean, std, resize, mode, device,
            seed, image_key, progress, progress_total) and `ckptkit.load`'s (meta, arch, ...).
    Returns:
        Recalibration: `.statistics` {BN: (mean, variance)}, `.report` per layer, `.samples`, `.files`.
    Example:
        >>> r = ckptkit.recalibrate("fixtures/digits/broken", "fixtures/digits/calibration",
        ...                         "out/fixed/model.ckpt", preprocess="unit")
        >>> r.samples
        500
    """
    ckpt_prefix = Checkpoint(checkpoint).prefix
    model, _, result = measure(checkpoint, data, model=model, before_work=lambda: _check_outputs(
        output, ckpt_prefix, report_path, plot_path), **options)
    if result.cluster is not None and not result.cluster.is_chief:
        log.info("%s: measured its shard; the chief writes the checkpoint and the reports", result.cluster.describe())
        return result
    if output is not None:
        sidecar = os.path.abspath(output) + SIDECAR  # how these statistics were made; an older one is removed
        record = {"preprocessing": result.preprocessing, "recalibrated_from": ckpt_prefix,
                  "samples": result.samples, "mode": result.mode} if result.preprocessing else None
        meta = options.get("meta") or (None if options.get("arch") or options.get("frozen")
                                       else model.checkpoint.meta_path)
        result.files = write_statistics(model.checkpoint, model.graph, result.statistics, output, extra_files={
            sidecar: json.dumps(record, indent=2).encode() if record else None,
            os.path.abspath(output) + ".meta": _read_bytes(meta) if meta else None})
    protected = input_files(ckpt_prefix)
    if report_path:
        publish_file(report_path, lambda p: _write_json(p, result.to_json()), protect=protected)
    if plot_path:
        publish_file(plot_path, lambda p: plot(result, p), protect=protected)
    return result


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
