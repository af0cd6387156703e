"""Dense: TF's MatMul with constant/variable weights, [in, out] in the IR.

`weights_transposed`: the checkpoint stores this layer [out, in] (MatMul transpose_b); the IR holds
it [in, out] and the checkpoint fold scales the stored tensor's axis 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import UnsupportedOpError
from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


@dataclass
class DenseAttrs:
    weights_transposed: bool = False


def _run(ctx, node, xs, p):
    y = tf().matmul(xs[0], p["weights"])
    return y if p.get("bias") is None else y + p["bias"]


DENSE = define("Dense", DenseAttrs, run=_run, layout="IO", doc="fully connected, weights [in,out]")


@register("MatMul")
def import_matmul(w: Walker, t) -> str:
    op = t.op
    if C.attr(op, "transpose_a"):
        raise UnsupportedOpError(f"MatMul {op.name} with transpose_a is not supported")
    weights, src = C.weights(w, op.inputs[1], op)
    transposed = bool(C.attr(op, "transpose_b"))
    if transposed:
        weights = weights.T.copy()
    x = w.convert(op.inputs[0])
    return w.emit(op.name, "Dense", [x], w.shape_of(t), params={"weights": weights},
                  attrs=dict(weights_transposed=transposed), sources={"weights": src} if src else {})


def _bias(node) -> list:
    return [node.params["bias"]] if node.params.get("bias") is not None else []


@DENSE.writer("onnx")
def to_onnx(b, node, xs):
    n = node.name
    inputs = [xs[0], b.const(f"{n}/weights", node.params["weights"], np.float32)]
    inputs += [b.const(f"{n}/bias", v.astype("float32")) for v in _bias(node)]
    return b.op("Gemm", inputs, n)


@DENSE.writer("keras")
def to_keras(k, node, xs):
    w = node.params["weights"]
    layer = k.L.Dense(w.shape[1], use_bias=bool(_bias(node)), name=k.name(node))
    return k.add(layer, xs[0], [w] + _bias(node))


@DENSE.writer("caffe")
def to_caffe(c, node, bottoms):
    w = node.params["weights"]
    src = node.inputs[0]
    if src in c.flat_from:  # rows in TF's H,W,C order -> Caffe's C,H,W order
        h, wd, ch = c.flat_from[src]
        w = w.reshape(h, wd, ch, -1).transpose(2, 0, 1, 3).reshape(h * wd * ch, -1)
    param = c.pb.InnerProductParameter(num_output=w.shape[1], bias_term=bool(_bias(node)))
    return c.layer(node.name, "InnerProduct", bottoms, [w.T.copy()] + _bias(node), inner_product_param=param)
