"""Constant folding whose every intermediate is sized before it is materialised.

Two uses, one evaluator over NodeDefs:
* `Folder.value` -- what the importer asks when it needs a constant (axes, paddings, a BN's epsilon): the ops
  TensorFlow's own `tensor_util.constant_value` folds (Const, Shape, Size, Rank, Range, Cast, Concat(V2),
  Pack, Unpack, Split, Fill, Equal, NotEqual and the identities), and nothing more, so the importer decides as
  before; but each output's size is computed from its inputs first and refused over the bound, where
  TensorFlow's folds `split(split(fill([2**28, 8])))` into 8 GiB before anything can say no.
* `check_graph_def` -- run on every GraphDef before TensorFlow imports it, because TensorFlow's import-time
  shape inference evaluates constant sub-graphs (a `Reshape` whose shape is `Range(0, N)`) with no bound. It
  sizes every constant-derived node of the graph and of its functions, with the ops above plus those that
  make outputs bigger than their inputs (Tile, BroadcastTo, broadcasting arithmetic, Pad, Reshape,
  ExpandDims, MatMul, OneHot, ScatterNd, random and Empty ops given a shape), and refuses the graph when one
  exceeds the bound: 4 GiB per tensor (`CKPTKIT_MAX_TENSOR_BYTES`), 64 MiB for integer tensors (shapes and
  indices; `CKPTKIT_MAX_FOLD_BYTES`). A constant-derived op outside these sets has no size here; its inputs
  are bounded, and its output is what TensorFlow computes from them.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from ckptkit.core.errors import CkptkitError
from ckptkit.core.safe_io import MAX_TENSOR_BYTES, printable

MAX_INT_FOLD_BYTES = int(float(os.environ.get("CKPTKIT_MAX_FOLD_BYTES", 64 * 2**20)))
VALUE_ELEMENTS = 4096  # the check mode keeps values only this small (what shapes and sizes need)

IDENTITIES = {"Identity", "StopGradient", "CheckNumericsV2", "DebugIdentityV2", "Snapshot", "PreventGradient"}
FOLDED = IDENTITIES | {"Const", "Shape", "Size", "Rank", "Range", "Cast", "Concat", "ConcatV2", "Pack", "Unpack",
                       "Split", "Fill", "Equal", "NotEqual"}
_BINARY = {"Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply, "RealDiv": np.true_divide,
           "FloorDiv": np.floor_divide, "FloorMod": np.mod, "Maximum": np.maximum, "Minimum": np.minimum,
           "Equal": np.equal, "NotEqual": np.not_equal, "Less": np.less, "Greater": np.greater,
           "LessEqual": np.less_equal, "GreaterEqual": np.greater_equal, "LogicalAnd": np.logical_and,
           "LogicalOr": np.logical_or, "Pow": np.power, "SquaredDifference": None, "BiasAdd": None}
_SHAPED = {"RandomUniform": 0, "RandomStandardNormal": 0, "TruncatedNormal": 0, "RandomUniformInt": 0,
           "StatelessRandomUniform": 0, "StatelessRandomNormal": 0, "StatelessTruncatedNormal": 0,
           "StatelessRandomUniformV2": 0, "StatelessRandomNormalV2": 0, "StatelessTruncatedNormalV2": 0,
           "StatelessRandomUniformInt": 0, "StatelessRandomUniformIntV2": 0, "Empty": 0, "BroadcastTo": 1,
           "ScatterNd": 2}
CHECKED = FOLDED | set(_BINARY) | set(_SHAPED) | {"Tile", "Reshape", "ExpandDims", "Pad", "PadV2", "MirrorPad",
                                                   "MatMul", "OneHot", "ZerosLike", "OnesLike"}


class _Val:
    """What folding knows of one tensor: its shape (None: unknown) and dtype, and its value when kept."""
    __slots__ = ("shape", "dtype", "value")

    def __init__(self, shape, dtype, value=None):
        self.shape = None if shape is None else tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.value = value


UNKNOWN = _Val(None, None)


def _elements(shape) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 0)
    return n


def _np_dtype(enum: int):
    from tensorflow.python.framework import dtypes

    try:
        dt = dtypes.as_dtype(enum)
        return np.dtype(dt.as_numpy_dtype) if dt.as_numpy_dtype is not object else np.dtype(np.uint8)
    except (TypeError, ValueError, KeyError):  # resource, variant: no numpy type
        return None


def _split_ref(ref: str) -> tuple[str, int]:
    """'node' / 'node:1' (a graph) / 'node:output:1' (a function body) -> (node, flat output index)."""
    parts = ref.split(":")
    if len(parts) == 3:
        return parts[0], int(parts[2])  # the evaluator's multi-output ops have one output list
    return parts[0], int(parts[1]) if len(parts) == 2 else 0


class Folder:
    """Bounded folding over a map of NodeDefs (a graph's or one function body's).

    `static_shape(node, index)`: a known shape for a tensor that is not constant (None when unknown).
    `extended`: also size the growing ops (`check_graph_def`); otherwise only TensorFlow's `constant_value` set.
    """

    def __init__(self, nodes: Callable[[str], Optional[object]], where: str = "the graph", extended: bool = False,
                 static_shape: Callable[[str, int], Optional[tuple]] = lambda n, i: None):
        self.nodes, self.where, self.extended, self.static_shape = nodes, where, extended, static_shape
        self.memo: dict[tuple[str, int], _Val] = {}
        self.spent = 0  # bytes materialised by one value() call

    # ---- the bound -------------------------------------------------------------------------------------------
    def _bound(self, node, shape, dtype) -> None:
        if shape is None or dtype is None:
            return
        nbytes = _elements(shape) * dtype.itemsize
        limit = MAX_INT_FOLD_BYTES if dtype.kind in "iub" and node.op != "Const" else MAX_TENSOR_BYTES
        if nbytes > limit:
            raise CkptkitError(f"op {printable(node.name)} ({node.op}) in {self.where} would make a {dtype.name} tensor "
                               f"of shape {[int(d) for d in shape]} ({nbytes / 2**20:.0f} MiB) from constants, over ckptkit's bound "
                               f"of {limit / 2**20:.0f} MiB: the graph is damaged or hostile (CKPTKIT_MAX_TENSOR_BYTES, "
                               "CKPTKIT_MAX_FOLD_BYTES raise the bounds)")

    def _keep(self, shape) -> bool:
        return shape is not None and (not self.extended or _elements(shape) <= VALUE_ELEMENTS)

    # ---- evaluation ------------------------------------------------------------------------------------------
    def value(self, ref: str) -> Optional[np.ndarray]:
        """The folded value of a tensor, or None when it is not a constant this folder folds."""
        self.spent = 0
        self.memo.clear()  # values live for one question: a big constant is not kept beyond it
        try:
            return self.get(ref).value
        except RecursionError:
            raise CkptkitError(f"the constants feeding {printable(ref)} in {self.where} are nested too deeply to "
                               "fold: the graph is damaged or hostile") from None

    def get(self, ref: str) -> _Val:
        name, index = _split_ref(ref.lstrip("^"))
        key = (name, index)
        if key not in self.memo:
            self.memo[key] = UNKNOWN  # a cycle (a loop's back edge) folds to nothing
            node = self.nodes(name)
            got = UNKNOWN
            if node is not None and (node.op in FOLDED or self.extended and node.op in CHECKED):
                got = self._fold(node, index)
            self.memo[key] = got
        return self.memo[key]

    def _data_inputs(self, node) -> list[str]:
        return [i for i in node.input if not i.startswith("^")]

    def _fold(self, node, index: int) -> _Val:
        op, ins = node.op, self._data_inputs(node)
        attr = node.attr
        if op == "Const":
            t = attr["value"].tensor
            dtype = _np_dtype(t.dtype)
            shape = [d.size for d in t.tensor_shape.dim]
            self._bound(node, shape, dtype)
            if not self._keep(shape):
                return _Val(shape, dtype)
            from tensorflow.python.framework import tensor_util

            try:
                return self._made(node, tensor_util.MakeNdarray(t))
            except (TypeError, ValueError):  # a dtype numpy does not hold (resource, variant)
                return _Val(shape, dtype)
        if op in IDENTITIES:
            return self.get(ins[0])
        if op in ("Shape", "Size", "Rank"):
            src = self.get(ins[0])
            shape = src.shape if src.shape is not None else self.static_shape(*_split_ref(ins[0]))
            if shape is None:
                return UNKNOWN
            out = {"Shape": np.array(shape), "Size": np.array(_elements(shape)), "Rank": np.array(len(shape))}[op]
            dtype = _np_dtype(attr["out_type"].type) if "out_type" in attr else np.dtype(np.int32)
            return self._made(node, out.astype(dtype or np.int32))
        vals = [self.get(i) for i in ins]
        if op == "Cast":
            src, dtype = vals[0], _np_dtype(attr["DstT"].type)
            return self._shaped(node, src.shape, dtype, lambda: src.value.astype(dtype), [src])
        if op == "Range":
            start, limit, delta = (v.value for v in vals)
            if any(v is None for v in (start, limit, delta)) or float(delta) == 0:
                return UNKNOWN
            n = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
            dtype = np.result_type(start, limit, delta)
            return self._shaped(node, [n], dtype, lambda: np.arange(start, limit, delta, dtype=dtype), vals)
        if op == "Fill":
            dims, fill = vals
            if dims.value is None:
                return UNKNOWN
            return self._shaped(node, list(dims.value.reshape(-1)), fill.dtype,
                                lambda: np.full(tuple(dims.value.reshape(-1)), fill.value, fill.dtype), [fill])
        if op in ("Concat", "ConcatV2"):
            axis_v, parts = (vals[0], vals[1:]) if op == "Concat" else (vals[-1], vals[:-1])
            if axis_v.value is None or any(p.shape is None for p in parts) or not parts:
                return UNKNOWN
            rank = len(parts[0].shape)
            axis = int(axis_v.value) % max(rank, 1)
            shape = list(parts[0].shape)
            shape[axis] = sum(p.shape[axis] for p in parts)
            return self._shaped(node, shape, parts[0].dtype,
                                lambda: np.concatenate([p.value for p in parts], axis), parts)
        if op == "Pack":
            if any(v.shape is None for v in vals) or not vals:
                return UNKNOWN
            axis = attr["axis"].i % (len(vals[0].shape) + 1)
            shape = list(vals[0].shape)
            shape.insert(axis, len(vals))
            return self._shaped(node, shape, vals[0].dtype, lambda: np.stack([v.value for v in vals], axis), vals)
        if op == "Unpack":
            src = vals[0]
            if src.shape is None:
                return UNKNOWN
            axis = attr["axis"].i % len(src.shape)
            shape = src.shape[:axis] + src.shape[axis + 1:]
            return self._shaped(node, shape, src.dtype, lambda: np.take(src.value, index, axis), [src])
        if op == "Split":
            axis_v, src = vals
            if axis_v.value is None or src.shape is None:
                return UNKNOWN
            k, axis = attr["num_split"].i, int(axis_v.value) % len(src.shape)
            if k <= 0 or src.shape[axis] % k:
                return UNKNOWN
            shape = list(src.shape)
            shape[axis] //= k
            return self._shaped(node, shape, src.dtype, lambda: np.split(src.value, k, axis)[index], [src])
        if op in _BINARY and len(vals) == 2:
            a, b = vals
            if a.shape is None or b.shape is None:
                return UNKNOWN
            try:
                shape = np.broadcast_shapes(a.shape, b.shape)
            except ValueError:
                return UNKNOWN
            fn = _BINARY[op]
            dtype = np.dtype(bool) if op in ("Equal", "NotEqual", "Less", "Greater", "LessEqual", "GreaterEqual") \
                else a.dtype
            if fn is None or op not in FOLDED and not self.extended:
                return _Val(shape, dtype)
            return self._shaped(node, shape, dtype, lambda: fn(a.value, b.value), [a, b])
        return self._extended(node, vals) if self.extended else UNKNOWN

    def _extended(self, node, vals: list[_Val]) -> _Val:
        """Sizes (not values) of the ops that grow their inputs, for check_graph_def."""
        op, attr = node.op, node.attr

        def dims(v: _Val):
            return None if v.value is None else [int(d) for d in np.asarray(v.value).reshape(-1)]

        dtype = vals[0].dtype if vals else None
        if "dtype" in attr and attr["dtype"].type:
            dtype = _np_dtype(attr["dtype"].type)
        elif "T" in attr and attr["T"].type:
            dtype = _np_dtype(attr["T"].type)
        shape = None
        if op in _SHAPED and len(vals) > _SHAPED[op]:
            shape = dims(vals[_SHAPED[op]])
        elif op == "Tile" and vals[0].shape is not None and dims(vals[1]) is not None:
            shape = [a * b for a, b in zip(vals[0].shape, dims(vals[1]))]
        elif op == "Reshape" and vals[0].shape is not None and dims(vals[1]) is not None:
            shape = dims(vals[1])
            if shape.count(-1) == 1:
                known = _elements([d for d in shape if d != -1]) or 1
                shape[shape.index(-1)] = _elements(vals[0].shape) // known
        elif op == "ExpandDims" and vals[0].shape is not None:
            shape = list(vals[0].shape) + [1]
        elif op in ("Pad", "PadV2", "MirrorPad") and vals[0].shape is not None and dims(vals[1]) is not None:
            p = dims(vals[1])
            shape = [d + p[2 * i] + p[2 * i + 1] for i, d in enumerate(vals[0].shape)] \
                if len(p) == 2 * len(vals[0].shape) else None
        elif op == "MatMul" and all(v.shape is not None and len(v.shape) == 2 for v in vals[:2]):
            a, b = vals[0].shape, vals[1].shape
            shape = [a[1] if attr["transpose_a"].b else a[0], b[0] if attr["transpose_b"].b else b[1]]
        elif op == "OneHot" and vals[0].shape is not None and vals[1].value is not None:
            shape = list(vals[0].shape) + [int(vals[1].value)]
            dtype = vals[2].dtype if len(vals) > 2 else dtype
        elif op in ("ZerosLike", "OnesLike"):
            shape = vals[0].shape
        if shape is None or any(d < 0 for d in shape):
            return UNKNOWN
        self._bound(node, shape, dtype)
        return _Val(shape, dtype)

    def _shaped(self, node, shape, dtype, compute: Callable[[], np.ndarray], inputs: list[_Val]) -> _Val:
        """Check the output's size, then compute its value when every input's value is kept and it is small."""
        if shape is None or any(int(d) < 0 for d in shape):
            return UNKNOWN
        self._bound(node, shape, dtype)
        if not self._keep(shape) or any(v.value is None for v in inputs):
            return _Val(shape, dtype)
        return self._made(node, np.asarray(compute()))

    def _made(self, node, value: np.ndarray) -> _Val:
        self.spent += value.nbytes
        if self.spent > MAX_TENSOR_BYTES:
            raise CkptkitError(f"folding op {printable(node.name)} ({node.op}) in {self.where} materialises over "
                               f"{MAX_TENSOR_BYTES / 2**30:.1f} GiB: the graph is damaged or hostile "
                               "(CKPTKIT_MAX_TENSOR_BYTES raises the bound)")
        return _Val(value.shape, value.dtype, value)


def graph_folder(graph) -> Folder:
    """A walker-mode Folder over a tf.Graph (its static shapes answer Shape/Size/Rank of non-constants)."""
    def nodes(name: str):
        try:
            return graph.get_operation_by_name(name).node_def
        except (KeyError, ValueError):
            return None

    def static_shape(name: str, index: int):
        try:
            shape = graph.get_operation_by_name(name).outputs[index].shape
        except (KeyError, ValueError, IndexError):
            return None
        return tuple(shape.as_list()) if shape.is_fully_defined() else None

    return Folder(nodes, static_shape=static_shape)


def check_graph_def(graph_def, where: str = "the graph") -> None:
    """Refuse, before TensorFlow imports it, a graph whose constants would fold into a tensor over the bound
    (in the graph or any of its functions)."""
    bodies = [(where, {n.name: n for n in graph_def.node})]
    bodies += [(f"function {f.signature.name} of {where}", {n.name: n for n in f.node_def})
               for f in graph_def.library.function]
    for label, nodes in bodies:
        def shape_attr(name: str, index: int, nodes=nodes):
            node = nodes.get(name)
            shapes = node.attr["_output_shapes"].list.shape if node is not None and "_output_shapes" in node.attr \
                else []
            if index < len(shapes) and not shapes[index].unknown_rank and \
                    all(d.size >= 0 for d in shapes[index].dim):
                return tuple(d.size for d in shapes[index].dim)
            return None

        folder = Folder(nodes.get, label, extended=True, static_shape=shape_attr)
        try:
            for node in nodes.values():  # in the graph's order (producers first): the recursion stays shallow
                if node.op in CHECKED:
                    folder.spent = 0
                    folder.get(node.name)
        except RecursionError:
            raise CkptkitError(f"the constants of {where} are nested too deeply to be sized before TensorFlow "
                               "imports the graph: the graph is damaged or hostile") from None
