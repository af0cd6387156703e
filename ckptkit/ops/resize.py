"""Resize: TF's ResizeBilinear / ResizeNearestNeighbor with align_corners and half_pixel_centers.

Source coordinate of output pixel i (scale = in/out; align_corners: (in-1)/(out-1)):
  legacy (neither flag)  i * scale                  nearest: floor
  half_pixel_centers     (i + 0.5) * scale - 0.5    nearest: floor((i + 0.5) * scale)
  align_corners          i * scale                  nearest: round half away from zero
ONNX Resize expresses all six (coordinate_transformation_mode + nearest_mode). Keras' Resizing
layer is TF's half-pixel resize; UpSampling2D(nearest) is legacy nearest by an integer factor. Caffe
has no resize layer: nearest by an integer factor is a ones-kernel grouped Deconvolution; the rest is
refused.
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
class ResizeAttrs:
    size: tuple = (1, 1)  # output height, width
    method: str = "bilinear"  # bilinear | nearest
    align_corners: bool = False
    half_pixel_centers: bool = False


def _run(ctx, node, xs, p):
    a = node.attrs
    fn = tf().raw_ops.ResizeBilinear if a.method == "bilinear" else tf().raw_ops.ResizeNearestNeighbor
    return fn(images=xs[0], size=list(a.size), align_corners=a.align_corners, half_pixel_centers=a.half_pixel_centers)


RESIZE = define("Resize", ResizeAttrs, run=_run, doc="bilinear / nearest resize")


@register("ResizeBilinear", "ResizeNearestNeighbor")
def import_resize(w: Walker, t) -> str:
    op = t.op
    size = w.const(op.inputs[1])
    if size is None:
        raise UnsupportedOpError(f"{op.type} {op.name} to a computed size is not supported")
    return w.emit(op.name, "Resize", [w.convert(op.inputs[0])], w.shape_of(t),
                  attrs=dict(size=tuple(int(v) for v in size), method="bilinear" if op.type == "ResizeBilinear"
                             else "nearest", align_corners=bool(C.attr(op, "align_corners", False)),
                             half_pixel_centers=bool(C.attr(op, "half_pixel_centers", False))))


def _factors(node, graph) -> tuple | None:
    """Integer upsampling factors (sh, sw), or None."""
    h, w = graph[node.inputs[0]].shape[1:3]
    oh, ow = node.attrs.size
    return (oh // h, ow // w) if oh % h == 0 and ow % w == 0 else None


# ---- ONNX ------------------------------------------------------------------------------------
def _onnx_modes(a: ResizeAttrs) -> dict:
    """ONNX Resize attributes sampling exactly where TF does. TF's half-pixel nearest floor((i+0.5)*scale)
    is ONNX's half_pixel coordinate (i+0.5)*scale - 0.5 rounded half up."""
    if a.align_corners:
        mode = "align_corners"
    elif a.half_pixel_centers:
        mode = "half_pixel"
    else:
        mode = "asymmetric"
    out = {"mode": "linear" if a.method == "bilinear" else "nearest", "coordinate_transformation_mode": mode}
    if a.method == "nearest":
        out["nearest_mode"] = "floor" if mode == "asymmetric" else "round_prefer_ceil"
    return out


@RESIZE.writer("onnx")
def to_onnx(b, node, xs):
    n, a = node.name, node.attrs
    modes = _onnx_modes(a)
    # sizes of all four NCHW axes: the batch's from the input's shape
    batch_and_channels = b.op("Slice", [b.op("Shape", [xs[0]], f"{n}/shape"), b.const(f"{n}/zero", np.array([0])),
                                        b.const(f"{n}/two", np.array([2]))], f"{n}/nc")
    sizes = b.op("Concat", [batch_and_channels, b.const(f"{n}/hw", np.array(a.size, np.int64))], f"{n}/sizes", axis=0)
    return b.op("Resize", [xs[0], "", "", sizes], n, **modes)


# ---- Keras -----------------------------------------------------------------------------------
def _keras_form(node, graph) -> str | None:
    a = node.attrs
    if a.align_corners:
        return None
    if a.half_pixel_centers:
        return "resizing"
    if a.method == "nearest" and _factors(node, graph):
        return "upsampling"  # legacy nearest by an integer factor: floor(i / s) repeats each pixel s times
    return None


@RESIZE.writer("keras", check=lambda node, graph: None if _keras_form(node, graph) else
               f"{node.attrs.method} resize with align_corners={node.attrs.align_corners}, "
               f"half_pixel_centers={node.attrs.half_pixel_centers}, which Keras' Resizing cannot express")
def to_keras(k, node, xs):
    a = node.attrs
    if _keras_form(node, k.graph) == "upsampling":
        return k.add(k.L.UpSampling2D(_factors(node, k.graph), interpolation="nearest", name=k.name(node)), xs[0])
    return k.add(k.L.Resizing(a.size[0], a.size[1], interpolation=a.method, name=k.name(node)), xs[0])


# ---- Caffe -----------------------------------------------------------------------------------
def _caffe_check(node, graph):
    a = node.attrs
    if a.method == "nearest" and not a.align_corners and _factors(node, graph):
        return None
    return f"{a.method} resize has no Caffe layer (only nearest by an integer factor)"


@RESIZE.writer("caffe", check=_caffe_check)
def to_caffe(c, node, bottoms):
    sh, sw = _factors(node, c.g)
    ch = node.shape[-1]
    # each input pixel spread over an sh x sw block: a grouped Deconvolution with a ones kernel
    param = c.pb.ConvolutionParameter(num_output=ch, bias_term=False, kernel_h=sh, kernel_w=sw, stride_h=sh,
                                      stride_w=sw, group=ch)
    return c.layer(node.name, "Deconvolution", bottoms, [np.ones((ch, 1, sh, sw), np.float32)],
                   convolution_param=param)
