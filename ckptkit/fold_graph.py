"""The BN-free graph written beside a folded checkpoint, so the next command (and TensorFlow) can use it.

The folded checkpoint follows slim's no-BN naming (scaled weights, a `biases` variable per folded
layer). Its graph is built from ckptkit's IR with the same BatchNorms folded: an inference-only
MetaGraphDef whose variables carry the checkpoint's names, input and output named as in the original
graph. It is written only after TensorFlow restored the folded checkpoint into it and reproduced the
original graph's inference output.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from ._tf import tf, tf1
from .batchnorm.formula import normalize
from .errors import CkptkitError
from .ir import Graph, Node, same_pads
from .passes import absorb_into_layers, absorbs
from .checkpoint import Checkpoint
from .tf_exec import apply_node
from .tf_import.walker import ValueSource, import_graph
from .verify import TOLERANCE, compare

log = logging.getLogger("ckptkit")


def _bn(node: Node, x, p: dict):
    return normalize(x, p["mean"], p["variance"], node.attrs.epsilon, p.get("gamma"), p.get("beta"))


def _padding(node: Node, in_shape) -> str | None:
    """"VALID" or "SAME" when the node's explicit pads are exactly that, else None."""
    t, b, l, r = node.attrs.pads
    if not any((t, b, l, r)):
        return "VALID"
    k, s = node.attrs.kernel, node.attrs.strides
    if (same_pads(in_shape[1], k[0], s[0]) + same_pads(in_shape[2], k[1], s[1])) == (t, b, l, r):
        return "SAME"
    return None


def _pool(node: Node, x, in_shape):
    """Pooling as TensorFlow's own op where the pads are SAME or VALID (what ckptkit's importer reads back;
    SAME average pooling excludes the padding from the count, as the IR does)."""
    _tf = tf()
    padding = _padding(node, in_shape)
    if padding is None:
        return None
    k, s = node.attrs.kernel, node.attrs.strides
    pool = _tf.nn.max_pool2d if node.op == "MaxPool" else _tf.nn.avg_pool2d
    return pool(x, k, s, padding)


def build(graph: Graph, folded: set[str], bias_names: dict[str, str], dtypes: dict[str, str]):
    """(tf.Graph, input, output, Saver) of `graph` with the BatchNorms named in `folded` folded away;
    every parameter is a variable named as in the folded checkpoint."""
    _tf = tf()
    ir = absorb_into_layers(graph, lambda n: n.op == "BatchNorm" and n.name in folded)
    g = _tf.Graph()
    variables: dict[str, object] = {}

    def variable(name: str, value: np.ndarray):
        if name not in variables:
            variables[name] = tf1.get_variable(name, shape=value.shape, dtype=dtypes.get(name, "float32"),
                                               initializer=tf1.zeros_initializer(), trainable=False)
        return variables[name]

    with g.as_default():
        in_name = (graph.input_names[0] if graph.input_names else "input:0").split(":")[0]
        x = tf1.placeholder(_tf.float32, [None, *graph.input_shape[1:]], name=in_name)
        values = {ir.inputs[0]: x}
        for node in ir.nodes:
            if node.op == "Input":
                continue
            params = {}
            for key, value in node.params.items():
                if value is None:
                    params[key] = None
                    continue
                source = node.sources.get(key)
                weights = node.sources.get("weights") or node.sources.get("folded")  # folded: same name, scaled
                if absorbs(node) and key == "weights":
                    source = weights
                if absorbs(node) and key == "bias" and weights in bias_names:
                    source = bias_names[weights]
                if not source and absorbs(node) and key == "weights":
                    raise CkptkitError(f"{node.name} has weights the checkpoint does not hold")
                # constants of the original graph (x + 3 in hard-swish, a scaled residual, a bias merged with
                # the constant added after it) stay constants
                params[key] = _tf.cast(variable(source, value), _tf.float32) if source else _tf.constant(value)
            pooled = _pool(node, values[node.inputs[0]], ir[node.inputs[0]].shape) \
                if node.op in ("MaxPool", "AvgPool") else None
            values[node.name] = pooled if pooled is not None else apply_node(
                node, [values[i] for i in node.inputs], lambda n, t, p=params: _bn(n, t, p), params)
        out_name = (graph.output_names[0] if graph.output_names else "output:0").split(":")[0]
        out = _tf.identity(values[ir.outputs[0]], name=out_name)
        saver = tf1.train.Saver(var_list=variables, sharded=False)
    return g, x, out, saver


def folded_meta(graph: Graph, reference: Callable[[np.ndarray], np.ndarray], folded: set[str],
                bias_names: dict[str, str], dtypes: dict[str, str]) -> Callable[[str], Optional[bytes]]:
    """A function staged-prefix -> MetaGraphDef bytes (None, with a warning, when the graph cannot be made or
    does not reproduce the original's output once the folded checkpoint is restored into it)."""
    from .phases import phase
    from .verify import verification_inputs

    inputs = verification_inputs(graph.input_shape)
    try:
        with phase("verify: TensorFlow reference"):
            expected = np.asarray(reference(inputs))  # the original graph, original checkpoint
    except CkptkitError as err:
        log.warning("no graph written beside the folded checkpoint: %s", err)
        return lambda prefix: None
    finally:  # one copy of the weights at a time: the reference's session goes before the fold streams
        getattr(reference, "close", lambda: None)()

    def make(prefix: str) -> Optional[bytes]:
        _tf = tf()
        try:
            g, x, out, saver = build(graph, folded, bias_names, dtypes)
            from .gateway import samples_per_run

            n = samples_per_run(g)  # activations within the reference's budget (vgg at 224 px: one sample a run)
            with tf1.Session(graph=g) as sess:
                saver.restore(sess, prefix)
                got = np.concatenate([sess.run(out, {x: inputs[i:i + n]}) for i in range(0, len(inputs), n)])
        except (CkptkitError, _tf.errors.OpError, ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            log.warning("no graph written beside the folded checkpoint (%s): give the next command --meta or "
                        "--arch", first)
            return None
        comparison = compare(expected, got, TOLERANCE)
        if not comparison.ok:
            log.warning("no graph written beside the folded checkpoint: restored into the BN-free graph it "
                        "does not reproduce the original (%s)", comparison)
            return None
        try:  # the next command reads it with ckptkit's importer: it must import
            import_graph(g, x, out, ValueSource(Checkpoint(prefix), weights=False))
        except CkptkitError as err:
            log.warning("no graph written beside the folded checkpoint: ckptkit could not read it back (%s)", err)
            return None
        with g.as_default():
            meta = tf1.train.export_meta_graph(graph=g, saver_def=saver.as_saver_def(), clear_devices=True)
        return meta.SerializeToString(deterministic=True)  # map fields in a fixed order: same bytes each run

    return make
