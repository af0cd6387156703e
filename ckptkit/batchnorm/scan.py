"""BatchNorm units from a `.meta` without TensorFlow: the fast path of `ckptkit inspect`.

Importing TensorFlow and building the graph take seconds; slim's BatchNorms are one pattern. This scan
parses the MetaGraphDef with protobuf alone and recognises that pattern: a FusedBatchNorm* (in the
graph, or in the branch of a `tf.cond` on `is_training` that inference takes, as the importer does)
whose parameters are variables (or constant ones/zeros for scale/center=False), whose moving
statistics are variables (a training-mode BN: `<scope>/moving_mean|variance` in the checkpoint),
following a conv, depthwise or MatMul layer that feeds nothing else, or an Add, pool or concat.
Everything else (v1 Switch/Merge, decomposed BNs, biased layers, shapes computed at run time,
ops the importer does not know...) declines, and the caller uses the full importer, so an answer
from here is the one the importer gives. tests/test_bn_scan.py holds the two to equality.
"""
from __future__ import annotations

import functools
import re
from typing import Optional

import numpy as np

from ckptkit.batchnorm.units import BNUnit, Layer, find_units, resolve_shared, scope_of, unit_extras
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.ir import registry
from ckptkit.core.proto import message_classes
from ckptkit.tf_import.walker import (  # the importer's
    HANDLERS, PASS_THROUGH as _WALKER_PASS_THROUGH, READ_OPS, VARIABLE_OPS)

PASS_THROUGH = _WALKER_PASS_THROUGH - {"IdentityN"}  # IdentityN passes input k to output k: handled apart
FUSED_BN = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}
FBN_OUTPUTS = ["y", "batch_mean", "batch_variance", "reserve_space_1", "reserve_space_2", "reserve_space_3"]
IF_OPS = {"If", "StatelessIf"}
DECLINE_OPS = {"Switch", "RefSwitch", "Merge", "RefMerge", "Enter", "Exit", "While", "StatelessWhile"}
# what a BN that follows no layer follows, as the importer names it
NOT_A_LAYER = {"Add": "Add", "AddV2": "Add", "MaxPool": "MaxPool", "AvgPool": "AvgPool", "ConcatV2": "Concat"}
# where images enter a training graph: the importer replaces them by its input placeholder
_PIPELINES = {"IteratorGetNext", "IteratorGetNextSync", "QueueDequeueV2", "QueueDequeueManyV2", "QueueDequeueUpToV2"}
_SOURCES = {"Const", "Placeholder", "PlaceholderWithDefault", "SpaceToBatchND"} | VARIABLE_OPS | READ_OPS | \
    PASS_THROUGH | IF_OPS | _PIPELINES
_GRADIENTS = re.compile(r"(^|/)gradients(_\d+)?/")
# DataType -> (numpy dtype, TensorProto field of its values)
_CONST_TYPES = {1: (np.float32, "float_val"), 3: (np.int32, "int_val"), 9: (np.int64, "int64_val"),
                10: (np.bool_, "bool_val")}


class Declined(Exception):
    """The graph is not (only) the pattern this scan knows: use the importer."""


