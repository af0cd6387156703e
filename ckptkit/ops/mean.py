"""Mean over the spatial axes (global average pooling) or over channels (axis 3), keepdims or not."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import UnsupportedOpError
from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define

SPATIAL, CHANNELS = (1, 2), (3,)


@dataclass
class MeanAttrs:
    axes: tuple = SPATIAL
    keepdims: bool = False


MEAN = define("Mean", MeanAttrs, run=lambda ctx, node, xs, p: tf().reduce_mean(xs[0], list(node.attrs.axes),
                                                                               keepdims=node.attrs.keepdims),
              doc="mean over (1, 2) or (3,)")


@register("Mean")
def import_mean(w: Walker, t) -> str:
    op = t.op
    axes = w.const(op.inputs[1])
    rank = len(w.shape_of(op.inputs[0]))
    if axes is None:
        raise UnsupportedOpError(f"Mean {op.name} over computed axes is not supported")
    axes = tuple(sorted(int(a) % rank for a in np.atleast_1d(axes)))
    if rank != 4 or axes not in (SPATIAL, CHANNELS):
        raise UnsupportedOpError(f"Mean {op.name} over axes {axes} of a rank-{rank} tensor is not supported (only "
                                 "spatial or channel means of NHWC tensors)")
    return w.emit(op.name, "Mean", [w.convert(op.inputs[0])], w.shape_of(t),
                  attrs=dict(axes=axes, keepdims=bool(C.attr(op, "keep_dims", False))))


def _channels_check(node, graph):
    if node.attrs.axes == CHANNELS and not node.attrs.keepdims:
        return "a channel mean without keepdims (a rank-3 result)"
    return None


@MEAN.writer("onnx")
def to_onnx(b, node, xs):
    n, a = node.name, node.attrs
    if a.axes == CHANNELS:  # NCHW axis 1
        if b.opset >= 18:  # axes became an input in opset 18
            return b.op("ReduceMean", [xs[0], b.const(f"{n}/axes", np.array([1], np.int64))], n,
                        keepdims=int(a.keepdims))
        return b.op("ReduceMean", xs, n, axes=[1], keepdims=int(a.keepdims))
    pooled = b.op("GlobalAveragePool", xs, n if a.keepdims else f"{n}/pool")
    return pooled if a.keepdims else b.op("Flatten", [pooled], n, axis=1)


@MEAN.writer("keras", check=_channels_check)
def to_keras(k, node, xs):
    if node.attrs.axes == CHANNELS:  # a 1x1 convolution with weights 1/C
        ch = k.in_shape(node)[-1]
        return k.add(k.L.Conv2D(1, 1, use_bias=False, name=k.name(node)), xs[0],
                     [np.full((1, 1, ch, 1), 1.0 / ch, np.float32)])
    return k.add(k.L.GlobalAveragePooling2D(keepdims=node.attrs.keepdims, name=k.name(node)), xs[0])


@MEAN.writer("caffe", check=_channels_check)
def to_caffe(c, node, bottoms):
    pb, n = c.pb, node.name
    if node.attrs.axes == CHANNELS:
        ch = c.g[node.inputs[0]].shape[-1]
        param = pb.ConvolutionParameter(num_output=1, bias_term=False, kernel_size=[1])
        return c.layer(n, "Convolution", bottoms, [np.full((1, ch, 1, 1), 1.0 / ch, np.float32)],
                       convolution_param=param)
    pooled = c.layer(n if node.attrs.keepdims else n + "/pool", "Pooling", bottoms,
                     pooling_param=pb.PoolingParameter(pool=pb.PoolingParameter.AVE, global_pooling=True))
    if node.attrs.keepdims:
        return pooled
    c.flat_from[n] = (1, 1, node.shape[-1])
    return c.layer(n, "Flatten", [pooled], flatten_param=pb.FlattenParameter(axis=1))
