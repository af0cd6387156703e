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

import json
import logging
import os
from typing import Callable, Optional

import numpy as np

from ckptkit.core.lazy_tf import eager
from ckptkit.read.checkpoint import SIDECAR, Checkpoint, input_files
from ckptkit.core.errors import CkptkitError
from ckptkit.core.publish import publish_file
from ckptkit.core import validate
from ckptkit.core.options import MODES, Sampling, Topology, split
from ckptkit.commands.recalibration.moments import Moments
from ckptkit.commands.recalibration.output import check_new_statistics, check_output_paths, write_statistics
from ckptkit.commands.recalibration.report import (Recalibration, figure, layer_report, plot, record,
                                                   recorded_preprocessing)
from ckptkit.commands.recalibration.runner import Progress, check_device_spelling, estimate, resolve_devices

__all__ = ["measure", "recalibrate", "Recalibration", "Moments", "estimate", "resolve_devices", "figure", "plot",
           "recorded_preprocessing", "write_statistics"]

log = logging.getLogger("ckptkit")


@eager
def measure(checkpoint: str, data: str, *, topology: Optional[Topology] = None, sampling: Optional[Sampling] = None,
            model=None, progress: Optional[Progress] = None, progress_total: Optional[Callable[[int], None]] = None,
            before_work: Optional[Callable[[], None]] = None, min_batches: int = 0):
    """(model, samples, Recalibration): the statistics of `data` per BN, nothing written. `before_work` runs
    once the options are checked, before the model is loaded (output checks)."""
    from ckptkit.run.cluster import from_environment
    from ckptkit.read.data import Preprocessing, check_data, dataset, preprocessing
    from ckptkit.topology.sources import load

    topology, sampling = topology or Topology(), sampling or Sampling()
    batch_size, max_samples, seed, mode = sampling.batch_size, sampling.max_samples, sampling.seed, sampling.mode
    preprocess, mean, std, resize = sampling.preprocess, sampling.mean, sampling.std, sampling.resize
    cluster = from_environment()  # TF_CONFIG: first, before TensorFlow runs anything
    ckpt_prefix = Checkpoint(checkpoint).prefix
    validate.count("--batch-size", batch_size, 2, "batch statistics need at least 2 samples")
    validate.count("--max-samples", max_samples, 1, optional=True)
    validate.count("--seed", seed, 0)
    validate.choice("--mode", mode, MODES)
    if preprocess is None and (mean is not None or std is not None or resize is not None):
        raise CkptkitError("--mean/--std/--resize refine a --preprocess preset: give --preprocess too")
    check_device_spelling(sampling.device)
    listing = check_data(data, preprocess is not None or recorded_preprocessing(ckpt_prefix) is not None)  # before TF
    if before_work:
        before_work()
    model = model or load(checkpoint, **topology.load_args())
    channels = int(model.input_shape[-1])
    prep: Optional[Preprocessing] = None
    if preprocess is None:
        recorded = recorded_preprocessing(ckpt_prefix)
        if recorded:
            prep = preprocessing(recorded["preset"], recorded["mean"], recorded["std"], channels, recorded["geometry"])
            log.info("preprocessing recorded beside %s: %s", ckpt_prefix, prep.describe())
    else:
        prep = preprocessing(preprocess, mean, std, channels, resize)
    devices = resolve_devices(sampling.device, cluster.job if cluster else None)
    make = lambda size: dataset(data, model.input_shape[1:], batch_size=size, max_samples=max_samples,  # noqa: E731
                                preprocess=prep, image_key=sampling.image_key, seed=seed,
                                shard=(cluster.rank, cluster.workers) if cluster else (0, 1), listing=listing)
    samples = make(batch_size)
    full, halves, order, seen = estimate(model.graph, samples, mode=mode, device=devices, progress=progress,
                                         samples=samples.count, progress_total=progress_total, cluster=cluster)
    if min_batches and cluster is None and samples.count and samples.count < min_batches * batch_size:
        # the noise of the estimate comes from its halves (alternate batches): small data needs small batches for
        # them. The statistics themselves stay those of the batch size asked for: in precise mode upstream BNs
        # normalise by batch statistics, so the batch size shapes them, and `recalibrate` must reproduce them
        quiet, log.disabled = log.disabled, True  # its skipped files were named by the first listing
        try:
            small = make(max(2, samples.count // min_batches))
        finally:
            log.disabled = quiet
        _, halves, _, _ = estimate(model.graph, small, mode=mode, device=devices, samples=small.count,
                                   cluster=cluster)
    used = samples.summary()
    if seen == 0:
        raise CkptkitError(f"no usable samples in --data {data}: every sample was skipped (see the warnings)")
    stats = {n: (full[n].mean.astype(np.float32), full[n].variance.astype(np.float32)) for n in order}
    check_new_statistics(stats)
    halves_stats = [{n: (h[n].mean.astype(np.float32), h[n].variance.astype(np.float32)) for n in order
                     if n in h and h[n].n} for h in halves]
    result = Recalibration(stats, layer_report(model.graph, full, halves, order), seen, mode, halves=halves_stats,
                           preprocessing=prep.to_json() if (prep is not None and samples.has_images) else None,
                           data={"source": os.path.abspath(data), "used": used, **samples.to_json()},
                           checkpoint=ckpt_prefix)
    result.cluster = cluster
    return model, samples, result


@eager
def recalibrate(checkpoint: str, data: str, output: Optional[str] = None, *, model=None,
                report_path: Optional[str] = None, plot_path: Optional[str] = None,
                topology: Optional[Topology] = None, sampling: Optional[Sampling] = None,
                progress: Optional[Progress] = None, progress_total: Optional[Callable[[int], None]] = None,
                **options) -> Recalibration:
    """Recompute the moving statistics of `checkpoint` from `data`; write `output` if given.

    Images need `preprocess` (a preset of ckptkit.read.data.PRESETS) unless an earlier recalibration recorded
    one beside the checkpoint. The graph's `.meta` (unchanged by recalibration) is written beside the
    output, so the next command finds it.

    Args:
        checkpoint: the input (never modified).  data: folder of images, .npy/.npz arrays, TFRecords.
        output: the output checkpoint prefix (None: measure only).
        model: a loaded Model (else `ckptkit.load(checkpoint, **topology)`).
        report_path, plot_path: also write the per-layer report (JSON) and its figure (PNG).
        topology, sampling: typed options (ckptkit.core.options.Topology: meta, arch, ...; Sampling: batch_size,
            max_samples, preprocess, mean, std, resize, mode, device, seed, image_key).
        options: the same fields as keywords (`preprocess="unit", arch="resnet_v1_50"`), over the typed ones.
        progress, progress_total: callbacks with the samples done per batch and the total to expect.
    Returns:
        Recalibration: `.statistics` {BN: (mean, variance)}, `.report` per layer, `.samples`, `.files`.
    Example:
        >>> r = ckptkit.recalibrate("fixtures/digits/broken", "fixtures/digits/calibration",
        ...                         "out/fixed/model.ckpt", preprocess="unit")
        >>> r.samples
        500
    """
    topology, sampling = split(options, topology, sampling)
    ckpt_prefix = Checkpoint(checkpoint).prefix
    model, _, result = measure(checkpoint, data, topology=topology, sampling=sampling, model=model,
                               progress=progress, progress_total=progress_total,
                               before_work=lambda: check_output_paths(output, ckpt_prefix, report_path, plot_path))
    if result.cluster is not None and not result.cluster.is_chief:
        log.info("%s: measured its shard; the chief writes the checkpoint and the reports", result.cluster.describe())
        return result
    if output is not None:
        sidecar = os.path.abspath(output) + SIDECAR  # how these statistics were made; an older one is removed
        kept = record(result, ckpt_prefix)
        meta = topology.meta or (None if topology.arch or topology.frozen else model.checkpoint.meta_path)
        result.files = write_statistics(model.checkpoint, model.graph, result.statistics, output, extra_files={
            sidecar: json.dumps(kept, indent=2).encode() if kept else None,
            os.path.abspath(output) + ".meta": _read_bytes(meta) if meta else None})
    protected = input_files(ckpt_prefix)
    if report_path:
        publish_file(report_path, lambda p: _write_json(p, result.to_json()), protect=protected)
    if plot_path:
        publish_file(plot_path, lambda p: plot(result, p), protect=protected)
    return result


def _read_bytes(path: str) -> bytes:
    from ckptkit.core.safe_io import MAX_GRAPH_BYTES, read_bounded

    return read_bounded(path, "meta graph", MAX_GRAPH_BYTES)


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