@functools.lru_cache(maxsize=None)
def _meta_graph_class():
    """MetaGraphDef (tensorflow/core/protobuf/meta_graph.proto) down to the NodeDef attrs read here."""
    return message_classes("ckptkit_meta", {
        "MetaGraphDef": [("graph_def", 2, "GraphDef")],
        "GraphDef": [("node", 1, "NodeDef", "repeated"), ("library", 2, "FunctionDefLibrary")],
        "FunctionDefLibrary": [("function", 1, "FunctionDef", "repeated")],
        "FunctionDef": [("signature", 1, "OpDef"), ("node_def", 3, "NodeDef", "repeated"),
                        ("ret", 4, "map<string,string>")],
        "OpDef": [("name", 1, "string"), ("input_arg", 2, "ArgDef", "repeated"),
                  ("output_arg", 3, "ArgDef", "repeated")],
        "ArgDef": [("name", 1, "string")],
        "NodeDef": [("name", 1, "string"), ("op", 2, "string"), ("input", 3, "string", "repeated"),
                    ("attr", 5, "map<string,AttrValue>")],
        "AttrValue": [("list", 1, "ListValue"), ("s", 2, "bytes"), ("i", 3, "int64"), ("f", 4, "float"),
                      ("b", 5, "bool"), ("type", 6, "int32"), ("shape", 7, "TensorShapeProto"),
                      ("tensor", 8, "TensorProto"), ("func", 10, "NameAttrList")],
        "ListValue": [("s", 2, "bytes", "repeated"), ("i", 3, "int64", "repeated")],
        "NameAttrList": [("name", 1, "string")],
        "TensorShapeProto": [("dim", 2, "Dim", "repeated"), ("unknown_rank", 3, "bool")],
        "Dim": [("size", 1, "int64")],
        "TensorProto": [("dtype", 1, "int32"), ("tensor_shape", 2, "TensorShapeProto"),
                        ("tensor_content", 4, "bytes"), ("float_val", 5, "float", "repeated"),
                        ("int_val", 7, "int32", "repeated"), ("int64_val", 10, "int64", "repeated"),
                        ("bool_val", 11, "bool", "repeated")],
    })["MetaGraphDef"]


class _Scope:
    """The nodes of the graph or of one function body, and how a function's arguments map to its caller."""

    def __init__(self, nodes, caller: Optional[tuple["_Scope", object]] = None, fdef=None):
        self.nodes = {n.name: n for n in nodes}
        self.order = {n.name: i for i, n in enumerate(nodes)}
        self.caller = caller  # (scope of the If, the If node) for a branch body
        self.args = [a.name for a in fdef.signature.input_arg] if fdef is not None else []
        self.returns = ([fdef.ret[a.name] for a in fdef.signature.output_arg] if fdef is not None else [])
        self._consumers: Optional[dict] = None

    def parse(self, ref: str) -> tuple[str, int]:
        """(node or argument name, output index) of a data input string."""
        if self.caller is None:
            name, _, index = ref.partition(":")
            return name, int(index or 0)
        parts = ref.split(":")
        if len(parts) == 1:
            return parts[0], 0  # a function argument
        node = self.nodes.get(parts[0])
        if node is None or len(parts) != 3:
            raise Declined(f"unknown input {ref}")
        if node.op in FUSED_BN and parts[1] in FBN_OUTPUTS:
            return parts[0], FBN_OUTPUTS.index(parts[1])
        if parts[1] in ("output", "value", "y", "z"):  # ops with one output argument (a list for IdentityN)
            return parts[0], int(parts[2])
        raise Declined(f"output {ref}")

    def data_inputs(self, node) -> list[tuple[str, int]]:
        return [self.parse(r) for r in node.input if not r.startswith("^")]

    def consumers(self, name: str, index: int) -> list:
        """Nodes outside gradient computations that read output `index` of `name`."""
        if self._consumers is None:
            self._consumers = {}
            for node in self.nodes.values():
                if not _GRADIENTS.search(node.name):
                    for ref in set(self.data_inputs(node)):
                        self._consumers.setdefault(ref, []).append(node)
        return self._consumers.get((name, index), [])


