"""Run an IR graph with TensorFlow ops (eager / tf.function).

Used as the TF reference for graphs whose saved form computes training mode
(a training `.meta`), and by recalibration, which runs BatchNorm nodes on batch
statistics and collects them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ckptkit.ir import registry
from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError
from ckptkit.core.bn_formula import node_affine
from ckptkit.ir import Graph, Node

# A BatchNorm hook: (node, x) -> y. Default: inference with the moving statistics.
BNHook = Callable[[Node, object], object]


def inference_bn(node: Node, x):
    scale, shift = node_affine(node)
    return x * scale.astype(np.float32) + shift.astype(np.float32)


@dataclass
class ExecContext:
    """What an op's executor may need besides its node: how BatchNorm runs (inference, or recalibration's
    batch statistics)."""
    bn_hook: BNHook = inference_bn


def apply_node(node: Node, args: list, bn_hook: BNHook, params: Optional[dict] = None):
    """One IR node with TF ops; `params` (default node.params) may hold tensors made ahead of tracing."""
    op = registry.get(node.op)
    if op.run is None:
        raise CkptkitError(f"IR op {node.op} of node {node.name} cannot be run: this is a bug in ckptkit")
    return op.run(ExecContext(bn_hook), node, args, node.params if params is None else params)


def weight_tensors(graph: Graph) -> dict[str, dict]:
    """Conv/Dense weights and biases as eager tensors, for `run_graph(..., params=)` inside a tf.function.

    A tf.function then captures them as inputs instead of embedding them as graph constants,
    which keeps tracing fast and memory flat (Grappler would constant-fold over every weight)."""
    _tf = tf()
    out = {}
    for node in graph.nodes:
        if registry.get(node.op).layout is not None:
            out[node.name] = {k: (None if v is None else _tf.constant(v)) for k, v in node.params.items()}
    return out


def run_graph(graph: Graph, x, bn_hook: Optional[BNHook] = None, fetch: Optional[list[str]] = None,
              params: Optional[dict] = None):
    """Evaluate the graph on `x` (NHWC); returns the output tensor (or a dict of `fetch`).

    `params`: node name -> parameters to use instead of node.params (see `weight_tensors`)."""
    bn_hook = bn_hook or inference_bn
    params = params or {}
    values = {graph.inputs[0]: x}
    for node in graph.nodes:
        if node.op == "Input":
            continue
        values[node.name] = apply_node(node, [values[i] for i in node.inputs], bn_hook, params.get(node.name))
    if fetch is not None:
        return {k: values[k] for k in fetch}
    return values[graph.outputs[0]]


def reference_fn(graph: Graph) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled inference-mode forward pass of the IR."""
    _tf = tf()
    weights = weight_tensors(graph)
    fn = _tf.function(lambda x: run_graph(graph, x, params=weights), reduce_retracing=True, autograph=False)

    def run(x: np.ndarray) -> np.ndarray:
        return fn(_tf.constant(x, _tf.float32)).numpy()

    return run


def float64_fn(graph: Graph) -> Callable[[np.ndarray], np.ndarray]:
    """The IR evaluated in float64 (weights, BatchNorm and activations), eagerly: a yardstick more exact than
    any float32 run, for telling float32 rounding from a real mismatch (see verify.precision_verdict)."""
    _tf = tf()
    params = {n.name: {k: (None if v is None else np.asarray(v, np.float64)) for k, v in n.params.items()}
              for n in graph.nodes}

    def bn(node: Node, x):
        scale, shift = node_affine(node)
        return x * scale + shift

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(run_graph(graph, _tf.constant(x, _tf.float64), bn_hook=bn, params=params))

    return run
