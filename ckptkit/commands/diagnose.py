"""Why is inference mode wrong? Stored moving statistics against the data's, per BN and at the output.

Nothing is written. Per BN layer: how far the stored mean/variance are from the data's (in the data's
standard deviations, and as a log variance ratio), next to the split-half noise of that estimate; at the
output: how much the model's outputs change when the stored statistics are replaced by the data's.
A verdict (healthy / stale / never updated / invalid / missing) and the `recalibrate` command to run.
"""
from __future__ import annotations

import math
import os
from statistics import NormalDist
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from ckptkit.core import options as flags
from ckptkit.core.lazy_tf import eager, tf
from ckptkit.read.checkpoint import resolve_prefix
from ckptkit.core.errors import CkptkitError
from ckptkit.core.options import Sampling, Topology
from ckptkit.run.tf_exec import inference_bn, run_graph, weight_tensors

VERDICTS = ("healthy", "inconclusive", "stale", "never updated", "invalid", "missing")  # from good to worst
STALE_MEAN_SHIFT = 0.25  # max |stored mean - data mean| / data std of a channel that matters
STALE_LOG_VAR = math.log(1.5)  # max |log(stored var / data var)| that matters
STALE_OUTPUT = 0.05  # relative change of the outputs that matters
FALSE_ALARM = 0.001  # chance that sampling noise alone calls a layer stale (Bonferroni over its channels)
OUTPUT_NOISE_FACTOR = 4.0  # output drift beyond this many times its split-half noise is not noise
JOINT_Z = 2.0  # when the output drift is beyond noise, layers shifted beyond this many noise units share it
DRIFT_SAMPLES = 256
MIN_BATCHES = 8  # the data is read in at least this many batches, so that its halves estimate the noise


@dataclass
class Diagnosis:
    verdict: str
    layers: list[dict]  # per BN: the recalibration report row plus its verdict, z-scores and thresholds
    output_drift: Optional[float]  # sum over samples of |y_stored - y_data| / sum of max(|y_stored|, |y_data|)
    top1_agreement: Optional[float]  # share of samples whose arg-max is unchanged (vector outputs)
    samples: int
    command: Optional[str]  # the recalibrate command that fixes it
    data: Optional[dict] = None
    preprocessing: Optional[dict] = None
    counts: dict = field(default_factory=dict)
    output_noise: Optional[float] = None  # the output drift sampling noise alone would give
    samples_needed: Optional[int] = None  # inconclusive: about how many samples would tell
    reason: str = ""  # one line: why this verdict

    def to_json(self) -> dict:
        return {"format_version": 2, "verdict": self.verdict, "reason": self.reason,
                "output_drift": self.output_drift, "output_noise": self.output_noise,
                "top1_agreement": self.top1_agreement, "samples": self.samples, "samples_needed": self.samples_needed,
                "command": self.command, "counts": self.counts, "data": self.data, "preprocessing": self.preprocessing,
                "layers": self.layers}


def _z_threshold(channels: int) -> float:
    """How many noise units the largest of `channels` shifts reaches by chance with probability FALSE_ALARM."""
    return NormalDist().inv_cdf(1.0 - FALSE_ALARM / (2.0 * max(channels, 1)))


def _judge_layer(row: dict, samples: int) -> dict:
    """The row's verdict with its evidence: a shift is stale only beyond both what matters and what the
    sampling noise of `samples` could give; beyond what matters but within the noise: inconclusive."""
    flags = set(row["flags"])
    out = {"verdict": "healthy", "mean_z": None, "log_variance_z": None, "samples_needed": None}
    for verdict, flag in (("missing", "was_missing"), ("invalid", "invalid"), ("never updated", "never_updated")):
        if flag in flags:
            return {**out, "verdict": verdict}
    z_star = _z_threshold(row["channels"])
    needed = []
    for key, noise_key, matters, z_key in (("mean_shift", "mean_noise", STALE_MEAN_SHIFT, "mean_z"),
                                           ("log_variance_ratio", "log_variance_noise", STALE_LOG_VAR,
                                            "log_variance_z")):
        shift, noise = row.get(key), row.get(noise_key)
        if shift is None:
            continue
        if noise is None:  # no halves (a single batch): nothing says the shift is beyond noise
            if shift > matters:
                out["verdict"] = max(out["verdict"], "inconclusive", key=VERDICTS.index)
            continue
        out[z_key] = shift / noise if noise > 0 else math.inf
        if shift <= matters:
            continue
        if shift > z_star * noise:
            out["verdict"] = "stale"
        else:
            out["verdict"] = max(out["verdict"], "inconclusive", key=VERDICTS.index)
            needed.append(samples * (z_star * noise / matters) ** 2)  # noise falls as 1/sqrt(samples)
    if out["verdict"] == "inconclusive" and needed:
        out["samples_needed"] = int(math.ceil(max(needed) / 50.0) * 50)
    return out


