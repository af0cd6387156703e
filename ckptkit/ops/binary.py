"""Binary element-wise ops of two computed tensors: Add, Sub, Mul, Maximum, Minimum.

Shapes are equal, or one side is per-channel [N,1,1,C] (squeeze-and-excite gates, MobileNet v3's
x * hard_sigmoid(...)). With a constant side the TF ops import as an Affine instead (scalar or
per-channel constants), and dropout masks (x * mask, where(random, x, 0)) import as nothing.
"""
from __future__ import annotations

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import UnsupportedOpError
from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define
from ckptkit.ops.batch_norm import emit_bn, match_decomposed_bn

_TF = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Maximum": "maximum", "Minimum": "minimum"}
_ONNX = {"Add": "Add", "Sub": "Sub", "Mul": "Mul", "Maximum": "Max", "Minimum": "Min"}
_KERAS = {"Add": "Add", "Sub": "Subtract", "Mul": "Multiply", "Maximum": "Maximum", "Minimum": "Minimum"}


def _runner(name: str):
    return lambda ctx, node, xs, p: getattr(tf().math, _TF[name])(xs[0], xs[1])


BINARY = {name: define(name, run=_runner(name), doc=f"element-wise {name.lower()}, numpy broadcasting of "
                                                    "inputs of one rank") for name in _TF}


def broadcast_dims(shape: tuple, out: tuple) -> tuple[int, ...]:
    """The axes along which an input of `shape` is broadcast to `out` (same rank; size 1 there)."""
    return tuple(i for i, (s, o) in enumerate(zip(shape, out)) if s != o)


# ---- TensorFlow import -----------------------------------------------------------------------
def _check_shapes(w: Walker, t) -> None:
    """Numpy broadcasting between inputs that both carry the batch: same rank, each axis equal or 1 on one side
    (an [N,H,W,1] mask over [N,H,W,C], a per-channel [N,1,1,C] gate, an [N,1,W,C] row). Inputs of other ranks
    align the batch with another axis: refused."""
    out = w.shape_of(t)
    for x in t.op.inputs:
        s = w.shape_of(x)
        if len(s) != len(out) or any(a != o and a != 1 for a, o in zip(s[1:], out[1:])):
            raise UnsupportedOpError(f"{t.op.type} {t.op.name} broadcasts {s} to {out}: only inputs of the output's "
                                     "rank whose other axes are equal or 1 are supported")


def _emit(w: Walker, t, name: str, a, b) -> str:
    _check_shapes(w, t)
    return w.emit(t.op.name, name, [w.convert(a), w.convert(b)], w.shape_of(t))


def _affine(w: Walker, t, x, scale=None, shift=None) -> str | None:
    """An Affine of `x` when the constants are scalar or per-channel, else None."""
    params = {}
    for key, value in (("scale", scale), ("shift", shift)):
        if value is not None:
            vec = C.channel_constant(w, t, value, key)
            if vec is None:
                return None
            params[key] = vec
    return w.emit(t.op.name, "Affine", [w.convert(x)], w.shape_of(t), params=params)


@register("Add", "AddV2")
def import_add(w: Walker, t) -> str:
    bn = match_decomposed_bn(w, t)
    if bn is not None:
        return emit_bn(w, t, *bn)
    a, b = t.op.inputs
    for x, c in ((a, b), (b, a)):  # additive noise (GaussianNoise in training): nothing at inference
        if C.is_noise(w, c) and not C.is_random(w, x):
            return w.convert(x)
    for x, c in ((a, b), (b, a)):
        value = w.const(c)
        if value is not None:
            out = _affine(w, t, x, shift=value)
            if out is not None:
                return out
            raise UnsupportedOpError(f"Add {t.op.name}: a constant of shape {np.shape(value)} is not per-channel")
    return _emit(w, t, "Add", a, b)


@register("Sub")
def import_sub(w: Walker, t) -> str:
    a, b = t.op.inputs
    vb, va = w.const(b), w.const(a)
    out = None
    if vb is not None:  # x - c
        out = _affine(w, t, a, shift=-np.asarray(vb, np.float32))
    elif va is not None:  # c - x
        out = _affine(w, t, b, scale=np.float32(-1.0), shift=va)
    else:
        return _emit(w, t, "Sub", a, b)
    if out is None:
        raise UnsupportedOpError(f"Sub {t.op.name}: its constant is not scalar or per-channel")
    return out


@register("Mul", "RealDiv")
def import_mul(w: Walker, t) -> str:
    a, b = t.op.inputs
    if t.op.type == "Mul":
        # dropout (TF1 form): x / keep * floor(keep + random)
        for x, m in ((a, b), (b, a)):
            if C.is_noise(w, m) and not C.is_random(w, x):
                return w.convert(C.strip_dropout_scale(w, x))
    value, x = w.const(b), a
    if value is None and t.op.type == "Mul":
        value, x = w.const(a), b
    if value is None:
        if t.op.type == "Mul":
            return _emit(w, t, "Mul", a, b)
        raise UnsupportedOpError(f"RealDiv {t.op.name} of two computed tensors is not supported")
    if t.op.type == "RealDiv":
        value = (1.0 / np.asarray(value, np.float64)).astype(np.float32)
    out = _affine(w, t, x, scale=value)
    if out is None:
        raise UnsupportedOpError(f"{t.op.type} {t.op.name}: the constant factor is not scalar or per-channel")
    return out


