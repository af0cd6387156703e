"""The one intermediate representation every importer produces and every writer reads.

Semantics are TensorFlow's: NHWC activations, HWIO conv kernels, [kh,kw,C,M]
depthwise kernels, [in,out] dense weights. Each node has one output, named by
the node; `shape` is its static shape with the batch dimension as None.

The op set is open: each op lives in a module of `ckptkit/ops/` that declares its typed
attributes (`node.attrs` is that op's dataclass), its TensorFlow executor, its weight layout and
how each target writes it. `python -m ckptkit.ops` lists them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from ckptkit.ir import registry  # below the graph: it imports only core; op modules load on first use


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    shape: tuple
    attrs: Any = None  # the op's attribute dataclass (a dict of its fields is converted)
    params: dict[str, Optional[np.ndarray]] = field(default_factory=dict)
    # checkpoint variable each parameter came from (BatchNorm: gamma/beta/mean/variance)
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attrs = registry.get(self.op).make_attrs(self.attrs)


@dataclass
class Graph:
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    name: str = "model"
    # the TensorFlow tensor names of the inputs and outputs, by position ("input:0", "logits/BiasAdd:0"):
    # the exports name their inputs and outputs after them, as tf2onnx does
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    # BatchNorm/affine node -> the layer it was folded into, "into LAYER" (after it) or "forward into LAYER"
    folded: dict[str, str] = field(default_factory=dict)
    # what travels with the model into the exports (ONNX metadata_props): e.g. the recorded preprocessing
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {n.name: n for n in self.nodes}

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def copy(self) -> "Graph":
        nodes = [Node(n.name, n.op, list(n.inputs), n.shape, copy.deepcopy(n.attrs), dict(n.params), dict(n.sources))
                 for n in self.nodes]
        return Graph(nodes, list(self.inputs), list(self.outputs), self.name, list(self.input_names),
                     list(self.output_names), dict(self.folded), dict(self.metadata))

    def consumers(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[i].append(n.name)
        for o in self.outputs:
            users[o].append("<output>")
        return users

    def rebuild(self, nodes: list[Node], rename: dict[str, str] | None = None) -> "Graph":
        """A graph of `nodes` where inputs named in `rename` are redirected."""
        rename = rename or {}

        def follow(name: str) -> str:
            while name in rename:
                name = rename[name]
            return name

        for n in nodes:
            n.inputs = [follow(i) for i in n.inputs]
        return Graph(nodes, list(self.inputs), [follow(o) for o in self.outputs], self.name, list(self.input_names),
                     list(self.output_names), dict(self.folded), dict(self.metadata))

    def count(self, op: str) -> int:
        return sum(1 for n in self.nodes if n.op == op)

    def weight_bytes(self) -> int:
        """The bytes of every weight as held (views, scratch maps and arrays alike)."""
        return sum(int(v.nbytes) for n in self.nodes for v in n.params.values() if isinstance(v, np.ndarray))

    def written_bytes(self) -> int:
        """The bytes a writer stores for the weights: each value at most 4 bytes (float32; a float64 parameter
        is written as float32), the least any output of this graph takes on disk."""
        return sum(int(v.size) * min(v.itemsize, 4) for n in self.nodes for v in n.params.values()
                   if isinstance(v, np.ndarray))

    @property
    def input_shape(self) -> tuple:
        return self[self.inputs[0]].shape

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts


class UniqueNames:
    """Hands out names, suffixing _2, _3, ... to repeats (IR node names, ONNX/Caffe/Keras layer names)."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF SAME padding along one axis: out = ceil(in/s), the odd pixel goes after (bottom/right)."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def shorten(name: str, width: int) -> str:
    """`name` in at most `width` characters: the start elided with an ellipsis (the end says most)."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def padding_mode(pads: tuple, in_shape: tuple, kernel, strides, dilations=(1, 1)) -> str:
    """'same' when the pads are TF SAME's for this input, 'valid' when zero, else 'explicit' (Keras's
    padding modes; a layer with explicit pads needs a ZeroPadding2D first)."""
    pads = tuple(pads)
    if not any(pads):
        return "valid"
    same = same_pads(in_shape[1], kernel[0], strides[0], dilations[0]) + same_pads(in_shape[2], kernel[1], strides[1],
                                                                                    dilations[1])
    return "same" if pads == same else "explicit"
