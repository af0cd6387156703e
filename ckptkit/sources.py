"""Topology sources: where the graph of a checkpoint comes from, and its TF reference.

`load()` turns a checkpoint plus one topology source (the `.meta` beside it or
given, `--arch NAME`, a frozen GraphDef, or a builder callable) into a `Model`:
the inference-path IR and a TensorFlow reference forward pass.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ._tf import tf, tf1
from .checkpoint import Checkpoint
from .errors import CkptkitError
from .ir import Graph
from .tf_import.walker import ValueSource, import_graph

log = logging.getLogger("ckptkit")

Builder = Callable[[object], object]  # inputs tensor -> output tensor, in the current tf.Graph


@dataclass
class Model:
    graph: Graph
    checkpoint: Optional[Checkpoint]
    reference: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    source: str = ""

    @property
    def input_shape(self) -> tuple:
        return self.graph.input_shape


def _session_reference(graph, input_t, output_t, ckpt: Optional[Checkpoint]) -> Callable:
    """Run a tf.Graph's own ops, variables restored from the checkpoint (a lazy session)."""
    state: dict = {}

    def run(x: np.ndarray) -> np.ndarray:
        if "sess" not in state:
            with graph.as_default():
                variables = tf1.global_variables()
                sess = tf1.Session(graph=graph)
                if variables:
                    sess.run(tf1.variables_initializer(variables))
                    by_name = {v.op.name: v for v in variables if ckpt is not None and v.op.name in ckpt}
                    if by_name:
                        try:
                            tf1.train.Saver(by_name).restore(sess, ckpt.prefix)
                        except tf().errors.OpError as err:
                            raise CkptkitError(f"checkpoint {ckpt.prefix} does not fit the graph "
                                               f"({str(err).splitlines()[0][:200]}): check --arch/--meta") from None
            state["sess"] = sess
        return state["sess"].run(output_t, {input_t: x})

    return run


def _placeholder(shape: Sequence[Optional[int]]):
    return tf1.placeholder(tf().float32, [None] + list(shape), name="input")


def _parse_shape(text: Optional[str]) -> Optional[tuple[int, int, int]]:
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        return tuple(int(v) for v in text)
    try:
        h, w, c = (int(v) for v in str(text).split(","))
    except ValueError:
        raise CkptkitError(f"--input-shape {text} is not H,W,C (e.g. 224,224,3)") from None
    return h, w, c


def _tensor(graph, name: str, what: str):
    name = name if ":" in name else name + ":0"
    try:
        return graph.get_tensor_by_name(name)
    except (KeyError, ValueError):
        raise CkptkitError(f"{what} {name} is not in the graph: check the name (`ckptkit inspect` lists none; "
                           "look it up in Netron or TensorBoard)") from None


def from_builder(ckpt: Optional[Checkpoint], builder: Builder, input_shape: Sequence[int], name: str = "model",
                 source: str = "builder", weights: bool = True) -> Model:
    g = tf().Graph()
    with g.as_default():
        x = _placeholder(input_shape)
        out = builder(x)
    graph = import_graph(g, x, out, ValueSource(ckpt, weights), name)
    return Model(graph, ckpt, _session_reference(g, x, out, ckpt), source)


def from_arch(ckpt: Checkpoint, arch: str, input_shape=None, arch_args: Optional[dict] = None,
              weights: bool = True) -> Model:
    from . import archs

    size = archs.default_size(arch)
    shape = _parse_shape(input_shape) or (size, size, 3)
    num_classes = archs.num_classes_from(ckpt.names, {n: t.shape for n, t in ckpt.tensors.items()}, arch)
    build = archs.builder(arch, num_classes, **(arch_args or {}))
    return from_builder(ckpt, build, shape, arch, f"--arch {arch}", weights)


_TRAINING_SCOPES = ("gradients", "train", "save", "summaries", "Optimizer", "Momentum", "Adam", "GradientDescent",
                    "RMSProp", "clip", "loss", "Loss", "total_loss", "init", "report_uninitialized")


