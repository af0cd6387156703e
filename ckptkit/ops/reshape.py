"""Reshape to a static per-sample shape (TF's Reshape, Squeeze, ExpandDims); TF's row-major NHWC order."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


@dataclass
class ReshapeAttrs:
    shape: tuple = (-1,)  # with -1 for the batch


RESHAPE = define("Reshape", ReshapeAttrs, run=lambda ctx, node, xs, p: tf().reshape(xs[0], node.attrs.shape),
                 doc="reshape (flatten, squeeze, expand_dims)")


@register("Reshape", "Squeeze", "ExpandDims")
def import_reshape(w: Walker, t) -> str:
    shape = w.shape_of(t)
    if any(d is None for d in shape[1:]):
        raise CkptkitError(f"{t.op.type} {t.op.name}: output shape {shape} is not static: give --input-shape H,W,C")
    src = w.shape_of(t.op.inputs[0])
    if None not in src[1:] and int(np.prod(src[1:])) != int(np.prod(shape[1:])):
        # e.g. a flatten written for the training size: at another size it would fold samples into the batch
        raise CkptkitError(f"{t.op.type} {t.op.name} turns {tuple(src[1:])} per sample into {tuple(shape[1:])}: the "
                           "graph fixes its input size here (a flatten before a fully connected layer); export at "
                           "the size it was built for")
    return w.emit(t.op.name, "Reshape", [w.convert(t.op.inputs[0])], shape, attrs=dict(shape=(-1,) + tuple(shape[1:])))


@RESHAPE.writer("onnx")
def to_onnx(b, node, xs):
    n, rank = node.name, len(node.shape)
    x = b.to_nhwc(b.graph[node.inputs[0]])  # TF reshapes in NHWC order
    y = b.op("Reshape", [x, b.const(f"{n}/shape", np.array(node.attrs.shape, np.int64))], n if rank != 4 else f"{n}/nhwc")
    return b.op("Transpose", [y], n, perm=[0, 3, 1, 2]) if rank == 4 else y


@RESHAPE.writer("keras")
def to_keras(k, node, xs):
    return k.add(k.L.Reshape(tuple(node.attrs.shape[1:]), name=k.name(node)), xs[0])


def _caffe_kind(node, graph) -> str | None:
    src, rank = graph[node.inputs[0]].shape, len(node.shape)
    if len(src) == 4 and rank == 2:
        return "flatten"
    if len(src) == 2 and rank == 4 and node.shape[1:3] == (1, 1):
        return "to_1x1"
    return None


@RESHAPE.writer("caffe", check=lambda node, graph: None if _caffe_kind(node, graph) else
                f"reshape {graph[node.inputs[0]].shape} -> {node.shape} has no Caffe form")
def to_caffe(c, node, bottoms):
    if _caffe_kind(node, c.g) == "flatten":
        c.flat_from[node.name] = tuple(c.g[node.inputs[0]].shape[1:])
        return c.layer(node.name, "Flatten", bottoms, flatten_param=c.pb.FlattenParameter(axis=1))
    # [N, C] -> TF [N,1,1,C], which is Caffe's [N, C, 1, 1]
    shape = c.pb.BlobShape(dim=[0, node.shape[-1], 1, 1])
    return c.layer(node.name, "Reshape", bottoms, reshape_param=c.pb.ReshapeParameter(shape=shape))
