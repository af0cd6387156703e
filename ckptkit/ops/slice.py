"""Slice: a static box of a tensor, per non-batch axis (begin, end, stride > 0).

Imported from StridedSlice (constant begin/end/strides; begin/end/ellipsis masks; shrink/new-axis masks
refused), Slice, and one Slice per output of Split/SplitV. NASNet's factorized reduction crops
`[:, 1:, 1:, :]`; Inception-style branches split channels.
Keras and Caffe have no slicing layer: spatial boxes are a crop (Cropping2D / Crop) followed, for a
stride, by a 1x1 window with that stride (Keras: max pooling; Caffe, whose pooling rounds up: a depthwise
convolution of ones); channel boxes are a 1x1 convolution
that selects channels with a one-hot kernel (x*1 + 0*others: exact for finite inputs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.ir.layout import nchw_axis
from ckptkit.core.errors import UnsupportedOpError
from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define


@dataclass
class SliceAttrs:
    begin: tuple = ()  # per axis after the batch
    end: tuple = ()
    strides: tuple = ()


def _run(ctx, node, xs, p):
    a = node.attrs
    return tf().strided_slice(xs[0], (0,) + tuple(a.begin), (0,) + tuple(a.end), (1,) + tuple(a.strides),
                              begin_mask=1, end_mask=1)


SLICE = define("Slice", SliceAttrs, run=_run, doc="static box of a tensor (strided)")


def _emit(w: Walker, t, x_t, begin, end, strides) -> str:
    shape = w.shape_of(x_t)
    if None in shape[1:]:
        raise UnsupportedOpError(f"{t.op.type} {t.op.name}: input shape {shape} is not static: give --input-shape")
    return w.emit(t.op.name if t.op.type not in ("Split", "SplitV") else f"{t.op.name}_{t.value_index}", "Slice",
                  [w.convert(x_t)], w.shape_of(t),
                  attrs=dict(begin=tuple(begin), end=tuple(end), strides=tuple(strides)))


def _const(w: Walker, t, tensor, what: str) -> np.ndarray:
    value = w.const(tensor)
    if value is None:
        raise UnsupportedOpError(f"{t.op.type} {t.op.name}: computed {what} are not supported")
    return np.asarray(value).astype(np.int64).reshape(-1)


@register("StridedSlice")
def import_strided_slice(w: Walker, t) -> str:
    op = t.op
    x_t = op.inputs[0]
    shape = w.shape_of(x_t)
    for mask in ("new_axis_mask", "shrink_axis_mask"):
        if C.attr(op, mask, 0):
            raise UnsupportedOpError(f"StridedSlice {op.name} with {mask} is not supported")
    begin, end, strides = (_const(w, t, op.inputs[i], n) for i, n in ((1, "begins"), (2, "ends"), (3, "strides")))
    bmask, emask, ellipsis = (C.attr(op, m, 0) for m in ("begin_mask", "end_mask", "ellipsis_mask"))
    # one (begin, end, stride) per axis: spec entries in order, an ellipsis standing for the axes it spans
    per_axis: list[tuple] = []
    for j in range(len(begin)):
        if ellipsis >> j & 1:
            per_axis += [None] * (len(shape) - (len(begin) - 1) - len(per_axis))
        else:
            per_axis.append((None if bmask >> j & 1 else int(begin[j]), None if emask >> j & 1 else int(end[j]),
                             int(strides[j])))
    per_axis += [None] * (len(shape) - len(per_axis))
    b_out, e_out, s_out = [], [], []
    for axis, spec in enumerate(per_axis):
        size = shape[axis]
        lo, hi, st = spec if spec is not None else (None, None, 1)
        if st <= 0:
            raise UnsupportedOpError(f"StridedSlice {op.name}: stride {st} (only positive strides)")
        if axis == 0:
            if st != 1 or lo not in (None, 0) or hi is not None:
                raise UnsupportedOpError(f"StridedSlice {op.name} slices the batch dimension")
            continue
        lo = 0 if lo is None else (lo + size if lo < 0 else lo)
        hi = size if hi is None else (hi + size if hi < 0 else hi)
        b_out.append(min(max(lo, 0), size))
        e_out.append(min(max(hi, 0), size))
        s_out.append(st)
    return _emit(w, t, x_t, b_out, e_out, s_out)


@register("Slice")
def import_slice(w: Walker, t) -> str:
    op = t.op
    shape = w.shape_of(op.inputs[0])
    begin, size = _const(w, t, op.inputs[1], "begins"), _const(w, t, op.inputs[2], "sizes")
    if begin[0] != 0 or size[0] != -1:
        raise UnsupportedOpError(f"Slice {op.name} slices the batch dimension")
    end = [shape[i] if size[i] == -1 else int(begin[i] + size[i]) for i in range(1, len(shape))]
    return _emit(w, t, op.inputs[0], [int(v) for v in begin[1:]], end, [1] * (len(shape) - 1))


@register("Split", "SplitV")
def import_split(w: Walker, t) -> str:
    op = t.op
    if op.type == "Split":
        axis_t, x_t = op.inputs
        count = C.attr(op, "num_split")
        shape = w.shape_of(x_t)
        axis = int(_const(w, t, axis_t, "axes")[0]) % len(shape)
        sizes = [shape[axis] // count] * count
    else:
        x_t, sizes_t, axis_t = op.inputs
        shape = w.shape_of(x_t)
        axis = int(_const(w, t, axis_t, "axes")[0]) % len(shape)
        sizes = [int(v) for v in _const(w, t, sizes_t, "sizes")]
        if -1 in sizes:
            sizes[sizes.index(-1)] = shape[axis] - (sum(sizes) + 1)
    if axis == 0:
        raise UnsupportedOpError(f"{op.type} {op.name} splits the batch dimension")
    start = sum(sizes[:t.value_index])
    begin = [0] * (len(shape) - 1)
    end = list(shape[1:])
    begin[axis - 1], end[axis - 1] = start, start + sizes[t.value_index]
    return _emit(w, t, x_t, begin, end, [1] * (len(shape) - 1))


# ---- writers ---------------------------------------------------------------------------------
def _box(node, graph):
    """((begin, end, stride) per non-batch axis, input shape)."""
    a = node.attrs
    return list(zip(a.begin, a.end, a.strides)), graph[node.inputs[0]].shape


def _changed(node, graph) -> list[int]:
    box, shape = _box(node, graph)
    return [i + 1 for i, (b, e, s) in enumerate(box) if (b, e, s) != (0, shape[i + 1], 1)]


@SLICE.writer("onnx")
def to_onnx(b, node, xs):
    n, rank = node.name, len(node.shape)
    box, _ = _box(node, b.graph)
    axes = [nchw_axis(i + 1, rank) for i in range(len(box))]
    arr = lambda v: np.array(v, np.int64)  # noqa: E731
    return b.op("Slice", [xs[0], b.const(f"{n}/starts", arr([v[0] for v in box])),
                          b.const(f"{n}/ends", arr([v[1] for v in box])), b.const(f"{n}/axes", arr(axes)),
                          b.const(f"{n}/steps", arr([v[2] for v in box]))], n)


def _form_check(node, graph):
    """Keras and Caffe: 4-D tensors, either spatial boxes or contiguous channel boxes, not both."""
    changed = _changed(node, graph)
    if len(node.shape) != 4:
        return "a slice of a tensor that is not 4-D"
    if 3 in changed and (len(changed) > 1 or node.attrs.strides[2] != 1):
        return "a strided or combined channel slice"
    return None


def _selection(node, graph) -> np.ndarray:
    """1x1 kernel [in, out] picking channels begin..end."""
    b, e, _ = _box(node, graph)[0][2]
    c_in = graph[node.inputs[0]].shape[3]
    sel = np.zeros((c_in, e - b), np.float32)
    sel[np.arange(b, e), np.arange(e - b)] = 1.0
    return sel


@SLICE.writer("keras", check=_form_check)
def to_keras(k, node, xs):
    box, shape = _box(node, k.graph)
    x = xs[0]
    if 3 in _changed(node, k.graph):
        sel = _selection(node, k.graph)
        return k.add(k.L.Conv2D(sel.shape[1], 1, use_bias=False, name=k.name(node)), x, [sel[None, None]])
    (t, e_h, sh), (l, e_w, sw) = box[0], box[1]
    if (t, shape[1] - e_h, l, shape[2] - e_w) != (0, 0, 0, 0):
        x = k.add(k.L.Cropping2D(((t, shape[1] - e_h), (l, shape[2] - e_w)), name=k.name(node, "_crop")), x)
    if (sh, sw) != (1, 1):  # a 1x1 window picks each kept cell exactly (TF's depthwise wants equal strides)
        x = k.add(k.L.MaxPooling2D(1, strides=(sh, sw), name=k.name(node)), x)
    return x


@SLICE.writer("caffe", check=_form_check)
def to_caffe(c, node, bottoms):
    pb, n = c.pb, node.name
    box, shape = _box(node, c.g)
    if 3 in _changed(node, c.g):
        sel = _selection(node, c.g)
        param = pb.ConvolutionParameter(num_output=sel.shape[1], bias_term=False, kernel_size=[1])
        return c.layer(n, "Convolution", bottoms, [sel.T[:, :, None, None].copy()], convolution_param=param)
    (t, e_h, sh), (l, e_w, sw) = box[0], box[1]
    y = bottoms[0]
    strided = (sh, sw) != (1, 1)
    if (t, shape[1] - e_h, l, shape[2] - e_w) != (0, 0, 0, 0):
        y = c.crop(n + "/crop" if strided else n, y, (e_h - t, e_w - l), (shape[1] - e_h + t, shape[2] - e_w + l),
                   (t, l))
    if strided:
        ch = shape[3]
        param = pb.ConvolutionParameter(num_output=ch, bias_term=False, kernel_h=1, kernel_w=1, stride_h=sh,
                                        stride_w=sw, group=ch)
        y = c.layer(n, "Convolution", [y], [np.ones((ch, 1, 1, 1), np.float32)], convolution_param=param)
    return y
