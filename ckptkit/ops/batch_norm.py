"""BatchNorm: inference-mode batch normalisation over the last axis with moving statistics.

Imported from FusedBatchNorm(V2/V3) and from tf.nn.batch_normalization's decomposed form
(x*inv + (beta - mean*inv), inv = rsqrt(var + eps) [* gamma]), in training or inference graphs:
a training graph's batch statistics are replaced by the moving variables its update ops write.
Params gamma/beta/mean/variance (any may be absent), attrs epsilon; `sources` names each variable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit.core.errors import UnsupportedOpError
from ckptkit.core.bn_formula import gamma_beta, node_affine
from ckptkit.tf_import import common as C
from ckptkit.tf_import.walker import Walker, register
from ckptkit.ir.registry import define

_ASSIGN_OPS = {"AssignSubVariableOp", "AssignSub", "AssignVariableOp", "Assign", "AssignAddVariableOp", "AssignAdd"}


@dataclass
class BatchNormAttrs:
    epsilon: float = 1e-3


BATCH_NORM = define("BatchNorm", BatchNormAttrs, run=lambda ctx, node, xs, p: ctx.bn_hook(node, xs[0]),
                    doc="inference batch normalisation (moving statistics)")


# ---- TensorFlow import -----------------------------------------------------------------------
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


def emit_bn(w: Walker, t, x_tensor, scale, offset, mean_t, var_t, eps: float) -> str:
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
def import_fused_bn(w: Walker, t) -> str:
    op = t.op
    if t.value_index != 0:
        raise UnsupportedOpError(f"{op.name}: the output uses BatchNorm statistics output {t.value_index}")
    C.require_nhwc(op)
    return emit_bn(w, t, op.inputs[0], op.inputs[1], op.inputs[2], op.inputs[3], op.inputs[4],
                   C.attr(op, "epsilon", 1e-3))


def match_decomposed_bn(w: Walker, t):
    """tf.nn.batch_normalization: x * inv + (offset - mean * inv) or x * inv + -(mean * inv),
    inv = rsqrt(variance + eps) [* scale]. The pieces for `emit_bn`, or None."""
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


# ---- writers ---------------------------------------------------------------------------------
@BATCH_NORM.writer("onnx")
def to_onnx(b, node, xs):
    n, p = node.name, node.params
    gamma, beta = gamma_beta(node)
    inputs = [xs[0]] + [b.const(f"{n}/{k}", v.astype(np.float32)) for k, v in
                        (("gamma", gamma), ("beta", beta), ("moving_mean", p["mean"]),
                         ("moving_variance", p["variance"]))]
    return b.op("BatchNormalization", inputs, n, epsilon=float(node.attrs.epsilon))


@BATCH_NORM.writer("keras")
def to_keras(k, node, xs):
    p = node.params
    layer = k.L.BatchNormalization(axis=-1, epsilon=float(node.attrs.epsilon), center=p.get("beta") is not None,
                                   scale=p.get("gamma") is not None, name=k.name(node))
    return k.add(layer, xs[0], [v for v in (p.get("gamma"), p.get("beta"), p["mean"], p["variance"]) if v is not None])


@BATCH_NORM.writer("caffe")
def to_caffe(c, node, bottoms):
    p = node.params
    scale, shift = node_affine(node)  # refuses missing/invalid statistics
    if not c.batchnorm_layers:  # --bn fold, nothing to fold into: x*s + t per channel
        return c.channel_affine(node.name, bottoms[0], scale.astype(np.float32), shift.astype(np.float32),
                                len(node.shape))
    param = c.pb.BatchNormParameter(use_global_stats=True, eps=float(node.attrs.epsilon))
    # Caffe's BatchNorm blobs: mean * f, variance * f, f  (f = 1); gamma/beta go to a Scale layer
    bn = c.layer(node.name, "BatchNorm", bottoms, [p["mean"], p["variance"], np.ones(1, np.float32)],
                 batch_norm_param=param)
    gamma, _ = gamma_beta(node)
    return c.scale(node.name + "/scale", bn, gamma, p.get("beta"))
