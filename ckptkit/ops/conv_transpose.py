"""ConvTranspose: TF's Conv2DBackpropInput (tf.nn.conv2d_transpose, slim.conv2d_transpose, Keras Conv2DTranspose).

Kernel [kh, kw, out, in] (layout HWOI: a following BatchNorm scales axis 2). The IR keeps the full
transposed convolution, of size (in-1)*stride + k per axis, cropped by `pads` (top, bottom, left,
right); a negative bottom/right crop appends that many zero rows/columns (TF's output_shape can ask for
more than the full size when k < stride).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError, UnsupportedOpError
from ckptkit.ir import same_pads
from ckptkit.ir.layout import to_oihw
from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


@dataclass
class ConvTransposeAttrs:
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)  # crop of the full output: top, bottom, left, right (bottom/right may be < 0)


def full_size(size: int, kernel: int, stride: int) -> int:
    return (size - 1) * stride + kernel


def _run(ctx, node, xs, p):
    _tf = tf()
    x, w = xs[0], p["weights"]
    (sh, sw), (t, b, l, r) = node.attrs.strides, node.attrs.pads
    kh, kw = node.params["weights"].shape[:2]
    h, wd = x.shape[1], x.shape[2]
    fh, fw = full_size(h, kh, sh), full_size(wd, kw, sw)
    out_shape = _tf.stack([_tf.shape(x)[0], fh, fw, node.params["weights"].shape[2]])
    y = _tf.nn.conv2d_transpose(x, w, out_shape, (1, sh, sw, 1), "VALID")
    y = y[:, t:fh - max(b, 0), l:fw - max(r, 0), :]
    if b < 0 or r < 0:
        y = _tf.pad(y, [[0, 0], [0, max(-b, 0)], [0, max(-r, 0)], [0, 0]])
    return y if p.get("bias") is None else _tf.nn.bias_add(y, p["bias"])


CONV_T = define("ConvTranspose", ConvTransposeAttrs, run=_run, layout="HWOI",
                doc="transposed convolution, kernel [kh,kw,out,in]")


@register("Conv2DBackpropInput")
def import_conv_transpose(w: Walker, t) -> str:
    op = t.op
    C.require_nhwc(op)
    if tuple((C.attr(op, "dilations") or [1, 1, 1, 1])[1:3]) != (1, 1):
        raise UnsupportedOpError(f"Conv2DBackpropInput {op.name} with dilations is not supported")
    weights, src = C.weights(w, op.inputs[1], op)
    x_t = op.inputs[2]
    in_shape, out_shape = w.shape_of(x_t), w.shape_of(t)
    if None in in_shape[1:3] or None in out_shape[1:3]:
        raise CkptkitError(f"{op.name}: transposed convolution sizes unknown: give --input-shape H,W,C")
    strides = tuple(C.attr(op, "strides")[1:3])
    kernel = weights.shape[:2]
    crops = []
    for axis in (0, 1):
        size_in, size_out, k, s = in_shape[1 + axis], out_shape[1 + axis], kernel[axis], strides[axis]
        # the forward convolution this is the gradient of maps size_out -> size_in with these pads
        padding = C.attr(op, "padding")
        if padding == "SAME":
            before = same_pads(size_out, k, s)[0]
        elif padding == "VALID":
            before = 0
        else:
            e = list(C.attr(op, "explicit_paddings"))
            before = e[2 + 2 * axis]
        crops += [before, full_size(size_in, k, s) - before - size_out]
    return w.emit(op.name, "ConvTranspose", [w.convert(x_t)], out_shape,
                  attrs=dict(strides=strides, pads=tuple(crops)), params={"weights": weights},
                  sources={"weights": src} if src else {})


# ---- writers ---------------------------------------------------------------------------------
@CONV_T.writer("onnx")
def to_onnx(b, node, xs):
    p, n = node.params, node.name
    t, bo, l, r = node.attrs.pads
    kernel, _ = to_oihw(p["weights"], "HWOI")  # ONNX ConvTranspose weight: [in, out, kh, kw]
    inputs = [xs[0], b.const(f"{n}/weights", kernel, np.float32)]
    if p.get("bias") is not None:
        inputs.append(b.const(f"{n}/bias", p["bias"].astype(np.float32)))
    # out = s*(in-1) + output_padding + k - pad_begin - pad_end: a negative end crop is output padding
    return b.op("ConvTranspose", inputs, n, kernel_shape=list(p["weights"].shape[:2]),
                strides=list(node.attrs.strides), pads=[t, l, max(bo, 0), max(r, 0)],
                output_padding=[max(-bo, 0), max(-r, 0)])


def _keras_crops(node, graph) -> Optional[tuple]:
    """Keras' 'valid' Conv2DTranspose gives in*s + max(k - s, 0) per axis (zeros past the full size):
    the crops that leave the node's output, or None when it would need more."""
    in_shape = graph[node.inputs[0]].shape
    k, s = node.params["weights"].shape[:2], node.attrs.strides
    t, b, l, r = node.attrs.pads
    crops = []
    for axis, begin in ((0, t), (1, l)):
        length = in_shape[1 + axis] * s[axis] + max(k[axis] - s[axis], 0)
        end = length - begin - node.shape[1 + axis]
        if end < 0:
            return None
        crops.append((begin, end))
    return tuple(crops)


@CONV_T.writer("keras", check=lambda node, graph: None if _keras_crops(node, graph) is not None else
               f"output padding {node.attrs.pads} beyond what Keras' Conv2DTranspose computes")
def to_keras(k, node, xs):
    p = node.params
    w, bias = p["weights"], p.get("bias")
    layer = k.L.Conv2DTranspose(w.shape[2], w.shape[:2], strides=node.attrs.strides, padding="valid",
                                use_bias=bias is not None, name=k.name(node))
    y = k.add(layer, xs[0], [w] + ([bias] if bias is not None else []))  # Keras' kernel is TF's [kh,kw,out,in]
    crops = _keras_crops(node, k.graph)
    if any(v for pair in crops for v in pair):
        y = k.add(k.L.Cropping2D(crops, name=k.name(node, "_crop")), y)
    return y


@CONV_T.writer("caffe", check=lambda node, graph: "a negative crop (output padding)" if min(node.attrs.pads) < 0
               else None)
def to_caffe(c, node, bottoms):
    p = node.params
    kernel, _ = to_oihw(p["weights"], "HWOI")  # Caffe Deconvolution weight: [in, out, kh, kw]
    (kh, kw), (sh, sw) = p["weights"].shape[:2], node.attrs.strides
    t, b, l, r = node.attrs.pads
    symmetric = t == b and l == r
    bias = p.get("bias")
    param = c.pb.ConvolutionParameter(num_output=kernel.shape[1], bias_term=bias is not None, kernel_h=kh,
                                      kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=t if symmetric else 0,
                                      pad_w=l if symmetric else 0)
    name = node.name if symmetric else node.name + "/full"
    y = c.layer(name, "Deconvolution", bottoms, [kernel] + ([bias] if bias is not None else []),
                convolution_param=param)
    if symmetric:
        return y
    return c.crop(node.name, y, node.shape[1:3], (t + b, l + r), (t, l))
