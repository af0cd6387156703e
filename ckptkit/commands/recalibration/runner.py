"""The forward passes that measure every BatchNorm's batch moments: on which devices, split over
tf.distribute replicas, batch by batch; the moments merge on the host (`moments`)."""
from __future__ import annotations

import itertools
from typing import Callable, Optional

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph, Node
from ckptkit.core.phases import phase
from ckptkit.run.tf_exec import inference_bn, run_graph, weight_tensors
from ckptkit.core import validate
from ckptkit.core.options import MODES
from ckptkit.core.bn_formula import gamma_beta, normalize
from ckptkit.commands.recalibration.moments import Moments, bn_levels, merge_workers

Progress = Callable[[int], None]


def _batch_moments(x, axes):
    _tf = tf()
    n = _tf.cast(_tf.reduce_prod(_tf.gather(_tf.shape(x), axes)), _tf.float32)
    mean = _tf.reduce_mean(x, axes)
    m2 = _tf.reduce_sum(_tf.square(x - mean), axes)  # two-pass within the batch: no cancellation
    return n, mean, m2


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
            gamma, beta = gamma_beta(node)
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
        return normalize(x, mean, m2 / n, node.attrs.epsilon, p.get("gamma"), p.get("beta"))

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


def estimate(graph: Graph, batches, *, mode: str = MODES[0], device: Optional[str] = None,
             progress: Optional[Progress] = None, samples: Optional[int] = None,
             progress_total: Optional[Callable[[int], None]] = None, cluster=None) -> tuple[dict, dict, list, int]:
    """New (mean, variance) per BN node from an iterable of NHWC batches (re-iterable for sequential).

    `cluster` (ckptkit.run.cluster.Cluster): `batches` is this worker's shard; each pass ends with every
    worker's moments merged, so the result is the whole data's on every worker."""
    bns = [n for n in graph.nodes if n.op == "BatchNorm"]
    if not bns:
        raise CkptkitError("the graph has no BatchNorm: nothing to recalibrate")
    validate.choice("--mode", mode, MODES)
    channels = {n.name: n.shape[-1] for n in bns}
    devices = resolve_devices(device)
    weights = weight_tensors(graph)  # once, shared by every pass
    # precise: one pass measuring every BN; sequential: one pass per BN level
    levels = bn_levels(graph) if mode == "sequential" else {n.name: 1 for n in bns}
    if progress_total and samples:
        progress_total(samples * len(set(levels.values())))
    fixed: dict = {}
    full, halves, seen = {}, [{}, {}], 0
    for level in sorted(set(levels.values())):
        names = {n for n, lv in levels.items() if lv == level}
        f, h, seen = _accumulate(_stats_fn(graph, names, dict(fixed), weights), batches, graph, names, progress,
                                 devices)
        if cluster is not None:
            f, h, seen = merge_workers(cluster, f, h, seen, channels)
        full.update(f)
        halves[0].update(h[0])
        halves[1].update(h[1])
        for n in names:
            fixed[n] = (f[n].mean, f[n].variance)
    return full, halves, [n.name for n in bns], seen


def check_device_spelling(device) -> None:
    """What can be told of --device without TensorFlow: that it names something."""
    if isinstance(device, str) and not device.replace(",", "").strip():
        raise CkptkitError(f"--device {device!r} names no device: give one such as /CPU:0 or /GPU:0, or leave it out "
                           "to use every GPU (else the CPU)")


def resolve_devices(device: Optional[str] = None, job: Optional[str] = None) -> list[str]:
    """Devices to run on: `device` ("/GPU:0", or a comma-separated list), else every GPU, else the CPU.
    `job` ("/job:worker/replica:0/task:1"): in a cluster, only this task's own devices."""
    if isinstance(device, list):  # already resolved
        return device
    check_device_spelling(device)
    _tf = tf()
    available = [d for d in _tf.config.list_logical_devices() if job is None or d.name.startswith(job + "/")]
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
