"""The BatchNorm inference formula, written once (numpy and TensorFlow forms):

    y = (x - mean) / sqrt(variance + eps) * gamma + beta  =  x * s + t,
    s = gamma / sqrt(variance + eps),  t = beta + (bias - mean) * s

`bias` is the bias of the layer a BatchNorm is folded into (0 for none); gamma and beta may be absent (slim's
scale=False, center=False), which is gamma 1 and beta 0. The IR fold, the checkpoint fold, the TF reference of a
folded graph and recalibration all use these, so how epsilon enters lives here only. `gamma_beta` makes the ones and
zeros where an IR BatchNorm node has no gamma/beta (recalibration's fused kernel and the writers need tensors);
`node_affine` is `affine` for an IR node, refusing statistics that would make a wrong model."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError


def affine(mean: np.ndarray, variance: np.ndarray, eps: float, gamma: Optional[np.ndarray] = None,
           beta: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64: the per-channel scale and shift equal to the inference-mode BatchNorm (after `bias`)."""
    s = 1.0 / np.sqrt(np.asarray(variance, np.float64) + eps)
    if gamma is not None:
        s = s * np.asarray(gamma, np.float64)
    centred = -np.asarray(mean, np.float64) if bias is None else np.asarray(bias, np.float64) - mean
    t = centred * s
    if beta is not None:
        t = t + np.asarray(beta, np.float64)
    return s, t


def normalize(x, mean, variance, eps: float, gamma=None, beta=None):
    """The same BatchNorm as TensorFlow ops on a tensor `x` (channels last), statistics given as tensors or arrays."""
    s = tf().math.rsqrt(variance + eps)
    if gamma is not None:
        s = s * gamma
    y = (x - mean) * s
    return y if beta is None else y + beta


def gamma_beta(node) -> tuple[np.ndarray, np.ndarray]:
    """An IR BatchNorm node's gamma and beta, ones and zeros where it has none (slim's scale=False, center=False)."""
    ch, p = node.shape[-1], node.params
    gamma = p["gamma"] if p.get("gamma") is not None else np.ones(ch, np.float32)
    beta = p["beta"] if p.get("beta") is not None else np.zeros(ch, np.float32)
    return gamma, beta


def node_affine(node) -> tuple[np.ndarray, np.ndarray]:
    """`affine` of an IR BatchNorm node (ckptkit.ir.Node): float64 (s, t). Missing statistics or a variance
    plus epsilon that is not positive and finite raise; the health gate reports the cause first, this is the
    last guard."""
    p = node.params
    missing = [k for k in ("mean", "variance") if p.get(k) is None]
    if missing:
        raise CkptkitError(f"moving_{missing[0]} of {node.name} is missing: run ckptkit recalibrate --data DIR first")
    var = p["variance"].astype(np.float64) + node.attrs.epsilon
    if (~np.isfinite(var) | (var <= 0)).any():
        raise CkptkitError(f"moving_variance of {node.name} plus epsilon is not positive and finite: "
                           "run ckptkit recalibrate --data DIR first")
    return affine(p["mean"], p["variance"], node.attrs.epsilon, p.get("gamma"), p.get("beta"))
