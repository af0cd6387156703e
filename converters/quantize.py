"""Full-integer (int8) post-training quantization for LiteRT, and how a quantized model is judged.

The representative samples are read through the same data path as `recalibrate` (ckptkit.read.data: the same
preprocessing flags, the preprocessing recorded beside the checkpoint when none is given, `--max-samples`).
They are split once, in their seeded order: the last fifth (8 to 64 samples) is held out, the rest calibrates.
A quantized model cannot match TensorFlow to 1e-4: it is judged on the held-out samples by what a practitioner
reads — top-1 agreement with the float reference, cosine similarity and SQNR of the outputs — and refused below
`min_agreement`. Channels whose range dwarfs the rest of their layer's (a folded BatchNorm with a tiny variance
makes one) are named: one int8 scale per tensor serves them badly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph
from ckptkit.run.verify import Comparison

log = logging.getLogger("ckptkit")

# top-1 agreement with the float model below which an int8 export is refused: the bundled digits net measures
# 96.9 % with its broken statistics and 100 % recalibrated (64 held-out samples, SQNR 39-40 dB; tests/test_tflite.py);
# 0.9 leaves room for harder data and few held-out samples. Not yet measured on a trained ImageNet net.
DEFAULT_MIN_AGREEMENT = 0.9
MAX_SAMPLES = 512  # representative samples read when --max-samples is not given (TFLite's guide: ~100-500)
# a channel this many times wider than its layer's median channel is named: the others then get 1/16 of int8's
# 256 levels or less (a folded BatchNorm's channel with variance << epsilon is up to 1/sqrt(eps) ~ 32x wider)
RANGE_RATIO = 16.0


@dataclass(frozen=True)
class QuantizedComparison(Comparison):
    """A Comparison whose verdict is top-1 agreement (with cosine similarity and SQNR beside it)."""

    agreement: float = 0.0
    cosine: float = 0.0
    sqnr_db: float = 0.0
    min_agreement: float = DEFAULT_MIN_AGREEMENT

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.cosine)) and self.agreement >= self.min_agreement

    def to_json(self) -> dict:
        return {**super().to_json(), "ok": self.ok}

    def __str__(self) -> str:
        return (f"int8 on {self.samples} held-out samples: top-1 agreement {self.agreement:.1%} (minimum "
                f"{self.min_agreement:.0%}), cosine {self.cosine:.4f}, SQNR {self.sqnr_db:.1f} dB, max relative "
                f"error {self.max_rel:.3g}: {'ok' if self.ok else 'FAILED'}")


def judge(reference: np.ndarray, got: np.ndarray, min_agreement: float) -> QuantizedComparison:
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    out = np.asarray(got, np.float64).reshape(len(got), -1)
    agreement = float(np.mean(ref.argmax(axis=1) == out.argmax(axis=1)))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = float(np.mean(np.sum(ref * out, axis=1) / np.where(norms > 0, norms, 1.0)))
    noise = float(np.sum((ref - out) ** 2))
    sqnr = float(10 * np.log10(np.sum(ref ** 2) / noise)) if noise > 0 else float("inf")
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    diff = float(np.max(np.abs(ref - out))) if ref.size else 0.0
    return QuantizedComparison(diff, diff / scale if scale > 0 else 0.0, 0.0, len(ref), scale=scale,
                               agreement=agreement, cosine=cosine, sqnr_db=sqnr, min_agreement=min_agreement)


def read_samples(graph: Graph, options) -> tuple[np.ndarray, np.ndarray]:
    """(calibration samples, held-out samples) from `options.data`, preprocessed as for recalibrate."""
    import json

    from ckptkit.core import validate
    from ckptkit.read.data import check_data, dataset, preprocessing

    if not options.data:
        raise CkptkitError("--quantize int8 needs --data DIR: the representative samples it is calibrated on")
    validate.count("--max-samples", options.max_samples, 16, "int8 needs samples to calibrate and to check on",
                   optional=True)
    recorded = json.loads(graph.metadata["ckptkit.preprocessing"]) if "ckptkit.preprocessing" in graph.metadata \
        else None
    listing = check_data(options.data, options.preprocess is not None or recorded is not None)
    channels = int(graph.input_shape[-1])
    if options.preprocess is not None:
        prep = preprocessing(options.preprocess, options.mean, options.std, channels, options.resize)
    elif recorded:
        prep = preprocessing(recorded["preset"], recorded["mean"], recorded["std"], channels, recorded["geometry"])
        log.info("int8 calibration: preprocessing recorded beside the checkpoint: %s", prep.describe())
    else:
        prep = None  # arrays: already what the network takes
    samples = dataset(options.data, tuple(graph.input_shape[1:]), batch_size=64,
                      max_samples=options.max_samples or MAX_SAMPLES, preprocess=prep,
                      image_key=options.image_key, seed=options.seed, listing=listing)
    every = np.concatenate([np.asarray(b, np.float32) for b in samples]) if samples.count else np.zeros((0,))
    samples.summary()
    if len(every) < 16:
        raise CkptkitError(f"--data {options.data} gave {len(every)} usable sample(s): int8 needs at least 16 (some "
                           "to calibrate on, some held out to check the quantized model on)")
    held = int(min(64, max(8, len(every) // 5)))
    return every[:-held], every[-held:]


def badly_conditioned(graph: Graph, samples: np.ndarray) -> list[str]:
    """Layers (conv, depthwise, dense) whose output channels' ranges on `samples` differ by more than
    RANGE_RATIO: one int8 scale per activation tensor resolves the narrow channels poorly."""
    from ckptkit.run.tf_exec import run_graph

    layers = [n.name for n in graph.nodes if n.op in ("Conv", "DepthwiseConv", "Dense")]
    values = run_graph(graph, samples[:16], fetch=layers)
    named = []
    for name in layers:
        v = np.abs(np.asarray(values[name]))
        per_channel = v.reshape(-1, v.shape[-1]).max(axis=0)
        median = float(np.median(per_channel))
        if median > 0 and float(per_channel.max()) > RANGE_RATIO * median:
            worst = int(per_channel.argmax())
            named.append(f"{name} (channel {worst}: range {per_channel[worst]:.3g} against a median "
                         f"{median:.3g})")
    return named
