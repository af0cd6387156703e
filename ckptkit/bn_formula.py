"""The BatchNorm inference formula, written once (numpy and TensorFlow forms):

    y = (x - mean) / sqrt(variance + eps) * gamma + beta  =  x * s + t,
    s = gamma / sqrt(variance + eps),  t = beta + (bias - mean) * s

`bias` is the bias of the layer a BatchNorm is folded into (0 for none); gamma and beta may be absent (slim's
scale=False, center=False), which is gamma 1 and beta 0. The IR fold, the checkpoint fold, the TF reference of a
folded graph and recalibration all use these, so how epsilon enters lives here only. (Recalibration's fused kernel
needs gamma and beta as tensors: `ir.bn_gamma_beta` makes the ones and zeros.)"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._tf import tf


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
