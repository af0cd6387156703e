"""Conv and DepthwiseConv: TF's Conv2D / DepthwiseConv2dNative (and the SpaceToBatch form of dilated ones).

Padding is explicit per side (top, bottom, left, right), so TF's asymmetric SAME is exact everywhere.
Caffe pads symmetrically: unequal pads become max(before, after) on both sides plus zero kernel
rows/columns on the side that must not see the extra padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit.core.lazy_tf import pad4, tf
from ckptkit.core.errors import CkptkitError, UnsupportedOpError
from ckptkit.ir import padding_mode
from ckptkit.ir.layout import out_channels, to_oihw
from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


@dataclass
class ConvAttrs:
    strides: tuple = (1, 1)
    dilations: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)  # top, bottom, left, right


def _run(conv):
    def run(ctx, node, xs, p):

        a = node.attrs
        y = conv(pad4(xs[0], a.pads), p["weights"], (1,) + tuple(a.strides) + (1,), "VALID", dilations=a.dilations)
        return y if p.get("bias") is None else tf().nn.bias_add(y, p["bias"])

    return run


CONV = define("Conv", ConvAttrs, run=_run(lambda *a, **k: tf().nn.conv2d(*a, **k)), layout="HWIO",
              doc="2-D convolution, kernel [kh,kw,in,out]")
DEPTHWISE = define("DepthwiseConv", ConvAttrs, run=_run(lambda *a, **k: tf().nn.depthwise_conv2d(*a, **k)),
                   layout="HWCM", doc="depthwise convolution, kernel [kh,kw,C,M], output channel c*M+m")


# ---- TensorFlow import -----------------------------------------------------------------------
@register("Conv2D", "DepthwiseConv2dNative")
def import_conv(w: Walker, t) -> str:
    op = t.op
    C.require_nhwc(op)
    x = w.convert(op.inputs[0])
    weights, src = C.weights(w, op.inputs[1], op)
    strides = tuple(C.attr(op, "strides")[1:3])
    dilations = tuple((C.attr(op, "dilations") or [1, 1, 1, 1])[1:3])
    pads = C.padding_pads(op, w.shape_of(op.inputs[0]), weights.shape[:2], strides, dilations)
    kind = "Conv" if op.type == "Conv2D" else "DepthwiseConv"
    return w.emit(op.name, kind, [x], w.shape_of(t), attrs=dict(strides=strides, dilations=dilations, pads=pads),
                  params={"weights": weights}, sources={"weights": src} if src else {})


@register("BatchToSpaceND")
def import_atrous(w: Walker, t) -> str:
    """SpaceToBatchND -> Conv2D/Depthwise (VALID) -> BatchToSpaceND, i.e. tf.nn.convolution's dilated conv."""
    op = t.op
    inner = w.resolve(op.inputs[0])
    if inner.op.type not in ("Conv2D", "DepthwiseConv2dNative") or C.attr(inner.op, "padding") != "VALID":
        raise UnsupportedOpError(f"BatchToSpaceND {op.name} is not part of a dilated convolution")
    s2b = w.resolve(inner.op.inputs[0])
    if s2b.op.type != "SpaceToBatchND":
        raise UnsupportedOpError(f"BatchToSpaceND {op.name} is not part of a dilated convolution")
    block, paddings, crops = w.const(s2b.op.inputs[1]), w.const(s2b.op.inputs[2]), w.const(op.inputs[2])
    if block is None or paddings is None or crops is None:
        raise UnsupportedOpError(f"dilated convolution {op.name} has non-constant block/paddings")
    if tuple(C.attr(inner.op, "strides")[1:3]) != (1, 1):
        raise UnsupportedOpError(f"dilated convolution {op.name} with strides is not supported")
    # A stride-1 VALID conv on the padded input, cropped after, equals one on an input
    # padded by (pad - crop) on each side.
    pads = (int(paddings[0, 0] - crops[0, 0]), int(paddings[0, 1] - crops[0, 1]),
            int(paddings[1, 0] - crops[1, 0]), int(paddings[1, 1] - crops[1, 1]))
    x = w.convert(s2b.op.inputs[0])
    weights, src = C.weights(w, inner.op.inputs[1], inner.op)
    kind = "Conv" if inner.op.type == "Conv2D" else "DepthwiseConv"
    return w.emit(inner.op.name, kind, [x], w.shape_of(t),
                  attrs=dict(strides=(1, 1), dilations=(int(block[0]), int(block[1])), pads=pads),
                  params={"weights": weights}, sources={"weights": src} if src else {})


