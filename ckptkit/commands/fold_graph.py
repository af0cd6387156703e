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

from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph, Node, same_pads
from ckptkit.ir.passes import absorb_into_layers, absorbs
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.run.tf_exec import apply_node
from ckptkit.tf_import.walker import ValueSource, import_graph
from ckptkit.run.verify import TOLERANCE, compare

log = logging.getLogger("ckptkit")


def _bn(node: Node, x, p: dict):
    """A BatchNorm that stays: written as tf.nn.batch_normalization, the spelling every reader (ckptkit's
    importer included) knows as BatchNorm, with its statistics as variables of the checkpoint's names."""
    return tf().nn.batch_normalization(x, p["mean"], p["variance"], p.get("beta"), p.get("gamma"),
                                       node.attrs.epsilon)


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


def build(graphs: list[Graph], folded: set[str], bias_names: dict[str, str], dtypes: dict[str, str]):
    """(tf.Graph, input, outputs, Saver) of `graphs` (one IR per output of the same network: a node of one
    name is one op, built once) with the BatchNorms named in `folded` folded away; every parameter is a
    variable named as in the folded checkpoint."""
    _tf = tf()
    graph = graphs[0]
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
        values, outputs = {}, []
        for one in graphs:
            ir = absorb_into_layers(one, lambda n: n.op == "BatchNorm" and n.name in folded)
            values[ir.inputs[0]] = x
            _build_nodes(ir, values, variable, bias_names)
            out_name = (one.output_names[0] if one.output_names else "output:0").split(":")[0]
            outputs.append(_tf.identity(values[ir.outputs[0]], name=out_name))
        saver = tf1.train.Saver(var_list=variables, sharded=False)
    return g, x, outputs, saver


def _build_nodes(ir: Graph, values: dict, variable: Callable, bias_names: dict[str, str]) -> None:
    """TensorFlow ops for every node of `ir` not yet in `values` (node name -> tensor)."""
    _tf = tf()
    for node in ir.nodes:
        if node.op == "Input" or node.name in values:
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


def folded_meta(models: list, folded: set[str], bias_names: dict[str, str],
                dtypes: dict[str, str]) -> Callable[[str], Optional[bytes]]:
    """A function staged-prefix -> MetaGraphDef bytes (None, with a warning, when the graph cannot be made or
    does not reproduce the original's outputs once the folded checkpoint is restored into it). `models`: one
    loaded Model (IR + reference) per output of the graph."""
    from ckptkit.core.phases import phase
    from ckptkit.run.verify import verification_inputs

    inputs = verification_inputs(models[0].graph.input_shape)
    expected = []
    for model in models:
        try:
            with phase("verify: TensorFlow reference"):
                expected.append(np.asarray(model.reference(inputs)))  # the original graph and checkpoint
        except CkptkitError as err:
            log.warning("no graph written beside the folded checkpoint: %s", err)
            return lambda prefix: None
        finally:  # one copy of the weights at a time: the reference's session goes before the fold streams
            getattr(model.reference, "close", lambda: None)()

    def make(prefix: str) -> Optional[bytes]:
        _tf = tf()
        try:
            g, x, outs, saver = build([m.graph for m in models], folded, bias_names, dtypes)
            from ckptkit.run.gateway import samples_per_run

            n = samples_per_run(g)  # activations within the reference's budget (vgg at 224 px: one sample a run)
            with tf1.Session(graph=g) as sess:
                saver.restore(sess, prefix)
                runs = [sess.run(outs, {x: inputs[i:i + n]}) for i in range(0, len(inputs), n)]
            got = [np.concatenate([run[k] for run in runs]) for k in range(len(outs))]
        except (CkptkitError, _tf.errors.OpError, ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            log.warning("no graph written beside the folded checkpoint (%s): give the next command --meta or "
                        "--arch", first)
            return None
        for out, want, have in zip(outs, expected, got):
            comparison = compare(want, have, TOLERANCE)
            if not comparison.ok:
                log.warning("no graph written beside the folded checkpoint: restored into the BN-free graph, its "
                            "output %s does not reproduce the original (%s)", out.op.name, comparison)
                return None
        try:  # the next command reads it with ckptkit's importer: every output must import
            for out in outs:
                import_graph(g, x, out, ValueSource(Checkpoint(prefix), weights=False))
        except CkptkitError as err:
            log.warning("no graph written beside the folded checkpoint: ckptkit could not read it back (%s)", err)
            return None
        with g.as_default():
            meta = tf1.train.export_meta_graph(graph=g, saver_def=saver.as_saver_def(), clear_devices=True)
        return meta.SerializeToString(deterministic=True)  # map fields in a fixed order: same bytes each run

    return make