def _candidate_inputs(graph) -> list:
    out = []
    for op in graph.get_operations():
        if op.type == "Placeholder" and op.outputs[0].dtype == tf().float32 and op.outputs[0].shape.rank == 4:
            out.append(op.outputs[0])
    return out


def _downstream(ops) -> set:
    seen, stack = set(), list(ops)
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(c for o in op.outputs for c in o.consumers())
    return seen


def _candidate_outputs(graph, input_t) -> list:
    """Float rank-2/4 tensors computed from the input alone (no labels, no training ops) that
    nothing else of that kind consumes: the network's outputs."""
    others = [op for op in graph.get_operations() if op.type == "Placeholder" and op is not input_t.op
              and op.outputs[0].shape.rank not in (0, None)]
    tainted = _downstream(others)
    inference = set()
    for name in _downstream([input_t.op]) - tainted:
        op = graph.get_operation_by_name(name)
        if name.split("/")[0] in _TRAINING_SCOPES or op.type.startswith("Assign") or "AssignMovingAvg" in name:
            continue
        inference.add(name)
    result, loss_inputs = [], []
    for name in inference:
        op = graph.get_operation_by_name(name)
        if not op.outputs:
            continue
        t = op.outputs[0]
        if not t.dtype.is_floating or t.shape.rank not in (2, 4):
            continue
        consumers = [c.name for o in op.outputs for c in o.consumers()]
        if any(c in tainted and not c.startswith("gradients") for c in consumers):
            loss_inputs.append(t)  # what the loss compares with the labels: the logits
        if not any(c in inference for c in consumers):
            result.append(t)
    if len(loss_inputs) == 1:
        return loss_inputs
    return sorted(result, key=lambda t: t.name)


def _pick_input(probe, input_name: Optional[str], what: str, input_shape) -> tuple[object, tuple]:
    """The input tensor of an imported graph (named, or the only 4-D float placeholder) and its H,W,C."""
    if input_name is None:
        cands = _candidate_inputs(probe)
        if len(cands) != 1:
            names = ", ".join(t.op.name for t in cands) or "none"
            raise CkptkitError(f"cannot tell the input of {what} (4-D float placeholders: {names}): pass --input NAME")
        input_name = cands[0].name
    old_in = _tensor(probe, input_name, "input")
    shape = _parse_shape(input_shape)
    if shape is None and old_in.shape.rank == 4:
        shape = tuple(old_in.shape.as_list()[1:])
    if shape is None or None in shape:
        raise CkptkitError(f"input {old_in.name} has shape {old_in.shape}: give --input-shape H,W,C")
    return old_in, shape


def _pick_output(graph, x, output_name: Optional[str], what: str):
    """The output tensor: named, or the only candidate (see _candidate_outputs)."""
    if output_name is not None:
        return _tensor(graph, output_name, "output")
    cands = _candidate_outputs(graph, x)
    if len(cands) != 1:
        names = ", ".join(t.op.name for t in cands) or "none"
        raise CkptkitError(f"cannot tell the output of {what} (candidates: {names}): pass --output NAME")
    return cands[0]


def from_meta(ckpt: Checkpoint, meta: str, input_name=None, output_name=None, input_shape=None,
              weights: bool = True) -> Model:
    _tf = tf()
    if not os.path.isfile(meta):
        raise CkptkitError(f"meta graph {meta} does not exist: give --meta PATH, --arch NAME or --graph frozen.pb")
    from tensorflow.core.protobuf import meta_graph_pb2

    mgd = meta_graph_pb2.MetaGraphDef()
    try:
        with open(meta, "rb") as f:
            mgd.ParseFromString(f.read())
    except Exception as err:
        raise CkptkitError(f"meta graph {meta} cannot be parsed ({type(err).__name__}): is it a .meta file?") from None
    probe = _tf.Graph()
    with probe.as_default():
        try:
            tf1.train.import_meta_graph(mgd, clear_devices=True)
        except Exception as err:
            raise CkptkitError(f"meta graph {meta} cannot be imported ({str(err).splitlines()[0][:200]})") from None
    old_in, shape = _pick_input(probe, input_name, meta, input_shape)
    g = _tf.Graph()
    with g.as_default():
        x = _placeholder(shape)
        tf1.train.import_meta_graph(mgd, clear_devices=True, input_map={old_in.name: x})
    out = _pick_output(g, x, output_name, meta)
    graph = import_graph(g, x, out, ValueSource(ckpt, weights), os.path.basename(ckpt.prefix))
    from .tf_exec import reference_fn

    return Model(graph, ckpt, reference_fn(graph), f"--meta {meta}")


