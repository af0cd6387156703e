"""Weight layouts: which axis of a kernel is the output channel, and the conversions every writer needs.

One place for the facts the IR fold, the checkpoint fold, BatchNorm pairing and the writers share.
Layouts are named by their axis order (TensorFlow's, as stored in checkpoints):
  HWIO  Conv2D                    [kh, kw, in, out]
  HWCM  DepthwiseConv2dNative     [kh, kw, C, M]; output channel c*M + m
  IO    MatMul / Dense            [in, out]
  OI    MatMul(transpose_b=True)  [out, in]
  HWOI  Conv2DTranspose           [kh, kw, out, in]  (the forward conv's HWIO, read backwards)
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ckptkit.core.pages import slab_rows

LAYOUTS = ("HWIO", "HWCM", "IO", "OI", "HWOI")


def _check(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout}")


def out_channels(shape: tuple, layout: str) -> int:
    """Number of output channels of a kernel of this shape."""
    _check(layout)
    if layout == "HWCM":
        return shape[2] * shape[3]
    if layout == "OI":
        return shape[0]
    if layout == "HWOI":
        return shape[2]
    return shape[-1]


def in_channels(shape: tuple, layout: str) -> int:
    _check(layout)
    return {"HWIO": shape[2] if len(shape) == 4 else 0, "HWCM": shape[2], "IO": shape[0], "OI": shape[1],
            "HWOI": shape[3] if len(shape) == 4 else 0}[layout]


def out_scale_shape(shape: tuple, layout: str) -> tuple:
    """The shape a per-output-channel vector takes to broadcast over a kernel of this layout."""
    _check(layout)
    if layout == "HWCM":
        return (shape[2], shape[3])
    if layout == "OI":
        return (shape[0], 1)
    if layout == "HWOI":
        return (shape[2], 1)
    return (shape[-1],)


def in_scale_shape(shape: tuple, layout: str) -> tuple:
    """The shape a per-input-channel vector takes to broadcast over a kernel of this layout."""
    _check(layout)
    if layout == "HWCM":
        return (shape[2], 1)
    if layout in ("HWIO", "IO"):
        return (shape[-2], 1)
    if layout == "OI":
        return (shape[1],)
    return (shape[3],)  # HWOI


def is_placeholder(array: np.ndarray) -> bool:
    """A zero-stride view standing in for weights not loaded (topology-only imports)."""
    return array.size > 1 and not any(array.strides)


CHUNK_BYTES = 8 * 2**20  # float64 working memory per step of a slab-wise scaling


def scale_outputs(weights: np.ndarray, layout: str, scale: np.ndarray, *, inplace: bool = False,
                  out: Optional[np.ndarray] = None) -> np.ndarray:
    """weights * scale per output channel: the product in float64, rounded once to the weights' dtype. Both BN
    folds use it (the IR pass and the checkpoint fold), so both give the same bits.

    out: the array to write into (e.g. a `pages.scratch` map), a slab of the first axis at a time, each
    slab's pages given back once written (ckptkit.core.pages; a slab of a checkpoint view too), so a big tensor
    needs neither a float64 copy nor resident memory of its size.
    inplace: into `weights` when writeable (a copy otherwise), slab by slab in the same way.
    Unloaded weights (a zero view) stay a zero view: nothing is allocated for a topology-only graph."""
    from ckptkit.core import pages

    s = np.asarray(scale, np.float64).reshape(out_scale_shape(weights.shape, layout))
    if is_placeholder(weights):
        return weights
    if (not inplace and out is None) or weights.ndim == 0:
        return (weights.astype(np.float64) * s).astype(weights.dtype)
    if out is None:
        out = weights if weights.flags.writeable else weights.copy()
    s = s.reshape((1,) * (weights.ndim - s.ndim) + s.shape)  # aligned with the weights' axes, to slice with them
    w, o = weights, out
    lead = next((i for i, n in enumerate(s.shape) if n != 1), s.ndim)
    if lead > 1 and w.flags.c_contiguous and o.flags.c_contiguous:  # HWIO's [kh, kw, in] axes merged: fine slabs
        w, o = w.reshape((-1,) + w.shape[lead:]), o.reshape((-1,) + o.shape[lead:])
        s = s.reshape((1,) + s.shape[lead:])
    rows = slab_rows(w.shape, 8, CHUNK_BYTES)
    product = np.empty((min(rows, w.shape[0]),) + w.shape[1:], np.float64)  # reused: one float64 slab
    for start in range(0, w.shape[0], rows):
        part = s if s.shape[0] == 1 else s[start:start + rows]
        n = min(rows, w.shape[0] - start)
        np.multiply(w[start:start + n], part, out=product[:n])  # float64 product,
        o[start:start + n] = product[:n]  # one rounding on assignment
        pages.release(w[start:start + n], o[start:start + n])
    return out


def to_oihw(weights: np.ndarray, layout: str) -> tuple[np.ndarray, int]:
    """(kernel in ONNX/Caffe convolution layout [out, in/group, kh, kw], group).

    HWIO -> OIHW; HWCM -> [C*M, 1, kh, kw] with group C (output channel c*M + m, as TF);
    HWOI (a transposed convolution) -> [in, out, kh, kw], which is what ONNX ConvTranspose and
    Caffe Deconvolution take (their weight's first axis is the layer's input)."""
    _check(layout)
    if layout == "HWIO":
        return weights.transpose(3, 2, 0, 1), 1
    if layout == "HWCM":
        kh, kw, c, m = weights.shape
        return weights.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw), c
    if layout == "HWOI":
        return weights.transpose(3, 2, 0, 1), 1
    raise ValueError(f"{layout} is not a convolution layout")


def nchw_axis(axis: int, rank: int) -> int:
    """Where a TF (NHWC) activation axis is in ONNX's and Caffe's NCHW layout (other ranks keep TF's order)."""
    return (0, 2, 3, 1)[axis] if rank == 4 else axis