# ---- writers ---------------------------------------------------------------------------------
def _layout(node) -> str:
    return "HWIO" if node.op == "Conv" else "HWCM"


@CONV.writer("onnx")
@DEPTHWISE.writer("onnx")
def to_onnx(b, node, xs):
    a, p, n = node.attrs, node.params, node.name
    kernel, group = to_oihw(p["weights"], _layout(node))
    t, bo, l, r = a.pads
    inputs = [xs[0], b.const(f"{n}/weights", kernel, np.float32)]
    if p.get("bias") is not None:
        inputs.append(b.const(f"{n}/bias", p["bias"].astype(np.float32)))
    return b.op("Conv", inputs, n, kernel_shape=list(p["weights"].shape[:2]), strides=list(a.strides),
                dilations=list(a.dilations), pads=[t, l, bo, r], group=group)


@CONV.writer("keras")
@DEPTHWISE.writer("keras")
def to_keras(k, node, xs):

    a, p = node.attrs, node.params
    w = p["weights"]
    mode = padding_mode(a.pads, k.in_shape(node), w.shape[:2], a.strides, a.dilations)
    x = xs[0]
    if mode == "explicit":
        t, b, l, r = a.pads
        x = k.add(k.L.ZeroPadding2D(((t, b), (l, r)), name=k.name(node, "_pad")), x)
        mode = "valid"
    bias = p.get("bias")
    common = dict(kernel_size=w.shape[:2], strides=a.strides, dilation_rate=a.dilations, padding=mode,
                  use_bias=bias is not None, name=k.name(node))
    layer = k.L.Conv2D(out_channels(w.shape, "HWIO"), **common) if node.op == "Conv" else \
        k.L.DepthwiseConv2D(depth_multiplier=w.shape[3], **common)
    return k.add(layer, x, [w] + ([bias] if bias is not None else []))


def _even_out(weights: np.ndarray, axis: int, before: int, after: int, dilation: int, name: str):
    diff = after - before
    if diff == 0:
        return weights, before
    if diff % dilation:
        raise CkptkitError(f"{name}: pads ({before},{after}) with dilation {dilation} have no exact Caffe form")
    shape = list(weights.shape)
    shape[axis] = abs(diff) // dilation
    zeros = np.zeros(shape, weights.dtype)
    parts = [zeros, weights] if diff > 0 else [weights, zeros]
    return np.concatenate(parts, axis=axis), max(before, after)


def caffe_conv(c, node, bottom: str, weights: np.ndarray, bias: Optional[np.ndarray], group: int) -> str:
    """A Caffe Convolution of OIHW `weights` with the node's TF pads, strides and dilations."""
    t, b, l, r = node.attrs.pads
    dh, dw = node.attrs.dilations
    # Caffe pads symmetrically. With pads (before, after) unequal, pad max(before, after)
    # on both sides and add |after - before| / dilation zero rows to the kernel on the side
    # that must not see the extra padding (first rows when after > before, last otherwise).
    weights, t = _even_out(weights, 2, t, b, dh, node.name)
    weights, l = _even_out(weights, 3, l, r, dw, node.name)
    kh, kw = weights.shape[2:]
    sh, sw = node.attrs.strides
    param = c.pb.ConvolutionParameter(num_output=weights.shape[0], bias_term=bias is not None, pad_h=t, pad_w=l,
                                      kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, group=group)
    if (dh, dw) != (1, 1):
        param.dilation.append(dh)
    blobs = [weights] + ([bias] if bias is not None else [])
    return c.layer(node.name, "Convolution", [bottom], blobs, convolution_param=param)


def _caffe_check(node, graph) -> Optional[str]:
    dh, dw = node.attrs.dilations
    if dh != dw:
        return f"dilation {dh}x{dw} differs between the axes"
    t, b, l, r = node.attrs.pads
    if (b - t) % dh or (r - l) % dw:
        return f"pads {node.attrs.pads} with dilation {dh} have no exact Caffe form"
    return None


@CONV.writer("caffe", check=_caffe_check)
@DEPTHWISE.writer("caffe", check=_caffe_check)
def to_caffe(c, node, bottoms):
    kernel, group = to_oihw(node.params["weights"], _layout(node))
    return caffe_conv(c, node, bottoms[0], kernel, node.params.get("bias"), group)