def _relative_drift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(sum |a - b|, sum of the larger of |a|, |b|) over samples: a ratio that cannot exceed 2."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    diff = np.linalg.norm(a - b, axis=1)
    base = np.maximum(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    return float(np.sum(diff)), float(np.sum(base))


def _output_drift(graph, statistics: dict, halves: list, batches, limit: int = DRIFT_SAMPLES):
    """(drift, top-1 agreement, noise): outputs with the stored statistics vs with the data's, on the first
    `limit` samples; the noise is the drift between the two halves' statistics, scaled to the full data."""
    if any(graph[n].params.get("mean") is None or graph[n].params.get("variance") is None for n in statistics):
        return None, None, None
    _tf = tf()
    weights = weight_tensors(graph)

    def with_stats(stats: dict):
        nodes = {n: replace(graph[n], params={**graph[n].params, "mean": m, "variance": v}) for n, (m, v) in stats.items()}
        return _tf.function(lambda x: run_graph(graph, x, params=weights,
                                                bn_hook=lambda node, t: inference_bn(nodes.get(node.name, node), t)),
                            autograph=False, reduce_retracing=True)

    stored = _tf.function(lambda x: run_graph(graph, x, params=weights), autograph=False, reduce_retracing=True)
    data = with_stats(statistics)
    split = len(halves) == 2 and all(set(h) == set(statistics) for h in halves)
    half_a, half_b = (with_stats(halves[0]), with_stats(halves[1])) if split else (None, None)
    sums = np.zeros(4)  # drift numerator, base; noise numerator, base
    agree, seen = [], 0
    for batch in batches:
        a, b = stored(batch).numpy(), data(batch).numpy()
        sums[:2] += _relative_drift(a, b)
        if split:
            sums[2:] += _relative_drift(half_a(batch).numpy(), half_b(batch).numpy())
        if a.reshape(len(a), -1).shape[1] > 1:
            agree.extend(a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1))
        seen += len(a)
        if seen >= limit:
            break
    if not seen:
        return None, None, None
    ratio = lambda num, base: (num / base if base > 0 else (0.0 if num == 0 else math.inf))  # noqa: E731
    drift = ratio(*sums[:2]) if np.isfinite(sums[:2]).all() else math.inf
    noise = ratio(*sums[2:]) / 2.0 if split and np.isfinite(sums[2:]).all() else None  # |A - B| ~ 2x full's error
    return drift, (float(np.mean(agree)) if agree else None), noise


def recalibrate_command(checkpoint: str, data: str, preprocessing: Optional[dict], topology: Topology,
                        sampling: Sampling) -> str:
    """The `ckptkit recalibrate` command that reproduces what was measured: the same checkpoint, data,
    topology and data options (as given to `diagnose`), and the preprocessing that was used (`preprocessing`,
    also when it came from a record), spelled by ckptkit.core.options' one table."""
    # in the current folder, named after the checkpoint (runs/x/ -> x-recalibrated/model.ckpt): never beside an
    # input that may be read-only or someone else's (a repository's fixtures/, a shared model store)
    prefix = resolve_prefix(checkpoint)
    stem = os.path.basename(os.path.normpath(checkpoint)) if os.path.isdir(checkpoint) else os.path.basename(prefix)
    out = os.path.join(stem + "-recalibrated", os.path.basename(prefix))
    given = {k: v for k, v in flags.as_options(topology, sampling).items()
             if k not in ("preprocess", "mean", "std", "resize")}
    measured = {**given, **flags.preprocessing_options(preprocessing)}
    return flags.command(["ckptkit", "recalibrate", checkpoint, "--data", data, *flags.to_words(measured), "-o", out])


