"""One small handler per TF op family: TF op -> IR node(s).

Each handler gets the walker and the tensor to produce, converts the inputs it
needs through `w.convert`, and returns the IR node name.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from ..errors import CkptkitError, UnsupportedOpError
from ..ir import same_pads
from .walker import Walker, register

log = logging.getLogger("ckptkit.import")


def _attr(op, name, default=None):
    try:
        value = op.get_attr(name)
    except ValueError:
        return default
    return value.decode() if isinstance(value, bytes) else value


def _require_nhwc(op) -> None:
    fmt = _attr(op, "data_format", "NHWC")
    if fmt not in ("NHWC", "N...C"):
        raise UnsupportedOpError(f"{op.type} {op.name} uses data_format {fmt}: ckptkit imports NHWC graphs; "
                                 "rebuild the graph with data_format='NHWC' (the checkpoint is the same)")


def _pads(op, in_shape, kernel, strides, dilations) -> tuple[int, int, int, int]:
    padding = _attr(op, "padding")
    if padding == "VALID":
        return (0, 0, 0, 0)
    if padding == "SAME":
        if in_shape[1] is None or in_shape[2] is None:
            raise CkptkitError(f"{op.name}: input height/width unknown, so SAME padding cannot be made explicit: "
                               "give --input-shape H,W,C")
        t, b = same_pads(in_shape[1], kernel[0], strides[0], dilations[0])
        l, r = same_pads(in_shape[2], kernel[1], strides[1], dilations[1])
        return (t, b, l, r)
    if padding == "EXPLICIT":
        e = list(_attr(op, "explicit_paddings"))
        return (e[2], e[3], e[4], e[5])
    raise UnsupportedOpError(f"{op.name}: padding {padding} is not supported")


def _weights(w: Walker, tensor, op) -> tuple[np.ndarray, Optional[str]]:
    value = w.const(tensor)
    if value is None:
        raise UnsupportedOpError(f"{op.type} {op.name}: its weights are computed from the input; ckptkit needs "
                                 "constant or variable weights")
    return value.astype(np.float32), w.variable_name(tensor)


@register("Conv2D", "DepthwiseConv2dNative")
def conv(w: Walker, t) -> str:
    op = t.op
    _require_nhwc(op)
    x = w.convert(op.inputs[0])
    weights, src = _weights(w, op.inputs[1], op)
    strides = tuple(_attr(op, "strides")[1:3])
    dilations = tuple((_attr(op, "dilations") or [1, 1, 1, 1])[1:3])
    pads = _pads(op, w.shape_of(op.inputs[0]), weights.shape[:2], strides, dilations)
    kind = "Conv" if op.type == "Conv2D" else "DepthwiseConv"
    return w.emit(op.name, kind, [x], w.shape_of(t), attrs=dict(strides=strides, dilations=dilations, pads=pads),
                  params={"weights": weights}, sources={"weights": src} if src else {})


@register("BatchToSpaceND")
def atrous(w: Walker, t) -> str:
    """SpaceToBatchND -> Conv2D/Depthwise (VALID) -> BatchToSpaceND, i.e. tf.nn.convolution's dilated conv."""
    op = t.op
    inner = w.resolve(op.inputs[0])
    if inner.op.type not in ("Conv2D", "DepthwiseConv2dNative") or _attr(inner.op, "padding") != "VALID":
        raise UnsupportedOpError(f"BatchToSpaceND {op.name} is not part of a dilated convolution")
    s2b = w.resolve(inner.op.inputs[0])
    if s2b.op.type != "SpaceToBatchND":
        raise UnsupportedOpError(f"BatchToSpaceND {op.name} is not part of a dilated convolution")
    block = w.const(s2b.op.inputs[1])
    paddings = w.const(s2b.op.inputs[2])
    crops = w.const(op.inputs[2])
    if block is None or paddings is None or crops is None:
        raise UnsupportedOpError(f"dilated convolution {op.name} has non-constant block/paddings")
    if tuple(_attr(inner.op, "strides")[1:3]) != (1, 1):
        raise UnsupportedOpError(f"dilated convolution {op.name} with strides is not supported")
    # A stride-1 VALID conv on the padded input, cropped after, equals one on an input
    # padded by (pad - crop) on each side.
    pads = (int(paddings[0, 0] - crops[0, 0]), int(paddings[0, 1] - crops[0, 1]),
            int(paddings[1, 0] - crops[1, 0]), int(paddings[1, 1] - crops[1, 1]))
    x = w.convert(s2b.op.inputs[0])
    weights, src = _weights(w, inner.op.inputs[1], inner.op)
    kind = "Conv" if inner.op.type == "Conv2D" else "DepthwiseConv"
    return w.emit(inner.op.name, kind, [x], w.shape_of(t),
                  attrs=dict(strides=(1, 1), dilations=(int(block[0]), int(block[1])), pads=pads),
                  params={"weights": weights}, sources={"weights": src} if src else {})