def from_frozen(path: str, ckpt: Optional[Checkpoint], input_name=None, output_name=None, input_shape=None) -> Model:
    _tf = tf()
    gd = _tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as f:
            gd.ParseFromString(f.read())
    except FileNotFoundError:
        raise CkptkitError(f"frozen graph {path} does not exist") from None
    except Exception as err:
        raise CkptkitError(f"frozen graph {path} cannot be parsed ({type(err).__name__}): is it a GraphDef .pb?") from None
    probe = _tf.Graph()
    with probe.as_default():
        _tf.graph_util.import_graph_def(gd, name="")
    old_in, shape = _pick_input(probe, input_name, path, input_shape)
    g = _tf.Graph()
    with g.as_default():
        x = _placeholder(shape)
        _tf.graph_util.import_graph_def(gd, input_map={old_in.name: x}, name="")
    out = _pick_output(g, x, output_name, path)
    graph = import_graph(g, x, out, ValueSource(ckpt), os.path.splitext(os.path.basename(path))[0])
    return Model(graph, ckpt, _session_reference(g, x, out, ckpt), f"--graph {path}")


def load(checkpoint: Optional[str] = None, *, meta: Optional[str] = None, arch: Optional[str] = None,
         frozen: Optional[str] = None, builder: Optional[Builder] = None, input_name: Optional[str] = None,
         output_name: Optional[str] = None, input_shape=None, arch_args: Optional[dict] = None,
         weights: bool = True) -> Model:
    """Load a checkpoint with its topology into a Model (IR + TF reference).

    Exactly one topology source is used: `builder`, `arch`, `frozen`, `meta`, or else the
    `.meta` beside the checkpoint. `weights=False` reads no tensor values (zero placeholders
    stand in): enough for the topology, shapes and attributes such as BN epsilons."""
    given = [k for k, v in (("--arch", arch), ("--graph", frozen), ("--meta", meta), ("builder", builder)) if v]
    if len(given) > 1:
        raise CkptkitError(f"give one topology source, not {' and '.join(given)}")
    ckpt = Checkpoint(checkpoint) if checkpoint is not None else None
    if frozen:
        return from_frozen(frozen, ckpt, input_name, output_name, input_shape)
    if builder is not None and ckpt is None:  # a builder with constant weights needs no checkpoint
        shape = _parse_shape(input_shape)
        if shape is None:
            raise CkptkitError("a builder needs input_shape=(H, W, C)")
        return from_builder(None, builder, shape)
    if ckpt is None:
        raise CkptkitError("no checkpoint given: pass CKPT (a prefix, one of its files, or its folder)")
    if builder is not None:
        shape = _parse_shape(input_shape)
        if shape is None:
            raise CkptkitError("a builder needs input_shape=(H, W, C)")
        return from_builder(ckpt, builder, shape, weights=weights)
    if arch:
        return from_arch(ckpt, arch, input_shape, arch_args, weights)
    meta = meta or ckpt.meta_path
    if meta is None:
        raise CkptkitError(f"no topology for {ckpt.prefix}: no .meta beside it; pass --arch NAME, --meta PATH or --graph frozen.pb")
    return from_meta(ckpt, meta, input_name, output_name, input_shape, weights)
