"""Concat along one axis (TF's ConcatV2 / Concat)."""
from __future__ import annotations

from dataclasses import dataclass

from ckptkit.core.lazy_tf import tf
from ckptkit.ir.layout import nchw_axis
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


@dataclass
class ConcatAttrs:
    axis: int = 3  # NHWC axis, non-negative


CONCAT = define("Concat", ConcatAttrs, run=lambda ctx, node, xs, p: tf().concat(xs, node.attrs.axis),
                doc="concatenation")


@register("ConcatV2", "Concat")
def import_concat(w: Walker, t) -> str:
    op = t.op
    if op.type == "ConcatV2":
        values, axis_t = list(op.inputs[:-1]), op.inputs[-1]
    else:
        axis_t, values = op.inputs[0], list(op.inputs[1:])
    axis = w.const(axis_t)
    rank = len(w.shape_of(t))
    inputs = [w.convert(v) for v in values]
    return w.emit(op.name, "Concat", inputs, w.shape_of(t), attrs=dict(axis=int(axis) % rank))


@CONCAT.writer("onnx")
def to_onnx(b, node, xs):
    return b.op("Concat", xs, node.name, axis=nchw_axis(node.attrs.axis, len(node.shape)))


@CONCAT.writer("keras")
def to_keras(k, node, xs):
    return k.add(k.L.Concatenate(axis=node.attrs.axis, name=k.name(node)), xs)


@CONCAT.writer("caffe")
def to_caffe(c, node, bottoms):
    axis = nchw_axis(node.attrs.axis, len(node.shape))
    return c.layer(node.name, "Concat", bottoms, concat_param=c.pb.ConcatParameter(axis=axis))