@register("MatMul")
def matmul(w: Walker, t) -> str:
    op = t.op
    if _attr(op, "transpose_a"):
        raise UnsupportedOpError(f"MatMul {op.name} with transpose_a is not supported")
    weights, src = _weights(w, op.inputs[1], op)
    transposed = bool(_attr(op, "transpose_b"))
    if transposed:
        weights = weights.T.copy()
    x = w.convert(op.inputs[0])
    # weights_transposed: the checkpoint stores this layer's weights [out, in] (folding scales axis 0)
    return w.emit(op.name, "Dense", [x], w.shape_of(t), params={"weights": weights},
                  attrs={"weights_transposed": True} if transposed else {},
                  sources={"weights": src} if src else {})


@register("BiasAdd", "BiasAddV1")
def bias_add(w: Walker, t) -> str:
    op = t.op
    _require_nhwc(op)
    bias, src = _weights(w, op.inputs[1], op)
    x = w.convert(op.inputs[0])
    return w.emit(op.name, "Affine", [x], w.shape_of(t), params={"shift": bias}, sources={"shift": src} if src else {})


# ---- BatchNorm -----------------------------------------------------------------------------
_ASSIGN_OPS = {"AssignSubVariableOp", "AssignSub", "AssignVariableOp", "Assign", "AssignAddVariableOp", "AssignAdd"}


def _updated_variable(w: Walker, stat_tensor, leaf: str) -> Optional[str]:
    """The moving variable that the update ops fed by a batch statistic write to.

    Training-mode BN computes batch statistics; the moving ones are only touched by
    update ops downstream of them (AssignMovingAvg). Walk forward to those ops."""
    found: list[str] = []
    frontier, seen = [stat_tensor.op], set()
    for _ in range(12):
        nxt = []
        for op in frontier:
            for out in op.outputs:
                for consumer in out.consumers():
                    if consumer.name in seen:
                        continue
                    seen.add(consumer.name)
                    if consumer.type in _ASSIGN_OPS:
                        name = w.variable_name(consumer.inputs[0])
                        if name:
                            found.append(name)
                    else:
                        nxt.append(consumer)
        frontier = nxt
        preferred = [f for f in found if f.endswith(leaf)]
        if preferred:
            return preferred[0]
    preferred = [f for f in found if "/biased" not in f and "local_step" not in f]
    return preferred[0] if preferred else None


def _statistic(w: Walker, tensor, leaf: str, scope_hint: Optional[str]) -> tuple[Optional[np.ndarray], Optional[str]]:
    """Value and checkpoint name of a moving statistic feeding a BN (or of the one a training BN updates)."""
    name = w.variable_name(tensor)
    if name is None:
        value = w.const(tensor)
        if value is not None and np.asarray(value).size > 0:  # frozen graph: a constant
            return value.astype(np.float32), None
    if name is None and scope_hint and w.values.has(f"{scope_hint}/{leaf}"):
        name = f"{scope_hint}/{leaf}"
    if name is None:
        name = _updated_variable(w, w.resolve(tensor), leaf)
    if name is None and scope_hint:
        name = f"{scope_hint}/{leaf}"
    if name is None:
        return None, None
    value = w.values.get(name) if w.values.has(name) else None
    return (None if value is None else value.astype(np.float32)), name


def _optional_param(w: Walker, tensor, neutral: float) -> tuple[Optional[np.ndarray], Optional[str]]:
    """gamma/beta: a variable, a constant, or absent (a constant of ones/zeros written by scale/center=False)."""
    if tensor is None:
        return None, None
    name = w.variable_name(tensor)
    value = w.const(tensor)
    if value is None:
        raise UnsupportedOpError(f"BatchNorm parameter {tensor.name} is computed from the input")
    if name is None and np.all(value == neutral):
        return None, None
    return value.astype(np.float32), name


