"""Topology sources: where the graph of a checkpoint comes from, and its TF reference.

`load()` turns a checkpoint plus one topology source (the `.meta` beside it or
given, `--arch NAME`, a frozen GraphDef, or a builder callable) into a `Model`:
the inference-path IR and a TensorFlow reference forward pass.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ckptkit.core.lazy_tf import eager, graph_building, tf, tf1
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph
from ckptkit.tf_import.walker import ValueSource, import_graph, import_topology

log = logging.getLogger("ckptkit")

Builder = Callable[[object], object]  # inputs tensor -> output tensor, in the current tf.Graph


COLLECT_BYTES = 64 * 2**20  # below this, a released session's memory is not worth trimming malloc's heap for


class LazyReference:
    """A reference forward pass built on first use (a topology-only load never pays for it)."""

    def __init__(self, make: Callable[[], Callable[[np.ndarray], np.ndarray]], kind: str):
        self._make, self._fn, self.kind = make, None, kind
        self.independent = True  # False once `make` fell back to ckptkit's own import (see Comparison.independent)
        self._last: Optional[tuple[bytes, np.ndarray]] = None  # several exports verify on the same inputs

    @eager
    def __call__(self, x: np.ndarray) -> np.ndarray:
        key = np.ascontiguousarray(x).tobytes() + str(x.shape).encode()
        if self._last is not None and self._last[0] == key:
            return self._last[1].copy()
        try:
            if self._fn is None:
                self._fn = self._make()
                self.independent = getattr(self._fn, "independent", True)
            y = self._fn(x)
        except CkptkitError:
            raise
        except Exception as err:  # TensorFlow running the user's graph: any of its many error types
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CkptkitError(f"TensorFlow cannot run the graph to make the reference output ({first}): the "
                               "graph file is damaged or needs another TensorFlow; re-export it, or use --arch") from None
        self._last = (key, np.array(y))
        return y

    def release(self) -> None:
        """Free the TF session (it holds every weight) but keep the last output: a call on the same inputs
        needs no session, any other builds it again."""
        import gc

        if self._fn is None:
            return
        held = self.held_bytes
        close = getattr(self._fn, "close", None)
        if close is not None:
            close()
        self._fn = None
        if held is None:  # not a gated run: its memory may sit in reference cycles (a full collection: ~0.3 s)
            gc.collect()
        if held is None or held >= COLLECT_BYTES:
            from ckptkit.core.pages import trim

            trim()  # what malloc kept of TF's freed activations goes back before a runtime loads

    @property
    def held_bytes(self) -> Optional[int]:
        """Weight bytes the built reference holds (None: not known)."""
        return getattr(self._fn, "held_bytes", None)

    def close(self) -> None:
        """Release the reference and forget its last output: the next call builds it again."""
        self._last = None
        self.release()


@dataclass
class Model:
    graph: Graph
    checkpoint: Optional[Checkpoint]
    reference: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    source: str = ""

    @property
    def input_shape(self) -> tuple:
        return self.graph.input_shape


def _session_reference(graph, input_t, output_t, ckpt: Optional[Checkpoint], feed: Optional[dict] = None,
                       kind: str = "the graph's own TensorFlow ops") -> LazyReference:
    """Run a tf.Graph's own ops through ckptkit's gateway (checked against the allowlist, variables set from
    the checkpoint by ckptkit's reader): a lazy session."""
    from ckptkit.run.gateway import reference

    make_run = reference(graph, input_t, output_t, ckpt, feed)
    return LazyReference(make_run, kind)


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
    if min(h, w, c) < 1:
        raise CkptkitError(f"--input-shape {text} has a size below 1: give positive H,W,C (e.g. 224,224,3)")
    return h, w, c


def _tensor(graph, name: str, what: str, candidates: Sequence[str] = ()):
    """The tensor `name` names (an op's first output when no :N is given), or one line with the nearest
    names and the detected candidates."""
    import difflib

    name = name if ":" in name else name + ":0"
    try:
        return graph.get_tensor_by_name(name)
    except (KeyError, ValueError):
        ops = [op.name for op in graph.get_operations()]
        near = difflib.get_close_matches(name.split(":")[0], ops, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        listed = f"candidates: {', '.join(candidates)}" if candidates else "`ckptkit inspect CKPT --io` lists " \
            "the candidates"
        raise CkptkitError(f"{what} {name} is not in the graph: {hint}({listed}; any op name works, as Netron "
                           "shows it)") from None


def _kept_last(cache: dict, key, make: Callable):
    """`make()`, or what it gave for the same `key` last time: one entry is kept (a graph's structure, no weights),
    for a command that asks for the same graph more than once."""
    if key not in cache:
        cache.clear()
        cache[key] = make()
    return cache[key]


_BUILT: dict = {}  # the last --arch graph built, by what it was built from


def _build(builder: Builder, input_shape: Sequence[int]):
    """(tf.Graph, input placeholder, output) of `builder` at `input_shape`. An --arch network built again with the
    same arguments in one command (fold: the topology, then the graph beside the output) is the same graph, taken
    from the last build; nothing adds to a built graph."""
    key = getattr(builder, "ckptkit_build_key", None)
    if key is not None:  # an --arch network: also kept on disk between commands (ckptkit.topology.graph_cache)
        from ckptkit.topology import graph_cache

        return _kept_last(_BUILT, (key, tuple(input_shape)),
                          lambda: graph_cache.graph(key, input_shape, lambda: _build_new(builder, input_shape)))
    return _build_new(builder, input_shape)


def _build_new(builder: Builder, input_shape: Sequence[int]):
    import warnings

    from ckptkit.core.phases import phase

    g = tf().Graph()
    with phase("build TF graph"), graph_building(), g.as_default(), warnings.catch_warnings():
        # tf_slim on TF 2.21 warns that `layer.apply` and tf.layers are deprecated at every layer: noise here
        warnings.filterwarnings("ignore", message=r".*(`layer.apply`|`tf.layers.*`) is deprecated", category=UserWarning)
        x = _placeholder(input_shape)
        out = builder(x)
    if not hasattr(out, "op") or getattr(out, "graph", None) is not g:
        raise CkptkitError(f"the builder returned {type(out).__name__}, not a tensor of its graph: return the "
                           "output tensor (e.g. the logits)")
    return g, x, out


def from_builder(ckpt: Optional[Checkpoint], builder: Builder, input_shape: Sequence[int], name: str = "model",
                 source: str = "builder", weights: bool = True) -> Model:
    g, x, out = _build(builder, input_shape)
    graph = import_graph(g, x, out, ValueSource(ckpt, weights), name)
    return Model(graph, ckpt, _session_reference(g, x, out, ckpt), source)


_SIZES_SAID: set = set()  # the size an --arch network was built at is said once per process


def _arch_builder(ckpt: Checkpoint, arch: str, input_shape, arch_args: Optional[dict]):
    from ckptkit.topology import archs

    size = archs.default_size(arch)
    shape = _parse_shape(input_shape) or (size, size, 3)
    if input_shape is None and (arch, size) not in _SIZES_SAID:
        _SIZES_SAID.add((arch, size))
        log.info("--arch %s built at %dx%dx3, its standard size: if it was trained at another, pass --input-shape "
                 "H,W,3 (what is written and verified has the size it was built at)", arch, size, size)
    num_classes = archs.num_classes_from(ckpt.names, {n: t.shape for n, t in ckpt.tensors.items()}, arch)
    build = archs.builder(arch, num_classes, **(arch_args or {}))

    def checked(inputs):
        try:
            return build(inputs)
        except (TypeError, ValueError) as err:  # the network function refused an argument or the input size
            given = " ".join(f"--arch-arg {k}={v}" for k, v in (arch_args or {}).items())
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CkptkitError(f"--arch {arch} {given} at input {','.join(map(str, shape))} cannot be built "
                               f"({first}): check the --arch-arg names and values and --input-shape") from None

    checked.ckptkit_build_key = (arch, repr(sorted((arch_args or {}).items())), num_classes)
    return checked, shape


def from_arch(ckpt: Checkpoint, arch: str, input_shape=None, arch_args: Optional[dict] = None,
              weights: bool = True) -> Model:
    build, shape = _arch_builder(ckpt, arch, input_shape, arch_args)
    return from_builder(ckpt, build, shape, arch, f"--arch {arch}", weights)


_TRAINING_SCOPES = ("gradients", "train", "save", "summaries", "Optimizer", "Momentum", "Adam", "GradientDescent",
                    "RMSProp", "clip", "loss", "Loss", "total_loss", "init", "report_uninitialized")


_PIPELINE_OPS = ("QueueDequeueV2", "QueueDequeueManyV2", "QueueDequeueUpToV2", "IteratorGetNext",
                 "IteratorGetNextSync")


def _candidate_inputs(graph) -> list:
    """4-D float placeholders; without any, the 4-D float outputs of an input pipeline (slim's training
    scripts feed images from a queue or a tf.data iterator, not a placeholder)."""
    f32 = tf().float32
    out = [op.outputs[0] for op in graph.get_operations()
           if op.type == "Placeholder" and op.outputs[0].dtype == f32 and op.outputs[0].shape.rank == 4]
    if not out:
        out = [t for op in graph.get_operations() if op.type in _PIPELINE_OPS for t in op.outputs
               if t.dtype == f32 and (t.shape.rank == 4 or len(_queue_shape(t) or ()) == 3)]
    return out


def _queue_shape(t) -> Optional[tuple]:
    """H,W,C of a queue's dequeued component, from the queue's `shapes` attr (shape inference loses it)."""
    if t.op.type not in _PIPELINE_OPS[:3] or not t.op.inputs:
        return None
    try:
        shapes = t.op.inputs[0].op.get_attr("shapes")
    except (ValueError, AttributeError):
        return None
    if t.value_index >= len(shapes):
        return None
    dims = [d.size for d in shapes[t.value_index].dim] if hasattr(shapes[t.value_index], "dim") else \
        list(tf().TensorShape(shapes[t.value_index]).as_list())
    return tuple(dims) if dims and None not in dims and -1 not in dims else None


def _downstream(ops) -> set:
    seen, stack = set(), list(ops)
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(c for o in op.outputs for c in o.consumers())
    return seen


def _output_candidates(graph, input_t) -> tuple[list, list]:
    """(what the loss compares with the labels, i.e. the logits; sinks): float rank-2/4 tensors computed
    from the input alone (no labels, no training ops), the sinks being those nothing else of that kind
    consumes."""
    # labels, masks: other placeholders, and the pipeline's other outputs (a tf.data iterator or a queue gives
    # images and labels from one op: only the labels' consumers are tainted)
    others = [t for op in graph.get_operations() for t in op.outputs
              if t is not input_t and ((op.type == "Placeholder" and op is not input_t.op and t.shape.rank not in
                                        (0, None)) or op.type in _PIPELINE_OPS)]
    tainted = _downstream([c for t in others for c in t.consumers()])
    inference = set()
    for name in _downstream([input_t.op]) - tainted - {input_t.op.name}:  # the input is never an output
        op = graph.get_operation_by_name(name)
        if name.split("/")[0] in _TRAINING_SCOPES or op.type.startswith("Assign") or "AssignMovingAvg" in name:
            continue
        inference.add(name)
    sinks, loss_inputs = [], []
    for name in inference:
        op = graph.get_operation_by_name(name)
        if not op.outputs:
            continue
        t = op.outputs[0]
        if not t.dtype.is_floating or t.shape.rank not in (2, 4):
            continue
        consumers = [c.name for o in op.outputs for c in o.consumers()]
        if any(c in tainted and not c.startswith("gradients") for c in consumers):
            loss_inputs.append(_per_pixel(t))
        if not any(c in inference for c in consumers):
            sinks.append(t)
    by_name = lambda ts: sorted(ts, key=lambda t: t.name)  # noqa: E731
    return by_name(loss_inputs), by_name(sinks)


def _per_pixel(t):
    """A dense-prediction loss reads its logits reshaped to [N*H*W, C]: the network's output is the
    [N, H, W, C] tensor before that reshape."""
    if t.op.type == "Reshape" and t.shape.rank == 2:
        src = t.op.inputs[0]
        if src.shape.rank == 4 and src.shape[-1] == t.shape[-1] and tuple(src.shape[1:3]) != (1, 1):
            return src
    return t


def _candidate_outputs(graph, input_t) -> list:
    """The network's output: the logits the loss reads when there is exactly one, else the sinks."""
    loss_inputs, sinks = _output_candidates(graph, input_t)
    return loss_inputs if len(loss_inputs) == 1 else sinks


def _all_outputs(graph, input_t) -> list:
    """Every candidate output (logits and sinks): everything the inference path computes."""
    loss_inputs, sinks = _output_candidates(graph, input_t)
    return loss_inputs + [t for t in sinks if t not in loss_inputs]


def _pick_input(probe, input_name: Optional[str], what: str, input_shape) -> tuple[object, tuple]:
    """The input tensor of an imported graph (named, or the only 4-D float placeholder) and its H,W,C."""
    if input_name is None:
        cands = _candidate_inputs(probe)
        if len(cands) != 1:
            names = ", ".join(t.op.name for t in cands) or "none"
            raise CkptkitError(f"cannot tell the input of {what} (4-D float placeholders: {names}): pass --input NAME")
        input_name = cands[0].name
    old_in = _tensor(probe, input_name, "--inputs", [t.name for t in _candidate_inputs(probe)])
    shape = _parse_shape(input_shape)
    recorded = old_in.shape.as_list()[1:] if old_in.shape.rank == 4 else None
    if shape is not None and recorded and recorded[-1] is not None and shape[-1] != recorded[-1]:
        raise CkptkitError(f"--input-shape {','.join(map(str, shape))} has {shape[-1]} channel(s) but input "
                           f"{old_in.op.name} of {what} takes {recorded[-1]}: give H,W,{recorded[-1]}")
    if shape is None and old_in.shape.rank == 4:
        shape = tuple(old_in.shape.as_list()[1:])
    if (shape is None or None in shape) and _queue_shape(old_in):
        shape = _queue_shape(old_in)
    if shape is None or None in shape:
        raise CkptkitError(f"input {old_in.name} has shape {old_in.shape}: give --input-shape H,W,C")
    return old_in, shape


def _pick_output(graph, x, output_name: Optional[str], what: str):
    """The output tensor: named, or the only candidate (see _candidate_outputs)."""
    if output_name is not None:
        return _tensor(graph, output_name, "--outputs", [t.name for t in _all_outputs(graph, x)])
    cands = _candidate_outputs(graph, x)
    if len(cands) != 1:
        logits, sinks = _output_candidates(graph, x)
        names = "; ".join(f"{kind}: {', '.join(t.op.name for t in ts)}" for kind, ts in
                          (("read by the loss (logits)", logits), ("last computed", sinks)) if ts) or "none found"
        raise CkptkitError(f"cannot tell the output of {what} ({names}): pass --outputs NAME "
                           "(`ckptkit inspect CKPT --io` lists them with shapes)")
    return cands[0]


def graph_io(checkpoint: str, meta: Optional[str] = None) -> dict:
    """Candidate inputs and outputs of the graph beside a checkpoint (or `meta`), with shapes, no weights read:
    {"inputs": [{name, shape}], "outputs": [{name, shape, role: logits|sink}]}."""
    ckpt = Checkpoint(checkpoint)
    meta = meta or ckpt.meta_path
    if meta is None:
        raise CkptkitError(f"no graph for {ckpt.prefix}: no .meta beside it (pass --meta PATH)")
    probe = _probe(_read_meta(meta), meta)
    shape = lambda t: t.shape.as_list() if t.shape.rank is not None else None  # noqa: E731
    inputs, outputs = [], []
    for t in _candidate_inputs(probe):
        inputs.append({"name": t.name, "shape": shape(t) if t.shape.rank == 4 else [None, *(_queue_shape(t) or [])]})
        logits, sinks = _output_candidates(probe, t)
        for role, ts in (("logits", logits), ("sink", sinks)):
            for o in ts:
                if all(o.name != seen["name"] for seen in outputs):
                    outputs.append({"name": o.name, "shape": shape(o), "role": role, "input": t.name})
    return {"graph": meta, "inputs": inputs, "outputs": outputs}


def followed_outputs(meta: str, input_name: Optional[str] = None) -> list[str]:
    """The outputs an unnamed-output load chooses between (the loss's logits when there is one, else every
    sink): what a command that must keep them all (fold's BN-free graph) writes."""
    probe = _probe(_read_meta(meta), meta)
    old_in, _ = _pick_input(probe, input_name, meta, None) if input_name else (_candidate_inputs(probe)[0], None)
    return [t.name for t in _candidate_outputs(probe, old_in)]


def strip_recorded_shapes(graph_def) -> None:
    """Drop the `_output_shapes` a GraphDef records, so shapes are inferred anew (another input size)."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    for node in nodes:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    for f in graph_def.library.function:
        for attrs in f.arg_attr.values():
            if "_output_shapes" in attrs.attr:
                del attrs.attr["_output_shapes"]


def _read_meta(meta: str):
    if not os.path.isfile(meta):
        raise CkptkitError(f"meta graph {meta} does not exist: give --meta PATH, --arch NAME or --graph frozen.pb")
    tf()  # TensorFlow's first import goes through ckptkit.core.lazy_tf, which keeps its start-up chatter off stderr
    from tensorflow.core.protobuf import meta_graph_pb2

    from ckptkit.core.safe_io import MAX_GRAPH_BYTES, read_bounded

    data = read_bounded(meta, "meta graph", MAX_GRAPH_BYTES)

    def parse():
        mgd = meta_graph_pb2.MetaGraphDef()
        try:
            mgd.ParseFromString(data)
        except Exception as err:
            raise CkptkitError(f"meta graph {meta} cannot be parsed ({type(err).__name__}): is it a .meta "
                               "file?") from None
        strip_recorded_shapes(mgd.graph_def)
        from ckptkit.tf_import.const_eval import check_graph_def

        check_graph_def(mgd.graph_def, f"meta graph {meta}")  # before TF's shape inference folds its constants
        return mgd

    # a command reads its graph up to four times (fold: units, outputs, graph, reference): parsed, checked once
    copy = meta_graph_pb2.MetaGraphDef()  # callers may edit what they get
    copy.CopyFrom(_kept_last(_METAS, hashlib.sha1(data).digest(), parse))
    return copy


_METAS: dict = {}  # the last MetaGraphDef read, parsed and checked, by the digest of the file's bytes


def _import_meta(mgd, meta: str, replace: Optional[str] = None, shape=None):
    """Import a MetaGraphDef into a new tf.Graph; `replace`: the input tensor a fresh placeholder of
    `shape` stands in for."""
    from ckptkit.core.phases import phase

    g = tf().Graph()
    with phase("build TF graph"), g.as_default():
        x = _placeholder(shape) if replace else None
        try:
            pristine = type(mgd)()  # import_meta_graph edits what it is given (clear_devices)
            pristine.CopyFrom(mgd)
            tf1.train.import_meta_graph(pristine, clear_devices=True,
                                        input_map={replace: x} if replace else None)
        except Exception as err:  # TF raises ValueError/InvalidArgumentError/... with shape details
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            if shape is not None:
                raise CkptkitError(f"meta graph {meta} does not build at input size {','.join(map(str, shape))} "
                                   f"({first}): it fixes its input size somewhere (e.g. a reshape before a fully "
                                   "connected layer); export at the size it was trained at") from None
            raise CkptkitError(f"meta graph {meta} cannot be imported ({first})") from None
    return g, x


_PROBES: dict = {}  # the last probe graph, by the digest of its MetaGraphDef
_FED: dict = {}  # the last graph imported with a fresh input, by that digest, the input replaced and the size


def _digest(mgd) -> bytes:
    return hashlib.sha1(mgd.SerializeToString(deterministic=True)).digest()


def _probe(mgd, meta: str, key: Optional[bytes] = None):
    """The MetaGraphDef imported as it is (inputs and outputs are picked from it; nothing writes to it). One
    command asks several times (fold: the topology, the folded graph, its reference): the last one is kept,
    keyed by the content, so an edited file is imported anew."""
    return _kept_last(_PROBES, key or _digest(mgd), lambda: _import_meta(mgd, meta)[0])


def _meta_graphs(ckpt: Checkpoint, meta: str, input_name=None, input_shape=None):
    """(MetaGraphDef, tf.Graph with the input replaced by a fresh placeholder, that placeholder, old input)."""
    mgd = _read_meta(meta)
    key = _digest(mgd)
    probe = _probe(mgd, meta, key)
    old_in, shape = _pick_input(probe, input_name, meta, input_shape)
    recorded = tuple(old_in.shape.as_list()[1:]) if old_in.shape.rank == 4 else None
    if recorded and tuple(shape) != recorded and _records_cond_shapes(mgd.graph_def):
        # tf.cond (control flow v2) fixes its outputs' shapes in the graph; they cannot be inferred anew
        raise CkptkitError(f"meta graph {meta} was built for input {','.join(map(str, recorded))} and records that "
                           f"size in its tf.cond ops, so it cannot run at {','.join(map(str, shape))}: use --arch NAME "
                           "(or a builder in Python), which builds the network at any size")
    # fold reads the topology, then loads the same graph for the BN-free one: imported once (nothing writes to it)
    g, x = _kept_last(_FED, (key, old_in.name, tuple(shape)), lambda: _import_meta(mgd, meta, old_in.name, shape))
    return mgd, g, x, old_in


def _records_cond_shapes(graph_def) -> bool:
    return any(n.op in ("If", "StatelessIf", "Case", "StatelessCase") and n.attr["output_shapes"].list.shape
               for n in graph_def.node)


def _inference_reference(mgd, meta: str, ckpt: Checkpoint, old_in, out_name: str, shape, ir: Graph) -> Callable:
    """The user's own training graph run in inference mode (see inference_graph); falls back to our IR
    run with TF kernels, saying so, when the graph cannot be rewritten."""
    from ckptkit.run import inference_graph
    from ckptkit.run.tf_exec import reference_fn

    def make() -> Callable:
        try:
            probe = _probe(mgd, meta)
            rewrite = inference_graph.plan(probe, probe.get_tensor_by_name(out_name))
            changed = type(mgd)()
            changed.CopyFrom(mgd)
            inference_graph.apply(changed.graph_def, rewrite)
            g, x = _import_meta(changed, meta, old_in.name, shape)
            out = g.get_tensor_by_name(out_name)
            feed = {g.get_tensor_by_name(n): False for n in rewrite.feed_false}
        except CkptkitError as err:
            log.warning("verification reference: %s; checking against ckptkit's own import run with TensorFlow "
                        "kernels instead, which shares the importer's assumptions: NOT an independent verification",
                        err)
            fn = reference_fn(ir)
            fn.independent = False
            return fn
        return _session_reference(g, x, out, ckpt, feed)

    return LazyReference(make, "the training graph's own ops in inference mode")


_GENERIC = {"model", "ckpt", "checkpoint", "checkpoints", "train", "training", "logs", "output", "outputs", "export",
            "frozen", "graph", "frozen_graph", "frozen_inference_graph", "tmp"}


def model_name(output: str, path: str) -> str:
    """A name for the model (Caffe's net name, file names in a folder): the network's top scope
    (`resnet_v1_50/logits/BiasAdd:0` -> resnet_v1_50), else the folder or file it came from."""
    parts = output.split(":")[0].split("/")
    if len(parts) >= 3 and parts[0].lower() not in _GENERIC:
        return parts[0]
    path = os.path.abspath(path)
    for candidate in (os.path.basename(os.path.dirname(path)), os.path.basename(path).split(".")[0]):
        if candidate and candidate.lower() not in _GENERIC:
            return candidate
    return "model"


def from_meta(ckpt: Checkpoint, meta: str, input_name=None, output_name=None, input_shape=None,
              weights: bool = True) -> Model:
    mgd, g, x, old_in = _meta_graphs(ckpt, meta, input_name, input_shape)
    out = _pick_output(g, x, output_name, meta)
    graph = import_graph(g, x, out, ValueSource(ckpt, weights), model_name(out.name, ckpt.prefix))
    graph.input_names = [old_in.name]  # the graph's own input name (exports keep it), not our placeholder's
    reference = _inference_reference(mgd, meta, ckpt, old_in, out.name, graph.input_shape[1:], graph)
    return Model(graph, ckpt, reference, f"--meta {meta}")


def _frozen_graphs(path: str, input_name=None, input_shape=None):
    _tf = tf()
    from ckptkit.core.safe_io import MAX_GRAPH_BYTES, read_bounded

    if not os.path.lexists(path):
        raise CkptkitError(f"frozen graph {path} does not exist")
    data = read_bounded(path, "frozen graph", MAX_GRAPH_BYTES)
    gd = _tf.compat.v1.GraphDef()
    try:
        gd.ParseFromString(data)
    except Exception as err:
        raise CkptkitError(f"frozen graph {path} cannot be parsed ({type(err).__name__}): is it a GraphDef .pb?") from None
    strip_recorded_shapes(gd)
    from ckptkit.tf_import.const_eval import check_graph_def

    check_graph_def(gd, f"frozen graph {path}")  # before TF's shape inference folds its constants
    probe = _tf.Graph()
    with probe.as_default():
        try:
            _tf.graph_util.import_graph_def(gd, name="")
        except Exception as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CkptkitError(f"graph {path} cannot be imported ({first})") from None
    old_in, shape = _pick_input(probe, input_name, path, input_shape)
    g = _tf.Graph()
    with g.as_default():
        x = _placeholder(shape)
        try:
            _tf.graph_util.import_graph_def(gd, input_map={old_in.name: x}, name="")
        except Exception as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CkptkitError(f"graph {path} does not build at input size {','.join(map(str, shape))} ({first}): "
                               "export at the size it was made for") from None
    return g, x, old_in.name


def from_frozen(path: str, ckpt: Optional[Checkpoint], input_name=None, output_name=None, input_shape=None) -> Model:
    g, x, old_name = _frozen_graphs(path, input_name, input_shape)
    out = _pick_output(g, x, output_name, path)
    graph = import_graph(g, x, out, ValueSource(ckpt), model_name(out.name, path))
    graph.input_names = [old_name]
    return Model(graph, ckpt, _session_reference(g, x, out, ckpt), f"--graph {path}")


@dataclass
class GraphTopology:
    """Everything a graph computes from its input, for finding each BatchNorm (no weights read)."""

    graph: Graph
    source: str  # "--arch NAME", "graph PATH", "builder"
    skipped: dict[str, str] = field(default_factory=dict)  # outputs that could not be imported -> why


def topology(checkpoint: str, *, meta: Optional[str] = None, arch: Optional[str] = None,
             arch_args: Optional[dict] = None, builder: Optional[Builder] = None, input_shape=None,
             input_name: Optional[str] = None) -> GraphTopology:
    """The IR of every output of the graph (`builder`, `arch`, `meta`, else the .meta beside the checkpoint),
    read without loading weights: what fold and inspect use to find each BN, its epsilon and its layer.
    Needs no output node: every candidate output is followed."""
    ckpt = Checkpoint(checkpoint)
    values = ValueSource(ckpt, weights=False)
    if builder is not None or arch:
        if arch:
            builder, shape = _arch_builder(ckpt, arch, input_shape, arch_args)
            source = f"--arch {arch}"
        else:
            shape, source = _parse_shape(input_shape), "builder"
            if shape is None:
                raise CkptkitError("a builder needs input_shape=(H, W, C)")
        g, x, out = _build(builder, shape)
    else:
        meta = meta or ckpt.meta_path
        if meta is None:
            raise CkptkitError(f"no graph for {ckpt.prefix}: no .meta beside it")
        if input_name is None:  # several candidate inputs: every one is followed, in turn
            probe = _probe(_read_meta(meta), meta)
            names = [t.name for t in _candidate_inputs(probe)]
            if len(names) > 1:
                parts, errors = [], []
                for n in names:
                    try:
                        parts.append(topology(checkpoint, meta=meta, input_shape=input_shape, input_name=n))
                    except CkptkitError as err:  # an input nothing of interest hangs off
                        errors.append(err)
                if not parts:
                    raise errors[0]
                return _union(parts)
        _, g, x, _ = _meta_graphs(ckpt, meta, input_name, input_shape)
        out, source = None, f"graph {meta}"
    outputs = ([out] if out is not None else []) + [t for t in _all_outputs(g, x) if t is not out]
    graph, skipped = import_topology(g, x, outputs, values, os.path.basename(ckpt.prefix))
    return GraphTopology(graph, source, skipped)


def _union(parts: list[GraphTopology]) -> GraphTopology:
    """One GraphTopology of the graphs reached from several inputs (BatchNorms found from any of them)."""
    nodes, seen = [], set()
    for part in parts:
        for n in part.graph.nodes:
            if n.name not in seen:
                seen.add(n.name)
                nodes.append(n)
    outputs = [o for part in parts for o in part.graph.outputs]
    inputs = [i for part in parts for i in part.graph.inputs]
    skipped = {k: v for part in parts for k, v in part.skipped.items()}
    return GraphTopology(Graph(nodes, inputs, outputs, parts[0].graph.name), parts[0].source, skipped)


@eager
def load(checkpoint: Optional[str] = None, *, meta: Optional[str] = None, arch: Optional[str] = None,
         frozen: Optional[str] = None, builder: Optional[Builder] = None, input_name: Optional[str] = None,
         output_name: Optional[str] = None, input_shape=None, arch_args: Optional[dict] = None,
         weights: bool = True) -> Model:
    """Load a checkpoint with its topology into a Model (IR + TF reference).

    Args:
        checkpoint: prefix (`model.ckpt-1234`), one of its files, or its folder (optional with `frozen`).
        meta / arch / frozen / builder: the topology, exactly one (default: the `.meta` beside the
            checkpoint). `builder` maps an NHWC input tensor to the output tensor (needs `input_shape`).
        input_name, output_name: graph tensors (default: detected when unambiguous).
        input_shape: (H, W, C) or "H,W,C"; arch_args: extra keyword arguments of the `arch` network.
        weights: False reads no tensor values (zeros stand in): enough for topology and epsilons.
    Returns:
        Model: `.graph` (ckptkit's IR), `.reference(x)` (TensorFlow's inference output), `.checkpoint`.
    Example:
        >>> model = ckptkit.load("fixtures/digits/broken")
        >>> model.reference(np.zeros((1, 8, 8, 1), np.float32)).shape
        (1, 10)
    """
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
    beside = meta is None
    meta = meta or ckpt.meta_path
    if meta is None:
        raise CkptkitError(f"no topology for {ckpt.prefix}: no .meta beside it; pass --arch NAME, --meta PATH or --graph frozen.pb")
    model = from_meta(ckpt, meta, input_name, output_name, input_shape, weights)
    if beside:
        model.source = f"{meta} (the .meta beside the checkpoint)"
    return model