class _Scan:
    def __init__(self, graph_def, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.graph = _Scope(list(graph_def.node))
        self.library = {f.signature.name: f for f in graph_def.library.function}
        self.bodies: dict[str, _Scope] = {}
        self.known: set = set()  # nodes check_known has seen

    # ---- following tensors, as the importer's Walker.resolve does ------------------------------------
    def resolve(self, scope: _Scope, name: str, index: int) -> tuple[_Scope, object, int]:
        for _ in range(10000):
            if scope.caller is not None and name in scope.args:  # a branch argument: the If's input
                outer, if_node = scope.caller
                name, index = outer.data_inputs(if_node)[1 + scope.args.index(name)]
                scope = outer
                continue
            node = scope.nodes.get(name)
            if node is None:
                raise Declined(f"unknown node {name}")
            if node.op in DECLINE_OPS or node.op == "Cast":
                raise Declined(f"{node.op} {node.name}")
            if node.op in PASS_THROUGH or (node.op == "IdentityN"):
                name, index = scope.data_inputs(node)[index if node.op == "IdentityN" else 0]
            elif node.op in IF_OPS:
                body = self.branch(scope, node)
                name, index = body.parse(body.returns[index])
                scope = body
            else:
                return scope, node, index
        raise Declined("the graph loops")

    def branch(self, scope: _Scope, node) -> _Scope:
        """The body of the branch an If takes at inference: its predicate's constant value, else `else`."""
        if scope.caller is not None:
            raise Declined("a cond inside a cond")
        key = node.name
        if key not in self.bodies:
            pred = self.constant(scope, *scope.data_inputs(node)[0])
            which = "then_branch" if pred is not None and bool(pred.reshape(-1)[0]) else "else_branch"
            fdef = self.library.get(node.attr[which].func.name)
            if fdef is None:
                raise Declined(f"function of {node.name} missing")
            self.bodies[key] = _Scope(list(fdef.node_def), (scope, node), fdef)
        return self.bodies[key]

    def variable(self, scope: _Scope, name: str, index: int) -> Optional[str]:
        """The checkpoint name of the variable a tensor reads, as Walker.variable_name finds it."""
        for _ in range(100):
            scope, node, index = self.resolve(scope, name, index)
            if node.op in VARIABLE_OPS:
                shared = node.attr["shared_name"].s.decode() if node.op == "VarHandleOp" else ""
                return shared or node.name
            if node.op in READ_OPS:
                name, index = scope.data_inputs(node)[0]
                continue
            return None
        return None

    def constant(self, scope: _Scope, name: str, index: int) -> Optional[np.ndarray]:
        """The value of a Const (float or bool); None for placeholders; Declined for anything computed."""
        scope, node, _ = self.resolve(scope, name, index)
        if node.op in ("Placeholder", "PlaceholderWithDefault"):
            return None
        if node.op != "Const":
            raise Declined(f"{node.name} is computed")
        t = node.attr["value"].tensor
        shape = [d.size for d in t.tensor_shape.dim]
        if t.dtype not in _CONST_TYPES:
            raise Declined(f"constant {node.name} of dtype {t.dtype}")
        dtype, field = _CONST_TYPES[t.dtype]
        if t.tensor_content:
            return np.frombuffer(t.tensor_content, dtype).reshape(shape)
        values = np.array(list(getattr(t, field)), dtype)
        if values.size <= 1:  # one value fills the shape; none means zeros
            return np.broadcast_to(values if values.size else np.zeros(1, dtype), shape)
        return values.reshape(shape)

    # ---- one BatchNorm --------------------------------------------------------------------------------
    def unit(self, scope: _Scope, bn) -> BNUnit:
        if "epsilon" not in bn.attr or "is_training" not in bn.attr:
            raise Declined(f"{bn.name} has default attrs")
        if bn.attr["data_format"].s not in (b"", b"NHWC"):
            raise Declined(f"{bn.name} is not NHWC")
        x, scale, offset, mean_t, var_t = scope.data_inputs(bn)[:5]
        gamma, beta = self.parameter(scope, scale, 1.0), self.parameter(scope, offset, 0.0)
        parent = (gamma or beta or "").rpartition("/")[0] or None
        mean, var = self.statistic(scope, mean_t, "moving_mean", parent), \
            self.statistic(scope, var_t, "moving_variance", parent)
        names = [n for n in (gamma, beta, mean, var) if n]
        unit_scope = scope_of(names, bn.name)
        held = [n for n in names if n in self.ckpt]
        if not held:
            raise Declined(f"{bn.name}: no variable in the checkpoint gives its channels")
        present = lambda n: n if n in self.ckpt else None  # noqa: E731
        unit = BNUnit(scope=unit_scope, gamma=gamma, beta=beta, moving_mean=present(mean),
                      moving_variance=present(var), channels=int(self.ckpt.tensors[held[0]].shape[-1]),
                      epsilon=float(bn.attr["epsilon"].f), found_by="graph")
        unit.layer, unit.kept_because = self.layer(scope, x, bn, unit.channels)
        unit.extras = unit_extras(self.ckpt, unit.variables)
        return unit

    def parameter(self, scope: _Scope, ref, neutral: float) -> Optional[str]:
        name = self.variable(scope, *ref)
        if name is not None:
            return name
        value = self.constant(scope, *ref)
        if value is None or not np.all(value == neutral):
            raise Declined("a BatchNorm parameter that is neither a variable nor neutral")
        return None

    def statistic(self, scope: _Scope, ref, leaf: str, parent: Optional[str]) -> str:
        name = self.variable(scope, *ref)
        if name is not None:
            return name
        value = self.constant(scope, *ref)
        if value is not None and value.size:
            raise Declined("statistics held as constants")  # a frozen graph
        if parent and f"{parent}/{leaf}" in self.ckpt:
            return f"{parent}/{leaf}"
        raise Declined(f"{leaf} is found through update ops")  # the importer follows AssignMovingAvg

    def layer(self, scope: _Scope, x, bn, channels: int) -> tuple[Optional[Layer], str]:
        """What the BN's input comes from: (the layer to fold into, "") or (None, why not)."""
        lscope, prev, index = self.resolve(scope, *x)
        via = set()  # slim's BN of a fully connected layer: [N, C] -> [-1, 1, 1, C] -> FusedBatchNorm
        if lscope is self.graph and prev.op == "Reshape":
            shape = self.constant(lscope, *lscope.data_inputs(prev)[1])
            inner = self.resolve(lscope, *lscope.data_inputs(prev)[0])
            if shape is None or list(shape.reshape(-1)[1:]) != [1, 1, channels] or inner[1].op != "MatMul":
                raise Declined(f"{bn.name} follows Reshape {prev.name}")
            via.add(prev.name)
            lscope, prev, index = inner
        if lscope is self.graph and prev.op == "BatchToSpaceND":  # an atrous conv as TF1 writes it
            inner = self.resolve(lscope, *lscope.data_inputs(prev)[0])
            if inner[1].op not in ("Conv2D", "DepthwiseConv2dNative"):
                raise Declined(f"{bn.name} follows BatchToSpaceND {prev.name}")
            via.add(prev.name)
            lscope, prev, index = inner
        if lscope is not self.graph or index != 0:
            raise Declined(f"{bn.name} follows a node inside a cond")
        if prev.op in NOT_A_LAYER:
            if prev.op in ("Add", "AddV2") and any(self._is_value(lscope, r) for r in lscope.data_inputs(prev)):
                raise Declined(f"{prev.name} adds a constant")  # the importer makes it an affine
            return None, f"follows {NOT_A_LAYER[prev.op]} {prev.name}, not a conv/depthwise/fully connected layer"
        if prev.op not in ("Conv2D", "DepthwiseConv2dNative", "MatMul"):
            raise Declined(f"{bn.name} follows {prev.op}")
        if prev.attr["data_format"].s not in (b"", b"NHWC") or prev.attr["transpose_a"].b:
            raise Declined(f"{prev.name} layout")
        self._only_consumer(scope, prev, bn, via)
        weights = self.variable(lscope, *lscope.data_inputs(prev)[1])
        if weights is None or weights not in self.ckpt:
            raise Declined(f"weights of {prev.name}")
        kind = {"Conv2D": "conv", "DepthwiseConv2dNative": "depthwise", "MatMul": "dense"}[prev.op]
        if kind == "conv" and weights.endswith("pointwise_weights"):
            kind = "pointwise"
        return Layer(kind, weights, None, bool(prev.attr["transpose_b"].b)), ""

    def _is_value(self, scope: _Scope, ref) -> bool:
        s, node, _ = self.resolve(scope, *ref)
        return node.op == "Const" or self.variable(s, *ref) is not None

    def _only_consumer(self, scope: _Scope, layer, bn, via: set) -> None:
        """The layer's output feeds this BN alone (through pass-through ops, and the cond holding the BN)."""
        holder = scope.caller[1].name if scope.caller is not None else None
        reached, stack, seen = False, [(self.graph, layer.name, 0)], set()
        while stack:
            s, name, index = stack.pop()
            for node in s.consumers(name, index):
                if s is scope and node.name == bn.name:
                    reached = True
                elif (node.op in PASS_THROUGH or node.name in via) and (id(s), node.name) not in seen:
                    seen.add((id(s), node.name))
                    stack.append((s, node.name, 0))
                elif s is self.graph and node.name == holder:  # into the branch, at every argument it feeds
                    refs = s.data_inputs(node)[1:]
                    stack.extend((scope, scope.args[k], 0) for k, ref in enumerate(refs) if ref == (name, index))
                else:
                    raise Declined(f"{layer.name} also feeds {node.name}")
        if not reached:
            raise Declined(f"{bn.name} is not fed by {layer.name}")

    # ---- the whole graph --------------------------------------------------------------------------------
    def candidates(self) -> list[tuple[_Scope, object, int]]:
        """(scope, BN node, position) of every FusedBatchNorm on the inference path, in graph order."""
        found = []
        for node in self.graph.nodes.values():
            if _GRADIENTS.search(node.name):
                continue
            pos = self.graph.order[node.name]
            if node.op in FUSED_BN:
                found.append((self.graph, node, pos))
            elif node.op in IF_OPS:
                body = self.branch(self.graph, node)
                for inner in body.nodes.values():
                    if inner.op in FUSED_BN:
                        found.append((body, inner, pos))
                    elif inner.op in IF_OPS:
                        raise Declined("a cond inside a cond")
            elif node.op in DECLINE_OPS:
                raise Declined(f"{node.op} {node.name}")
        return found

    def check_known(self, scope: _Scope, bn) -> None:
        """Everything the BN's input is computed from is an op the importer converts."""
        registry.load_all()  # each op module registers its handlers (imported once)
        stack, seen = [(scope, *scope.data_inputs(bn)[0])], self.known
        while stack:
            s, name, index = stack.pop()
            s, node, index = self.resolve(s, name, index)
            if (id(s), node.name) in seen:
                continue
            seen.add((id(s), node.name))
            if node.op not in HANDLERS and node.op not in _SOURCES:
                raise Declined(f"{node.op} {node.name} on the way to {bn.name}")
            if node.op in ("Placeholder", "PlaceholderWithDefault", "Const") or node.op in VARIABLE_OPS \
                    or node.op in _PIPELINES:
                continue
            stack.extend((s, *ref) for ref in s.data_inputs(node))


def scan_units(ckpt: Checkpoint, meta_path: str) -> Optional[list[BNUnit]]:
    """The BN units `find_fold_units` finds from the `.meta`, or None when this scan cannot be sure."""
    from ckptkit.core.safe_io import MAX_GRAPH_BYTES, read_bounded

    data = read_bounded(meta_path, "meta graph", MAX_GRAPH_BYTES)  # a FIFO or device is refused, not waited on
    try:
        meta = _meta_graph_class()()
        meta.ParseFromString(data)
        scan = _Scan(meta.graph_def, ckpt)
        units, position = [], {}
        for scope, bn, pos in scan.candidates():
            scan.check_known(scope, bn)
            unit = scan.unit(scope, bn)
            units.append(unit)
            position.setdefault(unit.scope, pos)
    except Declined:
        return None
    except Exception:  # noqa: BLE001  a damaged or unexpected file: the importer reports it properly
        return None
    if not units:
        return None
    seen = {v for u in units for v in u.variables}
    if any(not (set(u.variables) & seen) for u in find_units(ckpt)):
        return None  # units off the graph's paths: the importer decides what they are
    return resolve_shared(units, position)
