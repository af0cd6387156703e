"""Affine: y = x * scale + shift per channel (last axis); either may be absent.

What a BiasAdd, or an Add/Sub/Mul/RealDiv by a scalar or per-channel constant, imports as; the
clean-up pass absorbs it into the layer before it where it can.
"""
from __future__ import annotations

import numpy as np

from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


def _run(ctx, node, xs, p):
    x = xs[0]
    if p.get("scale") is not None:
        x = x * p["scale"]
    return x if p.get("shift") is None else x + p["shift"]


AFFINE = define("Affine", run=_run, doc="x*scale + shift per channel")


@register("BiasAdd", "BiasAddV1")
def import_bias_add(w: Walker, t) -> str:
    op = t.op
    C.require_nhwc(op)
    bias, src = C.weights(w, op.inputs[1], op)
    x = w.convert(op.inputs[0])
    return w.emit(op.name, "Affine", [x], w.shape_of(t), params={"shift": bias}, sources={"shift": src} if src else {})


def scale_and_shift(node) -> tuple[np.ndarray, np.ndarray]:
    ch = node.shape[-1]
    p = node.params
    scale = p["scale"] if p.get("scale") is not None else np.ones(ch, np.float32)
    shift = p["shift"] if p.get("shift") is not None else np.zeros(ch, np.float32)
    return scale.astype(np.float32), shift.astype(np.float32)


@AFFINE.writer("onnx")
def to_onnx(b, node, xs):
    x, n, rank = xs[0], node.name, len(node.shape)
    if node.params.get("scale") is not None:
        x = b.op("Mul", [x, b.channel_vector(f"{n}/scale", node.params["scale"], rank)], f"{n}/mul")
    if node.params.get("shift") is not None:
        x = b.op("Add", [x, b.channel_vector(f"{n}/shift", node.params["shift"], rank)], f"{n}/add")
    return x


@AFFINE.writer("keras", check=lambda node, graph: None if len(node.shape) in (2, 4) else
               f"rank {len(node.shape)} has no per-channel Keras layer")
def to_keras(k, node, xs):
    scale, shift = scale_and_shift(node)
    ch = node.shape[-1]
    if len(node.shape) == 4:  # per-channel x*s + t as a 1x1 depthwise convolution
        return k.add(k.L.DepthwiseConv2D(1, use_bias=True, name=k.name(node)), xs[0], [scale.reshape(1, 1, ch, 1), shift])
    # diagonal dense: each output is one product plus the shift
    return k.add(k.L.Dense(ch, name=k.name(node)), xs[0], [np.diag(scale).astype(np.float32), shift])


@AFFINE.writer("caffe")
def to_caffe(c, node, bottoms):
    scale, _ = scale_and_shift(node)
    return c.channel_affine(node.name, bottoms[0], scale, node.params.get("shift"), len(node.shape))