@eager
def diagnose(checkpoint: str, data: str, *, model=None, topology: Optional[Topology] = None,
             sampling: Optional[Sampling] = None, progress=None, progress_total=None, **options) -> Diagnosis:
    """Judge the stored BatchNorm statistics of `checkpoint` against `data`; nothing is written.

    Args:
        checkpoint: prefix, file or folder.  data: as for `recalibrate`.
        model: a loaded Model (else loaded from the checkpoint and the topology).
        topology, sampling: typed options, as for `recalibrate` (ckptkit.core.options.Topology, Sampling); `options`
            the same fields as keywords (preprocess, batch_size, max_samples, meta, arch, ...).
        progress, progress_total: callbacks with the samples done per batch and the total to expect.
    Returns:
        Diagnosis: `.verdict` (healthy, stale, never updated, invalid, missing), `.layers` (per BN: drift,
        split-half noise, verdict), `.output_drift`, `.top1_agreement`, `.command` (the fix).
    Example:
        >>> ckptkit.diagnose("fixtures/digits/broken", "fixtures/digits/calibration", preprocess="unit").verdict
        'never updated'
    """
    from ckptkit.commands.recalibrate import measure

    topology, sampling = flags.split(options, topology, sampling)
    model, samples, result = measure(checkpoint, data, topology=topology, sampling=sampling, model=model,
                                     progress=progress, progress_total=progress_total, min_batches=MIN_BATCHES)
    if not result.report:
        raise CkptkitError("the graph has no BatchNorm: nothing to diagnose")
    layers = [{**row, **_judge_layer(row, result.samples)} for row in result.report]
    drift, agreement, noise = _output_drift(model.graph, result.statistics, result.halves, samples)
    verdict = max((r["verdict"] for r in layers), key=VERDICTS.index, default="healthy")
    reason = ""
    output_matters = drift is not None and drift > STALE_OUTPUT
    beyond_noise = output_matters and noise is not None and drift > OUTPUT_NOISE_FACTOR * noise
    if verdict in ("healthy", "inconclusive") and beyond_noise:
        # small shifts in many layers add up at the output: the layers shifted beyond their own noise share it
        joint = [r for r in layers if max(r["mean_z"] or 0.0, r["log_variance_z"] or 0.0) > JOINT_Z]
        for r in joint:
            r["verdict"] = "stale"
        if joint:
            verdict = "stale"
            reason = (f"{len(joint)} layer(s) shifted beyond their noise move the outputs by {drift:.1%} "
                      f"(sampling noise: {noise:.1%})")
    elif verdict == "healthy" and output_matters:  # the output moves, but not beyond what noise could do
        verdict = "inconclusive"
    needed = [r["samples_needed"] for r in layers if r["verdict"] == "inconclusive" and r["samples_needed"]]
    samples_needed = None
    if verdict == "inconclusive":
        if output_matters and noise:
            needed.append(int(math.ceil(result.samples * (OUTPUT_NOISE_FACTOR * noise / STALE_OUTPUT) ** 2 / 50) * 50))
        samples_needed = max(needed) if needed else None
        more = f"; about {samples_needed} would tell" if samples_needed else "; give more samples"
        reason = (f"{result.samples} samples are too few to tell staleness from sampling noise{more}")
    elif verdict == "stale" and not reason:
        worst = max((r for r in layers if r["verdict"] == "stale"),
                    key=lambda r: max(r["mean_z"] or 0.0, r["log_variance_z"] or 0.0))
        z = max(worst["mean_z"] or 0.0, worst["log_variance_z"] or 0.0)
        reason = f"{worst['layer']} is {z:.1f} noise units from the data's statistics (the noise of {result.samples} samples)"
    counts = {v: sum(1 for r in layers if r["verdict"] == v) for v in VERDICTS}
    command = None if verdict in ("healthy", "inconclusive") else recalibrate_command(
        checkpoint, data, result.preprocessing, topology, sampling)
    return Diagnosis(verdict, layers, drift, agreement, result.samples, command, result.data,
                     result.preprocessing, counts, noise, samples_needed, reason)
