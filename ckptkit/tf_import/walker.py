"""Walk a TensorFlow graph backwards from its output and build the inference-path IR.

Only what the output needs is visited, so optimizer, summary and update ops of a
training graph are never seen. Control flow (v1 Switch/Merge and v2 If) is
resolved to the inference branch. Variables are read from a value source
(the checkpoint, or the constants of a frozen graph) when a handler asks.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Optional

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError, UnsupportedOpError
from ckptkit.run.gateway import check_tensor
from ckptkit.ir import registry
from ckptkit.ir import Graph, Node, UniqueNames
from ckptkit.ir.passes import cleanup
from ckptkit.core.phases import phase

log = logging.getLogger("ckptkit.import")

Handler = Callable[["Walker", object], str]
HANDLERS: dict[str, Handler] = {}

PASS_THROUGH = {"Identity", "StopGradient", "Snapshot", "PreventGradient", "IdentityN", "CheckNumerics",
                "EnsureShape"}
VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}
READ_OPS = {"ReadVariableOp", "Identity", "Enter", "Snapshot"}


def register(*op_types: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in op_types:
            if t in HANDLERS:
                raise RuntimeError(f"handler for {t} registered twice")
            HANDLERS[t] = fn
        return fn

    return deco


class ValueSource:
    """Values of variables by name: a checkpoint, or nothing (frozen graphs hold constants)."""

    def __init__(self, ckpt=None, weights: bool = True):
        self.ckpt = ckpt
        self.weights = weights  # False: zero placeholders of the right shape (topology and attributes only)

    def has(self, name: str) -> bool:
        return self.ckpt is not None and name in self.ckpt

    def get(self, name: str) -> np.ndarray:
        if self.ckpt is None:
            raise CkptkitError(f"variable {name} has no value: give the checkpoint that goes with this graph")
        if name not in self.ckpt:
            raise CkptkitError(f"variable {name} of the graph is not in checkpoint {self.ckpt.prefix}: "
                               "check that graph and checkpoint belong together")
        if not self.weights:  # a read-only zero-stride view: no memory, whatever the shape
            info = self.ckpt.tensors[name]
            dtype = np.float32 if np.dtype(info.dtype).kind == "f" else info.dtype  # layers take float32
            return np.broadcast_to(np.zeros((), dtype), info.shape)
        return self.ckpt.get(name)


def clean_name(name: str) -> str:
    """A readable node name from a TF op/tensor name."""
    name = re.sub(r":0$", "", name)
    return name.replace(":", "_")


class Walker:
    def __init__(self, graph, input_tensor, values: ValueSource):
        self.graph = graph
        self.input = input_tensor
        self.values = values
        self.nodes: list[Node] = []
        self._unique = UniqueNames()
        self._memo: dict[tuple[int, str], str] = {}
        self._alias: dict[tuple[int, str], object] = {}  # function-graph inputs -> outer tensors
        self._func_cache: dict[tuple[int, str, str], object] = {}
        self._library = None
        self._folders: dict[int, object] = {}  # id(tf graph) -> its bounded constant folder

    # ---- naming and emitting -------------------------------------------------------------
    def unique(self, name: str) -> str:
        return self._unique(clean_name(name))

    def emit(self, name: str, op: str, inputs: list[str], shape, **kw) -> str:
        node = Node(self.unique(name), op, inputs, tuple(shape), **kw)
        self.nodes.append(node)
        return node.name

    @staticmethod
    def shape_of(tensor) -> tuple:
        dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
        if dims is None:
            raise CkptkitError(f"tensor {tensor.name} has unknown rank: give --input-shape H,W,C")
        return (None,) + tuple(dims[1:])

    # ---- following tensors ---------------------------------------------------------------
    def _key(self, tensor) -> tuple[int, str]:
        return id(tensor.graph), tensor.name

    def resolve(self, tensor):
        """Follow aliases, pass-through ops and control flow to the tensor that really computes this one."""
        for _ in range(10000):
            key = self._key(tensor)
            if key in self._alias:
                tensor = self._alias[key]
                continue
            op = tensor.op
            if tensor is self.input or self._key(tensor) == self._key(self.input):
                return tensor
            if op.type in PASS_THROUGH and op.inputs:
                tensor = op.inputs[0] if op.type != "IdentityN" else op.inputs[tensor.value_index]
            elif op.type in ("Switch", "RefSwitch"):
                tensor = op.inputs[0]
            elif op.type in ("Merge", "RefMerge"):
                tensor = op.inputs[self._merge_branch(op)]
            elif op.type in ("If", "StatelessIf"):
                tensor = self._if_output(op, tensor.value_index)
            elif op.type == "Cast" and op.inputs[0].dtype.is_floating and tensor.dtype.is_floating:
                tensor = op.inputs[0]
            else:
                return tensor
        raise CkptkitError(f"cannot follow {tensor.name}: the graph loops")

    def _merge_branch(self, op) -> int:
        # tf.cond (v1) merges (false_branch, true_branch); slim conditions on is_training,
        # so the false branch is the inference path.
        pred = self._switch_predicate(op)
        value = self.const(pred) if pred is not None else None
        if value is not None:
            return 1 if bool(value) else 0
        log.debug("%s: taking the inference (false) branch of a cond on %s", op.name, getattr(pred, "name", "?"))
        return 0

    def _switch_predicate(self, merge_op):
        seen, stack = set(), [t.op for t in merge_op.inputs]
        while stack:
            op = stack.pop()
            if op.name in seen or len(seen) > 2000:
                continue
            seen.add(op.name)
            if op.type in ("Switch", "RefSwitch"):
                return op.inputs[1]
            stack.extend(t.op for t in op.inputs)
        return None

    def _if_output(self, op, index: int):
        pred = self.const(op.inputs[0])
        if pred is None:
            log.debug("%s: taking the inference (else) branch of a cond on %s", op.name, op.inputs[0].name)
        branch = "then_branch" if pred is not None and bool(pred) else "else_branch"
        fname = op.get_attr(branch).name
        key = (id(op.graph), op.name, fname)
        if key not in self._func_cache:
            from tensorflow.python.framework.function_def_to_graph import function_def_to_graph

            fdef = self._function_def(fname)
            outer = list(op.inputs[1:])
            shapes = [t.shape for t in outer]
            try:
                fg = function_def_to_graph(fdef, input_shapes=shapes)
            except (RuntimeError, KeyError, ValueError, TypeError) as err:  # a damaged or foreign function
                first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
                raise CkptkitError(f"function {fname} of the graph's tf.cond {op.name} cannot be read ({first}): "
                                   "the graph file is damaged or needs another TensorFlow; re-export it") from None
            for inner, out in zip(fg.inputs, outer):
                self._alias[self._key(inner)] = out
            self._func_cache[key] = fg
        return self._func_cache[key].outputs[index]

    def _function_def(self, name: str):
        if self._library is None:
            self._library = {f.signature.name: f for f in self.graph.as_graph_def().library.function}
        if name not in self._library:
            raise CkptkitError(f"function {name} of a cond is not in the graph's library: re-export the graph")
        return self._library[name]

    # ---- values --------------------------------------------------------------------------
    def variable_name(self, tensor) -> Optional[str]:
        """The checkpoint name of the variable this tensor reads, if it reads one."""
        for _ in range(100):
            tensor = self.resolve(tensor)
            op = tensor.op
            if op.type in VARIABLE_OPS:
                if op.type == "VarHandleOp":
                    shared = op.get_attr("shared_name")
                    shared = shared.decode() if isinstance(shared, bytes) else shared
                    return shared or op.name
                return op.name
            if op.type in READ_OPS and op.inputs:
                tensor = op.inputs[0]
                continue
            return None
        return None

    def const(self, tensor, allow_missing: bool = False) -> Optional[np.ndarray]:
        """The value of a tensor computable without the input (constants and variables), else None."""
        tensor = self.resolve(tensor)
        op = tensor.op
        check_tensor(tensor)  # a Const or Fill declared at tens of GB is refused, never materialised
        if op.type == "Const":
            from tensorflow.python.framework import tensor_util

            return tensor_util.MakeNdarray(op.get_attr("value"))
        var = self.variable_name(tensor)
        if var is not None:
            if allow_missing and not self.values.has(var):
                return None
            return self.values.get(var)
        if op.type in ("Placeholder", "PlaceholderWithDefault") or tensor is self.input:
            return None
        folder = self._folders.get(id(tensor.graph))
        if folder is None:
            from ckptkit.tf_import.const_eval import graph_folder

            folder = self._folders[id(tensor.graph)] = graph_folder(tensor.graph)
        # TensorFlow's constant_value set, every intermediate sized before it is made (a split of a huge fill)
        value = folder.value(tensor.name)
        return None if value is None else np.asarray(value)

    # ---- conversion ----------------------------------------------------------------------
    def convert(self, tensor) -> str:
        """IR node name producing `tensor`, converting its producers first."""
        tensor = self.resolve(tensor)
        key = self._key(tensor)
        if key in self._memo:
            return self._memo[key]
        if self._key(tensor) == self._key(self.input):
            name = self.emit(tensor.op.name, "Input", [], self.shape_of(tensor))
        else:
            op = tensor.op
            handler = HANDLERS.get(op.type)
            if handler is None:
                if op.type == "Placeholder":
                    raise CkptkitError(f"the output depends on placeholder {op.name} other than the input "
                                       f"{self.input.name}: pass --input {op.name} or check --output")
                raise UnsupportedOpError(f"unsupported TensorFlow op {op.type} at node {op.name}: ckptkit cannot "
                                         "convert it; an export can end before it (ckptkit export CKPT --outputs NAME …) or report the op")
            name = handler(self, tensor)
        self._memo[key] = name
        return name

    def run(self, output_tensor, name: str = "model") -> Graph:
        out = self.convert(output_tensor)
        graph = Graph(self.nodes, [n.name for n in self.nodes if n.op == "Input"], [out], name)
        if not graph.inputs:
            raise CkptkitError(f"output {output_tensor.name} does not depend on input {self.input.name}: check --input/--output")
        return graph


    def run_all(self, output_tensors, name: str = "model") -> tuple[Graph, dict[str, str]]:
        """The IR reachable from every output that converts; the others with why they do not."""
        outs, failed = [], {}
        for t in output_tensors:
            try:
                outs.append(self.convert(t))
            except CkptkitError as err:
                failed[t.name] = str(err)
        used = {i for n in self.nodes for i in n.inputs} | set(outs)
        nodes = [n for n in self.nodes if n.name in used or n.op == "Input"]  # drop half-converted dead ends
        return Graph(nodes, [n.name for n in nodes if n.op == "Input"], outs, name), failed


def import_topology(graph, input_tensor, output_tensors, values: ValueSource, name: str = "model"
                    ) -> tuple[Graph, dict[str, str]]:
    """The IR of everything the given outputs compute from the input (for BN discovery): outputs that
    cannot be converted are left out and returned with the reason."""
    registry.load_all()  # each op module registers its import handlers
    tf()
    with phase("import graph to IR"):
        graph_ir, failed = Walker(graph, input_tensor, values).run_all(output_tensors, name)
    if not graph_ir.outputs:
        reasons = "; ".join(f"{k}: {v}" for k, v in failed.items())[:300]
        raise CkptkitError(f"no output of the graph could be imported ({reasons or 'none found'})")
    return cleanup(graph_ir), failed


def import_graph(graph, input_tensor, output_tensor, values: ValueSource, name: str = "model") -> Graph:
    """Build the IR of the inference path from `input_tensor` to `output_tensor` in a tf.Graph."""
    registry.load_all()  # each op module registers its import handlers
    tf()  # make sure TF is imported and quiet
    with phase("import graph to IR"):
        walker = Walker(graph, input_tensor, values)
        ir = cleanup(walker.run(output_tensor, name))
    ir.input_names, ir.output_names = [input_tensor.name], [output_tensor.name]
    return ir
