"""Compare a written model with TensorFlow's inference output: one tolerance helper."""
from __future__ import annotations

import os
from dataclasses import dataclass, asdict
from typing import Callable, Optional

import numpy as np

from ckptkit.core.lazy_tf import eager
from ckptkit.core.errors import CkptkitError

TOLERANCE = 1e-4  # relative: max |ours - tf| / max |tf|


PRECISION_LIMIT = 1e-3  # float32 rounding alone is believed up to this relative error from float64 (deep nets)


@dataclass(frozen=True)
class Comparison:
    max_abs: float
    max_rel: float
    tolerance: float
    samples: int
    # against a float64 evaluation of the model, when float32 rounding was in question (see precision_verdict)
    tf_from_float64: Optional[float] = None
    export_from_float64: Optional[float] = None
    runtime: str = ""  # the program the export ran in ("onnxruntime 1.23.2", "MNN 3.6.1")
    # False when the reference is ckptkit's own import run by TensorFlow (the training graph could not be
    # rewritten): the check then shares the importer's assumptions, and an export is not called verified
    independent: bool = True
    scale: Optional[float] = None  # the reference's largest |value|: what the relative error is relative to

    @property
    def ok(self) -> bool:
        if not np.isfinite(self.max_rel):
            return False
        if self.max_rel <= self.tolerance:
            return True
        return self.export_from_float64 is not None and self.precision_explains

    @property
    def precision_explains(self) -> bool:
        """TensorFlow's own float32 output is as far from float64 as the export is from TensorFlow, and the
        export is at least as close to float64 as TensorFlow: rounding, not a wrong model."""
        tf_err, ours = self.tf_from_float64, self.export_from_float64
        return (tf_err is not None and ours is not None and tf_err <= PRECISION_LIMIT
                and ours <= max(tf_err, self.tolerance) and self.max_rel <= 2.0 * max(tf_err, self.tolerance))

    def to_json(self) -> dict:
        return dict(asdict(self), ok=self.ok)

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        of = f" of outputs up to {self.scale:.3g}" if self.scale is not None else ""
        text = (f"max abs error {self.max_abs:.3g}, max relative error {self.max_rel:.3g}{of} "
                f"(tolerance {self.tolerance:g}, {self.samples} samples)")
        if self.export_from_float64 is not None:
            side = ("the export is at least as close to float64 as TensorFlow: float32 rounding" if self.ok else
                    "TensorFlow is nearer to float64: the export is wrong" if self.export_from_float64 >
                    max(self.tf_from_float64 or 0.0, self.tolerance) else
                    "both are far from float64: the import itself disagrees with TensorFlow")
            text += (f"; against a float64 evaluation TensorFlow's float32 output is {self.tf_from_float64:.3g} off, "
                     f"the export {self.export_from_float64:.3g} ({side})")
        if not self.independent:
            text += "; against ckptkit's own import, not an independent reference"
        return f"{text}: {verdict}"

    @property
    def verb(self) -> str:
        """How a report names this check: only an independent reference verifies."""
        return "verified against TensorFlow" if self.independent else \
            "checked against ckptkit's own import (NOT an independent verification)"


