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

import collections
import logging
from dataclasses import dataclass, field
from typing import Optional

from ckptkit.core import noise

log = logging.getLogger("ckptkit")

_ASSIGN_OPS = {"AssignSubVariableOp", "AssignSub", "AssignVariableOp", "Assign", "AssignAddVariableOp", "AssignAdd"}
_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}
_FUSED_BN = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}
# a statistic leaving a tf.cond/while is chosen by the training flag, which the reference feeds False
_CONTROL_FLOW = {"If", "StatelessIf", "Case", "StatelessCase", "Merge", "Switch", "While", "StatelessWhile", "Enter",
                 "Exit", "PartitionedCall", "StatefulPartitionedCall"}


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


class StatisticUpdates:
    """Which moving variable each batch statistic of the output's BatchNorms is averaged into, found from the
    updates themselves, never from names or proximity alone.

    Walks back from every assignment's value, through ops the output does not need, to the tensors where it
    meets the inference path: those are the statistics it averages. A zero-debiased update reads an auxiliary
    variable (`biased`) right after assigning it (a resource read with the assignment as control input, or a
    ref assignment's own result): the walk goes on through that assignment's value, and the auxiliary variable
    is never a candidate. A variable is the answer for a statistic only if it is not trainable, has the
    statistic's shape and is the single nearest such assignment: two variables at the same distance are no
    answer rather than a guess."""

    def __init__(self, graph, needed: set, depth: int = 10):
        trainable = {v.op.name for v in graph.get_collection("trainable_variables")}
        self.nearest: dict[str, list[tuple[int, object]]] = {}  # statistic tensor name -> [(distance, var op)]
        auxiliary: set[str] = set()
        walks = []
        for op in graph.get_operations():
            if op.type not in _ASSIGN_OPS or op.name in needed:
                continue
            var = _variable_op(op.inputs[0])
            if var is None or var.name in trainable:
                continue
            found, through = _walk_back(op, needed, depth)
            auxiliary |= through
            walks.append((var, found))
        for var, found in walks:
            if var.name in auxiliary:
                continue
            shape = _variable_shape(var)
            for tensor, distance in found.items():
                if shape is not None and _known_shape(tensor) == shape:
                    self.nearest.setdefault(tensor.name, []).append((distance, var))

    def variable(self, statistic) -> Optional[object]:
        """The moving variable `statistic` (a tensor) is averaged into, or None when no single one is."""
        candidates = self.nearest.get(statistic.name, [])
        if not candidates:
            return None
        best = min(d for d, _ in candidates)
        at_best = {v.name: v for d, v in candidates if d == best}
        return next(iter(at_best.values())) if len(at_best) == 1 else None


def _walk_back(assign, needed: set, depth: int):
    """Tensors on the inference path that `assign`'s value derives from (with their distance), and the
    auxiliary variables whose assignment the value reads back."""
    found, through, seen = {}, set(), set()
    frontier = collections.deque([(assign.inputs[1], 1)])  # breadth first: the first visit is the nearest
    while frontier:
        tensor, d = frontier.popleft()
        op = tensor.op
        if op.name in needed:
            if d < found.get(tensor, depth + 1):
                found[tensor] = d
            continue
        if d > depth or op.name in seen or op.type in _VARIABLE_OPS:
            continue
        seen.add(op.name)
        steps = [op] if op.type in _ASSIGN_OPS else []  # a ref assignment's result
        if op.type == "ReadVariableOp":  # a read right after an assignment of its own variable
            var = _variable_op(op.inputs[0])
            steps = [c for c in op.control_inputs if c.type in _ASSIGN_OPS and _variable_op(c.inputs[0]) is var]
        if steps:
            for step in steps:
                var = _variable_op(step.inputs[0])
                if var is not None:
                    through.add(var.name)
                frontier.append((step.inputs[1], d + 1))
            continue
        frontier.extend((t, d + 1) for t in op.inputs)
    return found, through


def _variable_shape(var) -> Optional[tuple]:
    from tensorflow.python.framework import tensor_shape

    if "shape" not in var.node_def.attr:
        return None
    dims = tensor_shape.TensorShape(var.node_def.attr["shape"].shape).as_list()
    return tuple(dims) if dims is not None and None not in dims else None


def _known_shape(tensor) -> Optional[tuple]:
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
    return tuple(dims) if dims is not None and None not in dims else None


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
    statistics = StatisticUpdates(graph, needed)
    for name in sorted(needed):
        op = graph.get_operation_by_name(name)
        ordered_after = {c.name for c in op.control_inputs if _is_update(c)}
        if ordered_after:
            rw.drop_control[name] = ordered_after
        if op.type in ("Placeholder", "PlaceholderWithDefault") and op.outputs[0].dtype.is_bool \
                and op.outputs[0].shape.rank == 0:
            rw.feed_false.append(op.outputs[0].name)
        elif op.type in _FUSED_BN and op.get_attr("is_training"):
            mean_var, var_var = statistics.variable(op.outputs[1]), statistics.variable(op.outputs[2])
            if mean_var is None or var_var is None or mean_var is var_var:
                _left_in_training(op.name, "FusedBatchNorm", mean_var, var_var)
                continue
            rw.fused[op.name] = (mean_var.name, var_var.name)
            rw.read_resource |= {v.name for v in (mean_var, var_var) if v.type == "VarHandleOp"}
        elif op.type not in _CONTROL_FLOW and statistics.nearest.keys() & {t.name for t in op.outputs}:
            for stat in op.outputs:  # a batch statistic an update averages (tf.nn.moments, by hand, ...)
                var = statistics.variable(stat)
                if var is None:
                    _left_in_training(stat.name, "batch statistic", None, None)
                    continue
                new = var.name + ("/ckptkit_read" if var.type == "VarHandleOp" else "")
                if var.type == "VarHandleOp":
                    rw.read_resource.add(var.name)
                for c in stat.consumers():
                    if c.name in needed:
                        rw.rewire.setdefault(c.name, {})[_ref(stat)] = new
        else:
            kept = _dropout_input(op) if op.type in ("Mul", "Add", "AddV2", "SelectV2", "Select") else None
            if kept is not None:
                for c in op.outputs[0].consumers():
                    if c.name in needed:
                        rw.rewire.setdefault(c.name, {})[_ref(op.outputs[0])] = _ref(kept)
    return rw


def _left_in_training(name: str, what: str, mean_var, var_var) -> None:
    """Say why a BatchNorm keeps its batch statistics in the reference (verification will then not match)."""
    found = ", ".join(f"{role} -> {v.name}" for role, v in (("mean", mean_var), ("variance", var_var)) if v)
    log.warning("verification reference: %s %s: no single moving variable is updated from it%s; it stays in "
                "training mode, so an export will not match this reference", what, name,
                f" ({found})" if found else "")


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