@register("Maximum", "Minimum")
def import_max_min(w: Walker, t) -> str:
    a, b = t.op.inputs
    if w.const(a) is not None or w.const(b) is not None:
        raise UnsupportedOpError(f"{t.op.type} {t.op.name} with a constant is not supported (use relu/relu6)")
    return _emit(w, t, t.op.type, a, b)


@register("SelectV2", "Select")
def import_select(w: Walker, t) -> str:
    cond, yes, no = t.op.inputs
    if C.is_noise(w, cond):  # dropout (TF2 form): where(random >= rate, x * scale, 0), or where(drop, 0, x)
        kept = yes if C.carries_data(w, yes) or not C.carries_data(w, no) else no
        return w.convert(C.strip_dropout_scale(w, kept))
    raise UnsupportedOpError(f"{t.op.type} {t.op.name} is not a dropout mask; ckptkit cannot convert it")


# ---- writers ---------------------------------------------------------------------------------
def _onnx(name: str):
    return lambda b, node, xs: b.op(_ONNX[name], xs, node.name)  # ONNX broadcasts NCHW [N,C,1,1] natively


def _keras(name: str):
    def write(k, node, xs):
        return k.add(getattr(k.L, _KERAS[name])(name=k.name(node)), xs)

    return write


def _caffe_check(name: str):
    def check(node, graph):
        for i in node.inputs:
            dims = broadcast_dims(graph[i].shape, node.shape)
            if dims and (len(node.shape) != 4 or dims not in ((3,), (1, 2), (1, 2, 3))):
                return (f"broadcasting {graph[i].shape} to {node.shape}, which Caffe's layers cannot spread "
                        "exactly (over channels, or over the whole H x W, they can)")
        return None

    return check


def _caffe_spread(c, node, bottom: str, shape: tuple) -> str:
    """`bottom` (NCHW, `shape` in NHWC) spread to the node's shape by exact copies: over channels by a 1x1
    convolution with weights 1, over the whole H x W by a ones-kernel grouped Deconvolution (each value times 1)."""
    pb, n = c.pb, node.name
    h, w, ch = node.shape[1:]
    if shape[3] == 1 and ch != 1:
        param = pb.ConvolutionParameter(num_output=ch, bias_term=False, kernel_h=1, kernel_w=1, stride_h=1,
                                        stride_w=1)
        bottom = c.layer(n + "/spread_c", "Convolution", [bottom], [np.ones((ch, 1, 1, 1), np.float32)],
                         convolution_param=param)
    if shape[1:3] == (1, 1) and (h, w) != (1, 1):
        # (A Scale with the gate as second bottom is BVLC's spelling, but MNN 3.6 crashes converting it.)
        param = pb.ConvolutionParameter(num_output=ch, bias_term=False, group=ch, kernel_h=h, kernel_w=w,
                                        stride_h=1, stride_w=1)
        bottom = c.layer(n + "/spread", "Deconvolution", [bottom], [np.ones((ch, 1, h, w), np.float32)],
                         convolution_param=param)
    return bottom


def _caffe(name: str):
    def write(c, node, bottoms):
        pb, n = c.pb, node.name
        E = pb.EltwiseParameter
        # a squeeze-excite gate (N,C,1,1), a spatial mask (N,1,H,W): spread to the output's shape, then Eltwise
        bottoms = [_caffe_spread(c, node, b, c.g[i].shape) if c.g[i].shape != node.shape else b
                   for i, b in zip(node.inputs, bottoms)]
        if name == "Minimum":  # min(a, b) = -max(-a, -b)
            ones = np.ones(node.shape[-1], np.float32)
            neg = [c.channel_affine(f"{n}/neg{i}", x, -ones, None, len(node.shape)) for i, x in enumerate(bottoms)]
            m = c.layer(n + "/max", "Eltwise", neg, eltwise_param=E(operation=E.MAX))
            return c.channel_affine(n, m, -ones, None, len(node.shape))
        param = {"Add": E(operation=E.SUM), "Sub": E(operation=E.SUM, coeff=[1.0, -1.0]),
                 "Mul": E(operation=E.PROD), "Maximum": E(operation=E.MAX)}[name]
        return c.layer(n, "Eltwise", bottoms, eltwise_param=param)

    return write


for _name, _op in BINARY.items():
    _op.writer("onnx")(_onnx(_name))
    _op.writer("keras")(_keras(_name))
    _op.writer("caffe", check=_caffe_check(_name))(_caffe(_name))
