"""A training graph's own inference form, run by TensorFlow: the independent verification reference.

A training `.meta` computes training mode. To check an export against TensorFlow without going
through our importer, the user's GraphDef itself is run, changed only where training differs from
inference:
  * every boolean placeholder the output depends on (`is_training`, `phase_train`, ...) is fed False;
  * a FusedBatchNorm* in training mode gets `is_training=False` and its moving mean/variance
    as inputs 3 and 4 (the variables its update ops assign to);
  * the batch statistics of a decomposed BN (`tf.nn.moments` -> `tf.nn.batch_normalization`) are
    replaced, where the normalisation reads them, by the moving variables they update;
  * a dropout mask or additive noise (a random op within a few steps) is bypassed: the layer's input goes
    through; a random op that survives is caught by the gateway's determinism guard (two runs must agree);
  * control dependencies on update ops (assignments, or groups of them) are dropped from the ops the
    output needs: cond v2 lifts a branch's `control_dependencies([ema.apply(...)])` onto the If op,
    which would update the moving averages before inference reads them.
Convolutions, padding, pooling and everything else run as TensorFlow's own kernels; a BN that is
none of the above stays in training mode, so verification fails rather than passing wrongly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from . import noise

log = logging.getLogger("ckptkit")

_ASSIGN_OPS = {"AssignSubVariableOp", "AssignSub", "AssignVariableOp", "Assign", "AssignAddVariableOp", "AssignAdd"}
_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}
_FUSED_BN = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}


@dataclass
class Rewrite:
    """What changes in the GraphDef: by node name."""

    feed_false: list[str] = field(default_factory=list)  # boolean placeholders (tensor names)
    fused: dict[str, tuple[str, str]] = field(default_factory=dict)  # BN op -> (mean var op, variance var op)
    rewire: dict[str, dict[str, str]] = field(default_factory=dict)  # consumer op -> {old input: new input}
    read_resource: set[str] = field(default_factory=set)  # VarHandleOps that need a ReadVariableOp
    drop_control: dict[str, set[str]] = field(default_factory=dict)  # op -> control inputs on update ops


def ancestors(tensor, control: bool = True) -> set:
    """Names of the ops `tensor` depends on (by data, and by control unless `control=False`)."""
    seen, stack = set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        if control:
            stack.extend(op.control_inputs)
    return seen


def _variable_op(tensor) -> Optional[object]:
    """The variable op a tensor reads (through Identity/ReadVariableOp/Enter), if any."""
    for _ in range(20):
        op = tensor.op
        if op.type in _VARIABLE_OPS:
            return op
        if op.type in ("Identity", "ReadVariableOp", "Enter", "Snapshot") and op.inputs:
            tensor = op.inputs[0]
            continue
        return None
    return None


def _assigned_variable(tensor, want: Optional[str] = None, depth: int = 12):
    """The moving variable an update op fed by `tensor` writes to (forward walk to an Assign*)."""
    found, frontier, seen = [], [tensor.op], set()
    for _ in range(depth):
        nxt = []
        for op in frontier:
            for out in op.outputs:
                for c in out.consumers():
                    if c.name in seen:
                        continue
                    seen.add(c.name)
                    if c.type in _ASSIGN_OPS:
                        var = _variable_op(c.inputs[0])
                        if var is not None:
                            found.append(var)
                    else:
                        nxt.append(c)
        frontier = nxt
    plain = [v for v in found if "/biased" not in v.name and "local_step" not in v.name]
    if want:
        preferred = [v for v in plain if want in v.name.rsplit("/", 1)[-1]]
        if preferred:
            return preferred[0]
    return plain[0] if plain else None


def _reaches_assign(op, depth: int = 12) -> bool:
    frontier, seen = [op], set()
    for _ in range(depth):
        nxt = []
        for o in frontier:
            if o.type in _ASSIGN_OPS:
                return True
            for out in o.outputs:
                for c in out.consumers():
                    if c.name not in seen:
                        seen.add(c.name)
                        nxt.append(c)
        frontier = nxt
    return False


def _is_update(op, depth: int = 4) -> bool:
    """An op that changes state: an assignment, or a NoOp/Identity grouping assignments."""
    if op.type in _ASSIGN_OPS:
        return True
    if depth == 0 or op.type not in ("NoOp", "Identity"):
        return False
    return any(_is_update(c, depth - 1) for c in list(op.control_inputs) + [t.op for t in op.inputs])


def _is_random(tensor, depth: int = 6) -> bool:
    stack, seen = [(tensor.op, 0)], set()
    while stack:
        op, d = stack.pop()
        if op.name in seen or d > depth:
            continue
        seen.add(op.name)
        if op.type.startswith(("Random", "StatelessRandom")):
            return True
        stack.extend((t.op, d + 1) for t in op.inputs)
    return False


def _ref(tensor) -> str:
    """GraphDef input spelling of a tensor."""
    return tensor.op.name if tensor.value_index == 0 else tensor.name


def _dropout_input(op):
    """The tensor a dropout or noise op would pass through at inference (None if `op` is neither): where a
    random value meets the data path (a Select on a random condition, a Mul by a random mask, an Add of
    random noise), the data input goes through."""
    if op.type in ("SelectV2", "Select") and noise.is_noise(op.inputs[0]):
        # keep the branch that carries data: `where(keep, x / keep_prob, 0)` or `where(drop, 0, x)`
        yes, no = op.inputs[1], op.inputs[2]
        kept = yes if noise.provenance(yes)[0] or not noise.provenance(no)[0] else no
    elif op.type in ("Mul", "Add", "AddV2"):
        a, b = op.inputs
        if noise.is_noise(b) and not _is_random(a):
            kept = a
        elif noise.is_noise(a) and not _is_random(b):
            kept = b
        else:
            return None
        if op.type != "Mul":
            return kept  # additive noise (GaussianNoise): nothing to unscale
    else:
        return None
    # dropout scales the kept units by 1/keep before masking: inference skips both
    if kept.op.type in ("RealDiv", "Mul"):  # by a constant or a keep_prob setting
        a, b = kept.op.inputs
        if noise.is_setting(b) and noise.provenance(a)[0]:
            return a
        if kept.op.type == "Mul" and noise.is_setting(a) and noise.provenance(b)[0]:
            return b
    return kept


def plan(graph, output) -> Rewrite:
    """What to change in `graph` (a tf.Graph of the training GraphDef) so `output` computes inference."""
    needed = ancestors(output, control=False)
    rw = Rewrite()
    for name in sorted(needed):
        op = graph.get_operation_by_name(name)
        updates = {c.name for c in op.control_inputs if _is_update(c)}
        if updates:
            rw.drop_control[name] = updates
        if op.type in ("Placeholder", "PlaceholderWithDefault") and op.outputs[0].dtype.is_bool \
                and op.outputs[0].shape.rank == 0:
            rw.feed_false.append(op.outputs[0].name)
        elif op.type in _FUSED_BN and op.get_attr("is_training"):
            mean_var = _assigned_variable(op.outputs[1], "mean")
            var_var = _assigned_variable(op.outputs[2], "var")
            if mean_var is None or var_var is None:
                log.debug("%s: training-mode BatchNorm without update ops: left as it is", op.name)
                continue
            rw.fused[op.name] = (mean_var.name, var_var.name)
            rw.read_resource |= {v.name for v in (mean_var, var_var) if v.type == "VarHandleOp"}
        elif _is_batch_statistic(op):
            var = _assigned_variable(op.outputs[0], "var" if _is_variance(op) else "mean")
            if var is None:
                continue
            new = var.name + ("/ckptkit_read" if var.type == "VarHandleOp" else "")
            if var.type == "VarHandleOp":
                rw.read_resource.add(var.name)
            for c in op.outputs[0].consumers():
                if c.name in needed and not _reaches_assign(c):
                    rw.rewire.setdefault(c.name, {})[_ref(op.outputs[0])] = new
        else:
            kept = _dropout_input(op) if op.type in ("Mul", "Add", "AddV2", "SelectV2", "Select") else None
            if kept is not None:
                for c in op.outputs[0].consumers():
                    if c.name in needed:
                        rw.rewire.setdefault(c.name, {})[_ref(op.outputs[0])] = _ref(kept)
    return rw


def _is_batch_statistic(op) -> bool:
    """tf.nn.moments' mean or variance (after its Squeeze, or the keep_dims Mean itself)."""
    if "moments" not in op.name:
        return False
    if op.type == "Squeeze":
        return op.inputs[0].op.type == "Mean"
    return op.type == "Mean" and all(c.type != "Squeeze" for c in op.outputs[0].consumers()) \
        and op.name.rsplit("/", 1)[-1] in ("mean", "variance")


