"""Run an IR graph with TensorFlow ops (eager / tf.function).

Used as the TF reference for graphs whose saved form computes training mode
(a training `.meta`), and by recalibration, which runs BatchNorm nodes on batch
statistics and collects them.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ._tf import tf
from .errors import CkptkitError
from .ir import Graph, Node, bn_affine

# A BatchNorm hook: (node, x) -> y. Default: inference with the moving statistics.
BNHook = Callable[[Node, object], object]


def _pad4(x, pads, value=0.0):
    t, b, l, r = pads
    if not any(pads):
        return x
    return tf().pad(x, [[0, 0], [t, b], [l, r], [0, 0]], constant_values=value)


def _pool(node: Node, x):
    _tf = tf()
    k, s, pads = node.attrs["kernel"], node.attrs["strides"], node.attrs["pads"]
    if node.op == "MaxPool":
        return _tf.nn.max_pool2d(_pad4(x, pads, -np.inf), k, s, "VALID")
    # Padded cells do not count: divide the sum by the number of real cells in each window.
    summed = _tf.nn.avg_pool2d(_pad4(x, pads), k, s, "VALID") * float(k[0] * k[1])
    ones = _tf.ones_like(x[:1, :, :, :1])
    count = _tf.nn.avg_pool2d(_pad4(ones, pads), k, s, "VALID") * float(k[0] * k[1])
    return summed / count


def inference_bn(node: Node, x):
    scale, shift = bn_affine(node)
    return x * scale.astype(np.float32) + shift.astype(np.float32)


def apply_node(node: Node, args: list, bn_hook: BNHook, params: Optional[dict] = None):
    """One IR node with TF ops; `params` (default node.params) may hold tensors made ahead of tracing."""
    _tf = tf()
    op, a, p = node.op, node.attrs, node.params if params is None else params
    x = args[0] if args else None
    if op in ("Conv", "DepthwiseConv"):
        x = _pad4(x, a["pads"])
        w = p["weights"]
        if op == "Conv":
            y = _tf.nn.conv2d(x, w, (1,) + tuple(a["strides"]) + (1,), "VALID", dilations=a["dilations"])
        else:
            y = _tf.nn.depthwise_conv2d(x, w, (1,) + tuple(a["strides"]) + (1,), "VALID", dilations=a["dilations"])
        return y if p.get("bias") is None else _tf.nn.bias_add(y, p["bias"])
    if op == "Dense":
        y = _tf.matmul(x, p["weights"])
        return y if p.get("bias") is None else y + p["bias"]
    if op == "BatchNorm":
        return bn_hook(node, x)
    if op == "Affine":
        if p.get("scale") is not None:
            x = x * p["scale"]
        return x if p.get("shift") is None else x + p["shift"]
    if op == "Relu":
        return _tf.nn.relu(x)
    if op == "Relu6":
        return _tf.nn.relu6(x)
    if op == "Softmax":
        return _tf.nn.softmax(x)
    if op == "Identity":
        return x
    if op == "Add":
        return args[0] + args[1]
    if op == "Concat":
        return _tf.concat(args, a["axis"])
    if op in ("MaxPool", "AvgPool"):
        return _pool(node, x)
    if op == "Mean":
        return _tf.reduce_mean(x, list(a["axes"]), keepdims=a["keepdims"])
    if op == "Pad":
        return _tf.pad(x, a["pads"])
    if op == "Reshape":
        return _tf.reshape(x, a["shape"])
    raise CkptkitError(f"IR op {op} of node {node.name} cannot be run: this is a bug in ckptkit")


def weight_tensors(graph: Graph) -> dict[str, dict]:
    """Conv/Dense weights and biases as eager tensors, for `run_graph(..., params=)` inside a tf.function.

    A tf.function then captures them as inputs instead of embedding them as graph constants,
    which keeps tracing fast and memory flat (Grappler would constant-fold over every weight)."""
    _tf = tf()
    out = {}
    for node in graph.nodes:
        if node.op in ("Conv", "DepthwiseConv", "Dense"):
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
