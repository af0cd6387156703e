"""MaxPool and AvgPool with TF semantics: explicit per-side pads, padded cells never count.

Caffe pads symmetrically and rounds output sizes up: the windows are matched exactly by choosing the
Caffe pad per axis, cropping an extra window, and rescaling average pools whose divisor counted padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.core.lazy_tf import pad4, tf
from ckptkit.core.errors import CkptkitError
from ckptkit.ir import padding_mode
from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


@dataclass
class PoolAttrs:
    kernel: tuple = (2, 2)
    strides: tuple = (2, 2)
    pads: tuple = (0, 0, 0, 0)  # top, bottom, left, right


def _run_max(ctx, node, xs, p):

    a = node.attrs
    return tf().nn.max_pool2d(pad4(xs[0], a.pads, -np.inf), a.kernel, a.strides, "VALID")


def _run_avg(ctx, node, xs, p):

    _tf, a, x = tf(), node.attrs, xs[0]
    k = float(a.kernel[0] * a.kernel[1])
    # Padded cells do not count: divide the sum by the number of real cells in each window.
    summed = _tf.nn.avg_pool2d(pad4(x, a.pads), a.kernel, a.strides, "VALID") * k
    count = _tf.nn.avg_pool2d(pad4(_tf.ones_like(x[:1, :, :, :1]), a.pads), a.kernel, a.strides, "VALID") * k
    return summed / count


MAX_POOL = define("MaxPool", PoolAttrs, run=_run_max, doc="max pooling")
AVG_POOL = define("AvgPool", PoolAttrs, run=_run_avg, doc="average pooling over real cells")


@register("MaxPool", "AvgPool")
def import_pool(w: Walker, t) -> str:
    op = t.op
    C.require_nhwc(op)
    kernel = tuple(C.attr(op, "ksize")[1:3])
    strides = tuple(C.attr(op, "strides")[1:3])
    pads = C.padding_pads(op, w.shape_of(op.inputs[0]), kernel, strides, (1, 1))
    return w.emit(op.name, op.type, [w.convert(op.inputs[0])], w.shape_of(t),
                  attrs=dict(kernel=kernel, strides=strides, pads=pads))


# ---- writers ---------------------------------------------------------------------------------
@MAX_POOL.writer("onnx")
@AVG_POOL.writer("onnx")
def to_onnx(b, node, xs):
    a = node.attrs
    t, bo, l, r = a.pads
    kw = dict(kernel_shape=list(a.kernel), strides=list(a.strides), pads=[t, l, bo, r])
    if node.op == "AvgPool":
        kw["count_include_pad"] = 0  # TF never counts padded cells
    return b.op("MaxPool" if node.op == "MaxPool" else "AveragePool", xs, node.name, **kw)


def _keras_mode(node, graph) -> str:

    return padding_mode(node.attrs.pads, graph[node.inputs[0]].shape, node.attrs.kernel, node.attrs.strides)


def _keras_check(node, graph):
    return f"padding {node.attrs.pads}, which Keras pooling cannot express" if _keras_mode(node, graph) == "explicit" \
        else None


@MAX_POOL.writer("keras", check=_keras_check)
@AVG_POOL.writer("keras", check=_keras_check)
def to_keras(k, node, xs):
    a = node.attrs
    cls = k.L.MaxPooling2D if node.op == "MaxPool" else k.L.AveragePooling2D
    return k.add(cls(pool_size=a.kernel, strides=a.strides, padding=_keras_mode(node, k.graph), name=k.name(node)),
                 xs[0])


def _caffe_pool_out(size: int, k: int, s: int, p: int) -> int:
    out = -(-(size + 2 * p - k) // s) + 1
    if p > 0 and (out - 1) * s >= size + p:  # last window would start inside the padding
        out -= 1
    return out


def _ave_ratio(size: int, k: int, s: int, p: int, offset: int, tf_pad: int, out: int) -> np.ndarray:
    """Per TF output position along one axis: Caffe's divisor / TF's count of real cells.
    Caffe output i + offset covers the same cells as TF output i."""
    ratio = np.empty(out)
    for i in range(out):
        start = (i + offset) * s - p
        caffe = min(start + k, size + p) - max(start, -p)
        tf_start = i * s - tf_pad
        real = min(tf_start + k, size) - max(tf_start, 0)
        ratio[i] = caffe / real
    return ratio


def _pool_axis(size: int, k: int, s: int, top: int, bottom: int, out: int) -> tuple[int, int, int] | None:
    """(Caffe pad, crop offset, Caffe output size) whose windows are TF's, for one axis (None: no exact form).

    Caffe pads symmetrically and rounds up; TF's SAME pads the odd cell after. Either
    Caffe with the top pad gives TF's windows (maybe one extra at the end, cropped), or
    for stride 1 the bottom pad gives them shifted by one (cropped at the start)."""
    for pad, offset in ((top, 0), (bottom, bottom - top)):
        if offset and s != 1:
            continue
        got = _caffe_pool_out(size, k, s, pad)
        if got - offset >= out:
            return pad, offset, got
    return None


def _caffe_axes(node, graph):
    src = graph[node.inputs[0]].shape
    a = node.attrs
    t, b, l, r = a.pads
    return (_pool_axis(src[1], a.kernel[0], a.strides[0], t, b, node.shape[1]),
            _pool_axis(src[2], a.kernel[1], a.strides[1], l, r, node.shape[2]))


def _caffe_check(node, graph):
    if None in _caffe_axes(node, graph):
        return f"pooling {node.attrs.kernel}/{node.attrs.strides} with pads {node.attrs.pads} has no exact Caffe form"
    return None


@MAX_POOL.writer("caffe", check=_caffe_check)
@AVG_POOL.writer("caffe", check=_caffe_check)
def to_caffe(c, node, bottoms):
    a, pb = node.attrs, c.pb
    src = c.g[node.inputs[0]].shape
    (kh, kw), (sh, sw) = a.kernel, a.strides
    t, b, l, r = a.pads
    out_h, out_w = node.shape[1:3]
    axes = _caffe_axes(node, c.g)
    if None in axes:
        raise CkptkitError(_caffe_check(node, c.g))
    (ph, oh, ch), (pw, ow, cw) = axes
    kind = pb.PoolingParameter.MAX if node.op == "MaxPool" else pb.PoolingParameter.AVE
    param = pb.PoolingParameter(pool=kind, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw)
    ratio = None
    if node.op == "AvgPool":
        ratio = np.outer(_ave_ratio(src[1], kh, sh, ph, oh, t, out_h), _ave_ratio(src[2], kw, sw, pw, ow, l, out_w))
        if np.all(ratio == 1.0):
            ratio = None
    crop = (ch, cw) != (out_h, out_w)
    name = node.name if ratio is None and not crop else node.name + "/caffe_pool"
    y = c.layer(name, "Pooling", bottoms, pooling_param=param)
    if crop:
        y = c.crop(node.name if ratio is None else node.name + "/crop", y, (out_h, out_w), (ch - out_h, cw - out_w),
                   (oh, ow))
    if ratio is None:
        return y
    # Caffe divided by cells that include padding. The same pooling of a tensor of ones gives, per position,
    # real cells / Caffe's divisor: dividing by it gives TF's real-cell mean. (A Scale layer over the spatial
    # axes holding the ratio map is exact in BVLC Caffe and OpenCV but misread by MNN; Power, Pooling and
    # Eltwise PROD are read alike by every consumer.)
    ones = c.layer(node.name + "/ones", "Power", bottoms, power_param=pb.PowerParameter(power=1, scale=0, shift=1))
    share = c.layer(node.name + "/real_share", "Pooling", [ones], pooling_param=param)
    if crop:
        share = c.crop(node.name + "/real_share_crop", share, (out_h, out_w), (ch - out_h, cw - out_w), (oh, ow))
    inverse = c.layer(node.name + "/rescale", "Power", [share], power_param=pb.PowerParameter(power=-1))
    return c.layer(node.name, "Eltwise", [y, inverse],
                   eltwise_param=pb.EltwiseParameter(operation=pb.EltwiseParameter.PROD))