def _is_variance(op) -> bool:
    src = op.inputs[0].op if op.type == "Squeeze" else op
    return src.name.rsplit("/", 1)[-1].startswith("variance")


def apply(graph_def, rw: Rewrite) -> None:
    """Change `graph_def` in place as planned."""
    from tensorflow.core.framework import attr_value_pb2, node_def_pb2, types_pb2

    for var in sorted(rw.read_resource):
        node = node_def_pb2.NodeDef(name=var + "/ckptkit_read", op="ReadVariableOp", input=[var])
        node.attr["dtype"].CopyFrom(attr_value_pb2.AttrValue(type=types_pb2.DT_FLOAT))
        graph_def.node.append(node)
    read = lambda v: v + "/ckptkit_read" if v in rw.read_resource else v  # noqa: E731
    for node in graph_def.node:
        if node.name in rw.fused:
            mean, var = rw.fused[node.name]
            node.attr["is_training"].b = False
            node.input[3] = read(mean)
            node.input[4] = read(var)
        if node.name in rw.drop_control:
            kept = [i for i in node.input if i[1:] not in rw.drop_control[node.name] or not i.startswith("^")]
            del node.input[:]
            node.input.extend(kept)
        if node.name in rw.rewire:
            mapping = rw.rewire[node.name]
            for i, inp in enumerate(node.input):
                if inp in mapping:
                    node.input[i] = mapping[inp]
