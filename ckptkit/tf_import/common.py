"""Helpers the TF import handlers of the op modules (`ckptkit/ops/`) share."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ckptkit.core import noise
from ckptkit.core.errors import CkptkitError, UnsupportedOpError
from ckptkit.ir import same_pads
from ckptkit.tf_import.walker import Walker


def attr(op, name, default=None):
    try:
        value = op.get_attr(name)
    except ValueError:
        return default
    return value.decode() if isinstance(value, bytes) else value


def require_nhwc(op) -> None:
    fmt = attr(op, "data_format", "NHWC")
    if fmt not in ("NHWC", "N...C"):
        raise UnsupportedOpError(f"{op.type} {op.name} uses data_format {fmt}: ckptkit imports NHWC graphs; "
                                 "rebuild the graph with data_format='NHWC' (the checkpoint is the same)")


def padding_pads(op, in_shape, kernel, strides, dilations) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the op's SAME/VALID/EXPLICIT padding on an input of `in_shape`."""
    padding = attr(op, "padding")
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
        e = list(attr(op, "explicit_paddings"))
        return (e[2], e[3], e[4], e[5])
    raise UnsupportedOpError(f"{op.name}: padding {padding} is not supported")


def weights(w: Walker, tensor, op) -> tuple[np.ndarray, Optional[str]]:
    """A layer's constant or variable parameter (float32) and the checkpoint variable it came from."""
    value = w.const(tensor)
    if value is None:
        raise UnsupportedOpError(f"{op.type} {op.name}: its weights are computed from the input; ckptkit needs "
                                 "constant or variable weights")
    # float32 values (and topology-only zero views) pass through uncopied
    return np.asarray(value, np.float32), w.variable_name(tensor)


def channel_constant(w: Walker, t, value: np.ndarray, what: str) -> Optional[np.ndarray]:
    """A scalar or per-channel constant as a vector over the last axis; None when it is neither."""
    value = np.asarray(value, dtype=np.float32)
    channels = w.shape_of(t)[-1]
    if value.size == 1:
        return np.full((channels,), float(value.reshape(())), np.float32)
    if value.shape[-1] == channels and value.size == channels:
        return value.reshape(channels)
    return None


def is_random(w: Walker, tensor, depth: int = 6) -> bool:
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


def _how(w: Walker) -> dict:
    return {"resolve": w.resolve, "is_input": lambda t: w.resolve(t) is w.resolve(w.input)}


def is_noise(w: Walker, tensor) -> bool:
    """A dropout mask or additive noise (see ckptkit.core.noise): nothing at inference."""
    return noise.is_noise(tensor, **_how(w))


def is_setting(w: Walker, tensor) -> bool:
    return noise.is_setting(tensor, **_how(w))


def carries_data(w: Walker, tensor) -> bool:
    return noise.provenance(tensor, **_how(w))[0]


def strip_dropout_scale(w: Walker, tensor):
    """Dropout scales kept units by 1/keep_prob (a constant or a keep_prob placeholder) before masking;
    inference skips both."""
    t = w.resolve(tensor)
    if t.op.type in ("RealDiv", "Mul"):
        a, b = t.op.inputs
        if is_setting(w, b) and carries_data(w, a):
            return a
        if t.op.type == "Mul" and is_setting(w, a) and carries_data(w, b):
            return b
    return tensor


def unary(ir_op: str, **attrs):
    """An import handler mapping a one-input TF op onto `ir_op`."""
    def handler(w: Walker, t) -> str:
        return w.emit(t.op.name, ir_op, [w.convert(t.op.inputs[0])], w.shape_of(t), attrs=attrs or None)

    return handler
