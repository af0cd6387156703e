"""Pad with zeros (TF's Pad/PadV2 with value 0). Caffe has no Pad layer: its writer first absorbs a Pad
into the convolution after it (converters.caffe.fuse_pads); one left over is refused."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import UnsupportedOpError
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


@dataclass
class PadAttrs:
    pads: list = None  # [[before, after], ...] per NHWC axis


PAD = define("Pad", PadAttrs, run=lambda ctx, node, xs, p: tf().pad(xs[0], node.attrs.pads), doc="zero padding")


@register("Pad", "PadV2", "MirrorPad")
def import_pad(w: Walker, t) -> str:
    op = t.op
    pads = w.const(op.inputs[1])
    if op.type == "MirrorPad" or (op.type == "PadV2" and float(w.const(op.inputs[2])) != 0.0):
        raise UnsupportedOpError(f"{op.type} {op.name}: only zero padding is supported")
    if pads is None:
        raise UnsupportedOpError(f"Pad {op.name} with computed paddings is not supported")
    pads = [[int(a), int(b)] for a, b in np.asarray(pads).reshape(-1, 2)]
    if pads[0] != [0, 0]:
        raise UnsupportedOpError(f"Pad {op.name} pads the batch dimension")
    return w.emit(op.name, "Pad", [w.convert(op.inputs[0])], w.shape_of(t), attrs=dict(pads=pads))


@PAD.writer("onnx", check=lambda node, graph: None if len(node.attrs.pads) in (2, 4) else "rank other than 2 or 4")
def to_onnx(b, node, xs):
    if len(node.attrs.pads) == 4:
        (n0, n1), (t, bo), (l, r), (c0, c1) = node.attrs.pads
        pads = [n0, c0, t, l, n1, c1, bo, r]  # NCHW begins, then ends
    else:
        pads = [p[0] for p in node.attrs.pads] + [p[1] for p in node.attrs.pads]
    return b.op("Pad", [xs[0], b.const(f"{node.name}/pads", np.array(pads, np.int64))], node.name, mode="constant")


def _keras_check(node, graph):
    if len(node.attrs.pads) != 4:
        return "not a 4-D tensor"
    return "it pads channels, which ZeroPadding2D cannot" if any(node.attrs.pads[3]) else None


@PAD.writer("keras", check=_keras_check)
def to_keras(k, node, xs):
    (n0, n1), (t, b), (l, r), (c0, c1) = node.attrs.pads
    return k.add(k.L.ZeroPadding2D(((t, b), (l, r)), name=k.name(node)), xs[0])


PAD.refuse("caffe", "a Pad that no convolution absorbs has no BVLC Caffe layer")
