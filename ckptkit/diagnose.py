"""Why is inference mode wrong? Stored moving statistics against the data's, per BN and at the output.

Nothing is written. Per BN layer: how far the stored mean/variance are from the data's (in the data's
standard deviations, and as a log variance ratio), next to the split-half noise of that estimate; at the
output: how much the model's outputs change when the stored statistics are replaced by the data's.
A verdict (healthy / stale / never updated / invalid / missing) and the `recalibrate` command to run.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from ._tf import eager, tf
from .errors import CkptkitError
from .tf_exec import inference_bn, run_graph, weight_tensors

VERDICTS = ("healthy", "stale", "never updated", "invalid", "missing")  # from good to worst
STALE_MEAN_SHIFT = 0.25  # max |stored mean - data mean| / data std of a channel
STALE_LOG_VAR = math.log(1.5)  # max |log(stored var / data var)|
STALE_OUTPUT = 0.05  # relative change of the outputs
DRIFT_SAMPLES = 256
_NOT_OPTIONS = ("progress", "progress_total", "before_work")  # callbacks, not measurement options


@dataclass
class Diagnosis:
    verdict: str
    layers: list[dict]  # per BN: the recalibration report row plus its verdict
    output_drift: Optional[float]  # mean over samples of |y_stored - y_data| / |y_data|
    top1_agreement: Optional[float]  # share of samples whose arg-max is unchanged (vector outputs)
    samples: int
    command: Optional[str]  # the recalibrate command that fixes it
    data: Optional[dict] = None
    preprocessing: Optional[dict] = None
    counts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format_version": 1, "verdict": self.verdict, "output_drift": self.output_drift,
                "top1_agreement": self.top1_agreement, "samples": self.samples, "command": self.command,
                "counts": self.counts, "data": self.data, "preprocessing": self.preprocessing, "layers": self.layers}


def _layer_verdict(row: dict) -> str:
    flags = set(row["flags"])
    if "was_missing" in flags:
        return "missing"
    if "invalid" in flags:
        return "invalid"
    if "never_updated" in flags:
        return "never updated"
    noise = 3 * (row["split_half_mean_diff"] or 0.0)
    if (row["mean_shift"] or 0.0) > max(STALE_MEAN_SHIFT, noise) or (row["log_variance_ratio"] or 0.0) > STALE_LOG_VAR:
        return "stale"
    return "healthy"


def _output_drift(graph, statistics: dict, batches, limit: int = DRIFT_SAMPLES):
    """Outputs with the stored statistics vs with the data's, on the first `limit` samples."""
    if any(graph[n].params.get("mean") is None or graph[n].params.get("variance") is None for n in statistics):
        return None, None
    _tf = tf()
    weights = weight_tensors(graph)
    with_data = {n: replace(graph[n], params={**graph[n].params, "mean": m, "variance": v})
                 for n, (m, v) in statistics.items()}
    stored = _tf.function(lambda x: run_graph(graph, x, params=weights), autograph=False, reduce_retracing=True)
    data = _tf.function(lambda x: run_graph(graph, x, params=weights,
                                            bn_hook=lambda node, t: inference_bn(with_data.get(node.name, node), t)),
                        autograph=False, reduce_retracing=True)
    drifts, agree, seen = [], [], 0
    for batch in batches:
        a, b = stored(batch).numpy(), data(batch).numpy()
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        drifts.extend(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12))
        if a.shape[1] > 1:
            agree.extend(a.argmax(1) == b.argmax(1))
        seen += len(a)
        if seen >= limit:
            break
    if not drifts:
        return None, None
    finite = np.isfinite(drifts)
    drift = float(np.mean(drifts)) if finite.all() else math.inf
    return drift, (float(np.mean(agree)) if agree else None)


def recalibrate_command(checkpoint: str, data: str, preprocessing: Optional[dict], options: dict) -> str:
    """The `ckptkit recalibrate` command that reproduces what was measured: the same checkpoint, data,
    topology and data options (`options`, as given to `diagnose`), and the preprocessing that was used
    (`preprocessing`, also when it came from a record), spelled by ckptkit.options' one table."""
    from . import options as flags
    from .checkpoint import resolve_prefix

    if os.path.isdir(checkpoint):  # runs/x/ -> runs/x-recalibrated/model.ckpt
        out = os.path.join(checkpoint.rstrip("/") + "-recalibrated", os.path.basename(resolve_prefix(checkpoint)))
    else:
        out = checkpoint + "-recalibrated"
    given = {k: v for k, v in options.items() if k not in ("preprocess", "mean", "std", "resize")}
    measured = {**given, **flags.preprocessing_options(preprocessing)}
    return flags.command(["ckptkit", "recalibrate", checkpoint, "--data", data, *flags.to_words(measured), "-o", out])


@eager
def diagnose(checkpoint: str, data: str, *, model=None, **options) -> Diagnosis:
    """Judge the stored BatchNorm statistics of `checkpoint` against `data`; nothing is written.

    Args:
        checkpoint: prefix, file or folder.  data: as for `recalibrate`.
        model: a loaded Model (else loaded from the checkpoint and the load options).
        options: `ckptkit.recalibrate.measure`'s (preprocess, batch_size, max_samples, ...) and
            `ckptkit.load`'s (meta, arch, ...).
    Returns:
        Diagnosis: `.verdict` (healthy, stale, never updated, invalid, missing), `.layers` (per BN: drift,
        split-half noise, verdict), `.output_drift`, `.top1_agreement`, `.command` (the fix).
    Example:
        >>> ckptkit.diagnose("fixtures/digits/broken", "fixtures/digits/calibration", preprocess="unit").verdict
        'never updated'
    """
    from .recalibrate import measure

    model, samples, result = measure(checkpoint, data, model=model, **options)
    layers = [{**row, "verdict": _layer_verdict(row)} for row in result.report]
    counts = {v: sum(1 for r in layers if r["verdict"] == v) for v in VERDICTS}
    drift, agreement = _output_drift(model.graph, result.statistics, samples)
    verdict = max((r["verdict"] for r in layers), key=VERDICTS.index, default="healthy")
    if verdict == "healthy" and drift is not None and drift > STALE_OUTPUT:
        verdict = "stale"  # small shifts in many layers add up at the output
    if not layers:
        raise CkptkitError("the graph has no BatchNorm: nothing to diagnose")
    command = None if verdict == "healthy" else recalibrate_command(
        checkpoint, data, result.preprocessing, {k: v for k, v in options.items() if k not in _NOT_OPTIONS})
    return Diagnosis(verdict, layers, drift, agreement, result.samples, command, result.data,
                     result.preprocessing, counts)