def compare(reference: np.ndarray, got: np.ndarray, tolerance: float = TOLERANCE) -> Comparison:
    """Largest absolute difference, and that difference relative to the largest reference value."""
    reference = np.asarray(reference, np.float64)
    got = np.asarray(got, np.float64)
    if reference.shape != got.shape:
        raise CkptkitError(f"output shape {got.shape} differs from TensorFlow's {reference.shape}: "
                           "this is a bug in ckptkit, please report it")
    diff = float(np.max(np.abs(reference - got))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    if not np.isfinite(got).all():
        rel = float("inf")
    return Comparison(diff, rel, tolerance, int(reference.shape[0]) if reference.ndim else 1, scale=scale)


DEFAULT_RANGE = (-1.0, 1.0)  # slim's inception preprocessing; a recorded preprocessing gives its own


def verification_inputs(shape: tuple, data: Optional[str] = None, batch: int = 4, seed: int = 0,
                        value_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Inputs for verification: `data` (.npy/.npz of NHWC samples), or seeded uniform samples over the range
    real inputs take (`value_range`, default [-1, 1]): errors are then measured at the output's real scale."""
    want = tuple(shape[1:])
    if data is None:
        lo, hi = value_range or DEFAULT_RANGE
        return np.random.default_rng(seed).uniform(lo, hi, (batch,) + want).astype(np.float32)
    if not os.path.lexists(data):
        raise CkptkitError(f"--verify-data {data} does not exist: give a .npy or .npz file of NHWC samples")
    from ckptkit.core.safe_io import MAX_TENSOR_BYTES, check_npz_members, check_regular

    check_regular(data, "--verify-data", MAX_TENSOR_BYTES)  # a FIFO or device is refused, not read
    try:
        arr = np.load(data, mmap_mode="r")
        if hasattr(arr, "files"):
            check_npz_members(data, "--verify-data")
            arr = arr[arr.files[0]]
    except Exception as err:
        raise CkptkitError(f"--verify-data {data} cannot be read ({type(err).__name__}): give a .npy or .npz file") from None
    arr = np.asarray(arr, np.float32)
    if arr.ndim == len(want):
        arr = arr[None]
    if tuple(arr.shape[1:]) != want:
        raise CkptkitError(f"--verify-data {data} holds samples of shape {arr.shape[1:]}, the model takes {want}")
    arr = arr[:32]
    if not np.isfinite(arr).all():
        raise CkptkitError(f"--verify-data {data} holds NaN or inf: give finite samples")
    return arr


@eager
def verify(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
           inputs: np.ndarray, tolerance: float = TOLERANCE,
           float64: Optional[Callable[[np.ndarray], np.ndarray]] = None,
           judge: Optional[Callable[[np.ndarray, np.ndarray], Comparison]] = None) -> Comparison:
    """Run both on the same inputs and compare; one output per input sample is part of being right.

    Args:
        reference: NHWC batch -> output (TensorFlow, e.g. `model.reference`).
        candidate: NHWC batch -> output (e.g. `ckptkit.converters.onnx.runner(path)`).
        inputs: the NHWC batch.  tolerance: largest relative error accepted.
        float64: NHWC batch -> the model evaluated in float64 (e.g. `tf_exec.float64_fn(graph)`): when the
            error is beyond `tolerance` but within float32 rounding of a deep net, both sides are measured
            against it and an export at least as close to float64 as TensorFlow is accepted, saying so.
        judge: (reference output, candidate output) -> Comparison, for what is not meant to match to a
            tolerance (an int8 model: converters/quantize.py).
    Returns:
        Comparison: max_abs, max_rel, tolerance, samples; `.ok`.
    Example:
        >>> verify(model.reference, ckptkit.converters.onnx.runner("m.onnx"), x).ok
        True
    """
    from ckptkit.core.phases import phase

    with phase("verify: TensorFlow reference"):
        ref = np.asarray(reference(inputs))
    if ref.ndim == 0 or ref.shape[0] != inputs.shape[0]:
        raise CkptkitError(f"TensorFlow's reference gives {ref.shape[0] if ref.ndim else 0} outputs for "
                           f"{inputs.shape[0]} input samples: the graph mixes samples (a reshape fixed to another "
                           "input size?); export at the size it was built for")
    with phase("verify: target runtime"):
        got = candidate(inputs)
    if judge is not None:
        return judge(ref, np.asarray(got))
    comparison = compare(ref, got, tolerance)
    if not comparison.ok and float64 is not None and np.isfinite(comparison.max_rel) \
            and comparison.max_rel <= 2.0 * PRECISION_LIMIT:
        with phase("verify: float64 evaluation"):
            exact = np.asarray(float64(inputs))
        comparison = precision_verdict(comparison, ref, got, exact)
    return comparison


def precision_verdict(comparison: Comparison, ref: np.ndarray, got: np.ndarray, exact: np.ndarray) -> Comparison:
    """The comparison with both sides measured against a float64 evaluation `exact` (same inputs)."""
    from dataclasses import replace

    if exact.shape != ref.shape:
        exact = exact.reshape(ref.shape) if exact.size == ref.size else exact
    if exact.shape != ref.shape or not np.isfinite(exact).all():
        return comparison
    return replace(comparison, tf_from_float64=compare(exact, ref).max_rel,
                   export_from_float64=compare(exact, np.asarray(got).reshape(ref.shape)).max_rel)