def _emit_bn(w: Walker, t, x_tensor, scale, offset, mean_t, var_t, eps: float) -> str:
    gamma, gsrc = _optional_param(w, scale, 1.0)
    beta, bsrc = _optional_param(w, offset, 0.0)
    scope = (gsrc or bsrc or "").rpartition("/")[0] or None
    mean, msrc = _statistic(w, mean_t, "moving_mean", scope)
    var, vsrc = _statistic(w, var_t, "moving_variance", scope)
    x = w.convert(x_tensor)
    sources = {k: v for k, v in (("gamma", gsrc), ("beta", bsrc), ("mean", msrc), ("variance", vsrc)) if v}
    # the unit's scope: where gamma/beta live (EMA shadow statistics sit under a long derived name)
    scope = (gsrc or bsrc or msrc or vsrc or t.op.name).rpartition("/")[0] or t.op.name
    return w.emit(scope, "BatchNorm", [x], w.shape_of(t), attrs={"epsilon": float(eps)},
                  params={"gamma": gamma, "beta": beta, "mean": mean, "variance": var}, sources=sources)


@register("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
def fused_bn(w: Walker, t) -> str:
    op = t.op
    if t.value_index != 0:
        raise UnsupportedOpError(f"{op.name}: the output uses BatchNorm statistics output {t.value_index}")
    _require_nhwc(op)
    return _emit_bn(w, t, op.inputs[0], op.inputs[1], op.inputs[2], op.inputs[3], op.inputs[4],
                    _attr(op, "epsilon", 1e-3))


def _match_decomposed_bn(w: Walker, t):
    """tf.nn.batch_normalization: x * inv + (offset - mean * inv) or x * inv + -(mean * inv),
    inv = rsqrt(variance + eps) [* scale]."""
    op = t.op
    if len(op.inputs) != 2:
        return None
    left, right = (w.resolve(i) for i in op.inputs)
    if left.op.type != "Mul" or right.op.type not in ("Sub", "Neg"):
        return None
    x_t, inv_t = left.op.inputs
    inv = w.resolve(inv_t)
    scale = None
    if inv.op.type == "Mul":
        a, b = (w.resolve(i) for i in inv.op.inputs)
        if a.op.type == "Rsqrt":
            inv, scale = a, inv.op.inputs[1]
        elif b.op.type == "Rsqrt":
            inv, scale = b, inv.op.inputs[0]
        else:
            return None
    if inv.op.type != "Rsqrt":
        return None
    add = w.resolve(inv.op.inputs[0])
    if add.op.type not in ("AddV2", "Add"):
        return None
    var_t, eps_t = add.op.inputs
    eps = w.const(eps_t)
    if eps is None or np.size(eps) != 1:
        return None
    if right.op.type == "Sub":
        offset, mean_mul = right.op.inputs
    else:
        offset, mean_mul = None, right.op.inputs[0]
    mean_mul = w.resolve(mean_mul)
    if mean_mul.op.type != "Mul":
        return None
    mean_t = mean_mul.op.inputs[0]
    return x_t, scale, offset, mean_t, var_t, float(np.asarray(eps).reshape(()))


# ---- element-wise ---------------------------------------------------------------------------
def _is_random(w: Walker, tensor, depth: int = 6) -> bool:
    """True when the tensor is a dropout mask: it depends on a random op within a few steps."""
    stack, seen = [(w.resolve(tensor), 0)], set()
    while stack:
        t, d = stack.pop()
        if t.op.name in seen or d > depth:
            continue
        seen.add(t.op.name)
        if t.op.type.startswith("Random") or t.op.type.startswith("StatelessRandom"):
            return True
        stack.extend((w.resolve(i), d + 1) for i in t.op.inputs)
    return False


def _channel_constant(w: Walker, t, value: np.ndarray, what: str) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    channels = w.shape_of(t)[-1]
    if value.size == 1:
        return np.full((channels,), float(value.reshape(())), np.float32)
    if value.shape[-1] == channels and value.size == channels:
        return value.reshape(channels)
    raise UnsupportedOpError(f"{t.op.type} {t.op.name}: {what} of shape {value.shape} is not per-channel")


@register("Add", "AddV2")
def add(w: Walker, t) -> str:
    bn = _match_decomposed_bn(w, t)
    if bn is not None:
        return _emit_bn(w, t, *bn)
    a, b = t.op.inputs
    for x, c in ((a, b), (b, a)):
        value = w.const(c)
        if value is not None:
            shift = _channel_constant(w, t, value, "the added constant")
            return w.emit(t.op.name, "Affine", [w.convert(x)], w.shape_of(t), params={"shift": shift})
    return w.emit(t.op.name, "Add", [w.convert(a), w.convert(b)], w.shape_of(t))


@register("Sub")
def sub(w: Walker, t) -> str:
    a, b = t.op.inputs
    value = w.const(b)
    if value is None:
        raise UnsupportedOpError(f"Sub {t.op.name} of two computed tensors is not supported")
    shift = -_channel_constant(w, t, value, "the subtracted constant")
    return w.emit(t.op.name, "Affine", [w.convert(a)], w.shape_of(t), params={"shift": shift})


@register("Mul", "RealDiv")
def mul(w: Walker, t) -> str:
    a, b = t.op.inputs
    if t.op.type == "Mul":
        # dropout (TF1 form): x / keep * floor(keep + random)
        for x, m in ((a, b), (b, a)):
            if _is_random(w, m) and not _is_random(w, x):
                return w.convert(_strip_dropout_scale(w, x))
    value = w.const(b)
    x = a
    if value is None and t.op.type == "Mul":
        value, x = w.const(a), b
    if value is None:
        raise UnsupportedOpError(f"{t.op.type} {t.op.name} of two computed tensors is not supported")
    scale = _channel_constant(w, t, value, "the constant factor")
    if t.op.type == "RealDiv":
        scale = (1.0 / scale.astype(np.float64)).astype(np.float32)
    return w.emit(t.op.name, "Affine", [w.convert(x)], w.shape_of(t), params={"scale": scale})


def _strip_dropout_scale(w: Walker, tensor):
    """Dropout scales kept units by 1/keep_prob before masking; inference skips both."""
    t = w.resolve(tensor)
    if t.op.type in ("RealDiv", "Mul"):
        a, b = t.op.inputs
        if w.const(b) is not None and w.const(a) is None:
            return a
        if t.op.type == "Mul" and w.const(a) is not None and w.const(b) is None:
            return b
    return tensor


@register("SelectV2", "Select")
def select(w: Walker, t) -> str:
    cond, yes, no = t.op.inputs
    if _is_random(w, cond):  # dropout (TF2 form): where(random >= rate, x * scale, 0)
        return w.convert(_strip_dropout_scale(w, yes))
    raise UnsupportedOpError(f"{t.op.type} {t.op.name} is not a dropout mask; ckptkit cannot convert it")


@register("Relu")
def relu(w: Walker, t) -> str:
    return w.emit(t.op.name, "Relu", [w.convert(t.op.inputs[0])], w.shape_of(t))


@register("Relu6")
def relu6(w: Walker, t) -> str:
    return w.emit(t.op.name, "Relu6", [w.convert(t.op.inputs[0])], w.shape_of(t))


@register("Softmax")
def softmax(w: Walker, t) -> str:
    return w.emit(t.op.name, "Softmax", [w.convert(t.op.inputs[0])], w.shape_of(t))


# ---- pooling, reductions, shape ops ----------------------------------------------------------
@register("MaxPool", "AvgPool")
def pool(w: Walker, t) -> str:
    op = t.op
    _require_nhwc(op)
    kernel = tuple(_attr(op, "ksize")[1:3])
    strides = tuple(_attr(op, "strides")[1:3])
    pads = _pads(op, w.shape_of(op.inputs[0]), kernel, strides, (1, 1))
    kind = "MaxPool" if op.type == "MaxPool" else "AvgPool"
    return w.emit(op.name, kind, [w.convert(op.inputs[0])], w.shape_of(t),
                  attrs=dict(kernel=kernel, strides=strides, pads=pads))


@register("Mean")
def mean(w: Walker, t) -> str:
    op = t.op
    axes = w.const(op.inputs[1])
    rank = len(w.shape_of(op.inputs[0]))
    if axes is None:
        raise UnsupportedOpError(f"Mean {op.name} over computed axes is not supported")
    axes = tuple(sorted(int(a) % rank for a in np.atleast_1d(axes)))
    if axes != (1, 2) or rank != 4:
        raise UnsupportedOpError(f"Mean {op.name} over axes {axes} is not supported (only spatial means)")
    return w.emit(op.name, "Mean", [w.convert(op.inputs[0])], w.shape_of(t),
                  attrs=dict(axes=axes, keepdims=bool(_attr(op, "keep_dims", False))))


@register("ConcatV2", "Concat")
def concat(w: Walker, t) -> str:
    op = t.op
    if op.type == "ConcatV2":
        values, axis_t = list(op.inputs[:-1]), op.inputs[-1]
    else:
        axis_t, values = op.inputs[0], list(op.inputs[1:])
    axis = w.const(axis_t)
    rank = len(w.shape_of(t))
    inputs = [w.convert(v) for v in values]
    return w.emit(op.name, "Concat", inputs, w.shape_of(t), attrs=dict(axis=int(axis) % rank))


@register("Pad", "PadV2", "MirrorPad")
def pad(w: Walker, t) -> str:
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


def _reshape_to_static(w: Walker, t) -> str:
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


register("Reshape", "Squeeze", "ExpandDims")(_reshape_to_static)
