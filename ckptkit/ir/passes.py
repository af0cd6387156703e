"""IR -> IR passes: clean-up after import, and BatchNorm folding.

Folding and bias/constant absorption are the same mechanism: a per-channel
affine y = x*s + t right after a layer with a kernel (an op declaring a weight
layout: Conv, DepthwiseConv, ConvTranspose, Dense) that feeds only it is absorbed
as W' = W*s along the layout's output-channel axis, b' = b*s + t.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ckptkit.ir import registry

from ckptkit.core import pages
from ckptkit.core.bn_formula import node_affine
from ckptkit.ir import Graph, Node
from ckptkit.ir.layout import in_scale_shape, is_placeholder, out_channels, scale_outputs


def absorbs(node: Node) -> bool:
    """True for layers a following per-channel affine can be folded into."""
    return registry.get(node.op).layout is not None


def _affine_of(node: Node) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    if node.op == "BatchNorm":
        return node_affine(node)
    scale = node.params.get("scale")
    shift = node.params.get("shift")
    return (None if scale is None else scale.astype(np.float64), None if shift is None else shift.astype(np.float64))


def _working_weights(layer: Node) -> tuple[np.ndarray, bool]:
    """(the layer's weights in float64, whether they are unloaded): a topology-only import's zero view stays
    as it is (no copy of weights that were never read)."""
    w = layer.params["weights"]
    return (w, True) if is_placeholder(w) else (w.astype(np.float64), False)


def absorb(layer: Node, scale: Optional[np.ndarray], shift: Optional[np.ndarray],
           shift_source: Optional[str] = None) -> None:
    """Fold y = layer(x)*scale + shift into the layer's weights and bias (products in float64, rounded once).

    `shift_source`: the checkpoint variable of a plain bias (BiasAdd) absorbed unchanged. The weights are
    scaled slab by slab into a scratch map (ckptkit.core.pages: a 400 MB kernel costs the page cache 400 MB and the
    process one slab); unloaded weights (a topology-only import's zero view) stay unloaded."""
    w = layer.params["weights"]
    b = layer.params.get("bias")
    if scale is None and b is None and shift_source:
        layer.sources["bias"] = shift_source  # the layer's bias is that variable, as it is
    else:
        layer.sources.pop("bias", None)  # a merged bias is no checkpoint tensor any more
    layout = registry.get(layer.op).layout
    dtype = w.dtype
    b = np.zeros(out_channels(w.shape, layout)) if b is None else b.astype(np.float64)
    if scale is not None:
        if not is_placeholder(w):  # into a scratch map: the page cache holds a big model's folded weights
            layer.params["weights"] = scale_outputs(w, layout, scale, out=pages.scratch(w.shape, w.dtype))
        b = b * scale
        layer.sources["folded"] = layer.sources.pop("weights", "")  # weights no longer the checkpoint's tensor
    if shift is not None:
        b = b + shift
    layer.params["bias"] = b.astype(dtype)


def absorb_into_layers(graph: Graph, wanted: Callable[[Node], bool],
                       into: Callable[[Node], bool] = lambda layer: True) -> Graph:
    """Absorb every node for which `wanted` holds into the layer before it (one `into` accepts), where that
    layer feeds nothing else."""
    graph = graph.copy()
    users = graph.consumers()
    keep: list[Node] = []
    rename: dict[str, str] = {}
    by_name = {n.name: n for n in graph.nodes}
    for node in graph.nodes:
        if wanted(node):
            src = by_name[rename.get(node.inputs[0], node.inputs[0])]
            if absorbs(src) and len(users[src.name]) == 1 and into(src):
                scale, shift = _affine_of(node)
                absorb(src, scale, shift, node.sources.get("shift") if scale is None else None)
                if node.op == "BatchNorm":
                    graph.folded[node.name] = f"into {src.name}"
                rename[node.name] = src.name
                users[src.name] = users[node.name]
                continue
        keep.append(node)
    return graph.rebuild(keep, rename)


def merge_affines(graph: Graph, wanted: Callable[[Node], bool] = lambda n: True) -> Graph:
    """Merge chains of Affine nodes (e.g. a Mul then an Add) for which `wanted` holds into one."""
    graph = graph.copy()
    users = graph.consumers()
    by_name = {n.name: n for n in graph.nodes}
    keep, rename = [], {}
    for node in graph.nodes:
        if node.op == "Affine" and wanted(node):
            src = by_name.get(rename.get(node.inputs[0], node.inputs[0]))
            if src is not None and src.op == "Affine" and wanted(src) and len(users[src.name]) == 1:
                s1, t1 = _affine_of(src)
                s2, t2 = _affine_of(node)
                s = s1 if s2 is None else (s2 if s1 is None else s1 * s2)
                t = t1 * s2 if (t1 is not None and s2 is not None) else t1
                t = t2 if t is None else (t if t2 is None else t + t2)
                src.params = {k: v.astype(np.float32) for k, v in (("scale", s), ("shift", t)) if v is not None}
                src.sources = {}
                rename[node.name] = src.name
                users[src.name] = users[node.name]
                continue
        keep.append(node)
    return graph.rebuild(keep, rename)


def drop_identities(graph: Graph) -> Graph:
    """Reshapes that keep the shape go (TF's Identity ops never reach the IR)."""
    keep, rename = [], {}
    for node in graph.nodes:
        is_noop_reshape = node.op == "Reshape" and graph[node.inputs[0]].shape == node.shape
        if is_noop_reshape:
            rename[node.name] = node.inputs[0]
        else:
            keep.append(node)
    return graph.rebuild(keep, rename)


def hoist_channel_ops(graph: Graph) -> Graph:
    """Move a per-channel op (BatchNorm, Affine) above a Reshape that keeps the last axis.

    slim's fused BatchNorm on a 2-D input reshapes to [N,1,1,C] and back; hoisting puts the
    BN right after its Dense, where it can be folded, and leaves two Reshapes that cancel."""
    graph = graph.copy()
    nodes = list(graph.nodes)
    for i, node in enumerate(nodes):
        if node.op not in ("BatchNorm", "Affine"):
            continue
        users = Graph(nodes, graph.inputs, graph.outputs).consumers()
        j = next(k for k, n in enumerate(nodes) if n.name == node.inputs[0])
        r = nodes[j]
        src_shape = next(n.shape for n in nodes if n.name == (r.inputs[0] if r.inputs else None)) if r.inputs else None
        if r.op != "Reshape" or len(users[r.name]) != 1 or src_shape is None or src_shape[-1] != r.shape[-1]:
            continue
        moved = Node(node.name, node.op, [r.inputs[0]], src_shape, node.attrs, node.params, node.sources)
        after = Node(r.name, "Reshape", [node.name], node.shape, r.attrs)
        for n in nodes[i + 1:]:
            n.inputs = [r.name if x == node.name else x for x in n.inputs]
        graph.outputs = [r.name if o == node.name else o for o in graph.outputs]
        nodes[j], nodes[i] = moved, after
    return Graph(nodes, graph.inputs, graph.outputs, graph.name, graph.input_names, graph.output_names, graph.folded,
                 graph.metadata)


def merge_reshapes(graph: Graph) -> Graph:
    """Reshape(Reshape(x)) -> Reshape(x) when the inner one feeds nothing else."""
    graph = graph.copy()
    users = graph.consumers()
    by_name = {n.name: n for n in graph.nodes}
    for node in graph.nodes:
        if node.op == "Reshape":
            inner = by_name[node.inputs[0]]
            while inner.op == "Reshape" and len(users[inner.name]) == 1:
                node.inputs = list(inner.inputs)
                inner = by_name[node.inputs[0]]
    used = {i for n in graph.nodes for i in n.inputs} | set(graph.outputs)
    keep = [n for n in graph.nodes if n.name in used or n.op == "Input"]
    return graph.rebuild(keep)


def _bias_variable(node: Node) -> bool:
    """A BiasAdd of a checkpoint variable: an Affine that is only a shift read from the checkpoint."""
    return node.op == "Affine" and node.params.get("scale") is None and bool(node.sources.get("shift"))


def cleanup(graph: Graph) -> Graph:
    """After import: drop identities, give each layer its bias variable, merge chains of constant affines.

    The imported IR stays faithful to the checkpoint: a layer's parameters are its variables (a constant
    scaling after it stays an Affine node), which the BN-free graph beside a folded checkpoint and the
    topology-only imports (no weights read) rely on. `simplify` merges the constants in for writing."""
    graph = drop_identities(graph)
    graph = drop_identities(merge_reshapes(hoist_channel_ops(graph)))
    graph = merge_affines(graph, lambda n: not n.sources)
    return absorb_into_layers(graph, _bias_variable, into=lambda layer: layer.params.get("bias") is None)


def simplify(graph: Graph) -> Graph:
    """Constant scalings and shifts merged and absorbed into the layer before them (what a writer wants)."""
    return absorb_into_layers(merge_affines(graph), lambda n: n.op == "Affine")


def _forward_target(graph: Graph, users: dict, name: str, channels: int) -> Optional[tuple[Node, int]]:
    """(layer, times the channel vector repeats along its input) when `name` feeds a layer that can take a
    per-channel affine of its input into its weights exactly: a convolution without padding (padding would
    see zeros, not the shifted zeros), a Dense on it, or a Dense after a flatten of it."""
    node = graph[name]
    if node.op == "Reshape" and len(node.shape) == 2 and len(users[name]) == 1:
        dense = graph[users[name][0]]
        src = graph[node.inputs[0]].shape
        if dense.op == "Dense" and src[-1] == channels and None not in src[1:]:
            return dense, int(np.prod(src[1:3]))
        return None
    layout = registry.get(node.op).layout
    if layout in ("HWIO", "HWCM") and not any(node.attrs.pads):
        return node, 1
    if layout == "IO" and graph[node.inputs[0]].shape[-1] == channels:
        return node, 1
    return None


def absorb_input_affine(layer: Node, scale: np.ndarray, shift: np.ndarray, repeat: int = 1) -> None:
    """layer(x*scale + shift) as layer'(x): W' = W*scale along the input axis, b' = b + (W contracted with shift).
    `repeat`: the vectors tile a flattened H*W*C input (TF's row-major order: channel fastest)."""
    layout = registry.get(layer.op).layout
    w, unloaded = _working_weights(layer)
    s, t = np.tile(scale, repeat), np.tile(shift, repeat)
    b = layer.params.get("bias")
    b = np.zeros(out_channels(w.shape, layout)) if b is None else b.astype(np.float64)
    if layout == "HWCM":  # output channel c*M + m sees input channel c only
        b = b + np.einsum("hwcm,c->cm", w, t).reshape(-1)
    elif layout == "HWIO":
        b = b + np.einsum("hwio,i->o", w, t)
    else:  # IO
        b = b + t @ w
    dtype = layer.params["weights"].dtype
    if not unloaded:
        w = (w * s.reshape(in_scale_shape(w.shape, layout))).astype(dtype)
    layer.params["weights"], layer.params["bias"] = w, b.astype(dtype)
    layer.sources.pop("bias", None)
    layer.sources["folded"] = layer.sources.pop("weights", layer.sources.get("folded", ""))


def fold_forward(graph: Graph, wanted: Callable[[Node], bool]) -> Graph:
    """Fold each wanted per-channel affine (a BatchNorm left after backward folding, e.g. one before a
    convolution) into every layer it feeds, where each of them can take it exactly."""
    graph = graph.copy()
    users = graph.consumers()
    keep, rename = [], {}
    for node in graph.nodes:
        if wanted(node) and node.name not in graph.outputs and users[node.name]:
            channels = node.shape[-1]
            targets = [_forward_target(graph, users, u, channels) for u in users[node.name]]
            if all(targets):
                scale, shift = _affine_of(node)
                scale = np.ones(channels) if scale is None else scale
                shift = np.zeros(channels) if shift is None else shift
                for layer, repeat in targets:
                    absorb_input_affine(layer, scale, shift, repeat)
                if node.op == "BatchNorm":
                    graph.folded[node.name] = "forward into " + ", ".join(layer.name for layer, _ in targets)
                rename[node.name] = node.inputs[0]
                continue
        keep.append(node)
    return graph.rebuild(keep, rename)


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every BatchNorm into the layer before it (Conv, DepthwiseConv, ConvTranspose, Dense), or else
    forward into the layers after it when they take it exactly (no padding).

    A BatchNorm that can go neither way (e.g. ResNet v2's pre-activation BN after an Add, feeding a ReLU)
    stays a BatchNorm node; statistics missing or invalid raise CkptkitError. `graph.folded` says where each
    folded BatchNorm went.

    Args:
        graph: ckptkit's IR (`model.graph`); not modified.
    Returns:
        Graph: a copy with the foldable BatchNorms absorbed (weights scaled, biases shifted, float64 math).
    Example:
        >>> ckptkit.fold(ckptkit.load("fixtures/mobilenet_v2_tiny").graph).count("BatchNorm")
        0
    """
    graph = absorb_into_layers(simplify(graph), lambda n: n.op == "BatchNorm")
    return fold_forward(graph, lambda n: n.op == "BatchNorm")
