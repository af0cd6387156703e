"""The one gateway through which ckptkit runs anything that came from a user's graph.

A `.meta` or GraphDef is a program: run as it is, it may write files, print to them, save checkpoints or
call Python. ckptkit runs it only as data. Before a session exists, `plan()` computes everything the run can
reach from its fetches, by data *and* control edges, including the bodies of every function reachable from
them (If/While/Case/PartitionedCall branches, nested, and function attrs of any op), and checks each op
against `ckptkit.run.allowlist.ALLOWED` (pure computation):
  * an op outside it that a value depends on (a data edge) refuses the run, naming the op, its type and
    the node that needs it;
  * an op outside it reached only through a control edge is cut, with a warning naming it: a control edge
    cannot change a value (assignments and assertions, training's own bookkeeping, are cut quietly);
  * a tensor whose static size exceeds MAX_TENSOR_BYTES (a `Fill` or `Const` of tens of GB) refuses the run.
The session then runs a pruned copy holding only what was checked: nothing unreached can run either.
Variables take their values from ckptkit's own checkpoint reader, fed at each run in place of what the
variable gives (a resource variable handed to a function is assigned by ckptkit's own op): no Save/Restore
op of the user's graph ever runs. `GatedRun` is the only place ckptkit creates a session over a user graph.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np

from ckptkit.run import allowlist
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.core.errors import CkptkitError
from ckptkit.core.safe_io import MAX_TENSOR_BYTES

log = logging.getLogger("ckptkit")

ASSIGN_BATCH_BYTES = 256 * 2**20  # values in flight per assignment run (variables a run cannot feed)
RUN_SECONDS = float(os.environ.get("CKPTKIT_RUN_SECONDS", 600))  # wall-clock limit of one reference run
LOOP_OPS = {"While", "StatelessWhile", "Enter", "LoopCond", "NextIteration"}


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 16 * 2**30


# memory one reference run may add to the process (its shapes may be known only at run time): half the machine
RUN_MEMORY = int(float(os.environ.get("CKPTKIT_RUN_MEMORY", max(4 * 2**30, _physical_memory() // 2))))


def _data_bytes() -> Optional[int]:
    """The process's data segment as RLIMIT_DATA counts it (VmData), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def memory_budget(extra: Optional[int] = None):
    """RLIMIT_DATA at what the process holds plus `extra` (RUN_MEMORY) while a reference run goes: TensorFlow's
    allocations past it fail as ResourceExhaustedError (one clear line), not the machine's memory."""
    import resource

    now = _data_bytes()
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    except (OSError, ValueError):
        now = None
    limit = None if now is None else now + (RUN_MEMORY if extra is None else extra)
    if limit is None or (hard != resource.RLIM_INFINITY and limit > hard) or \
            (soft != resource.RLIM_INFINITY and limit >= soft):
        yield  # a tighter limit is already set (or none can be read): leave it
        return
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@dataclass
class Refusal:
    op: str
    op_type: str
    needed_by: str
    where: str = "the graph"
    reason: str = ""

    def message(self) -> str:
        if self.reason:
            return f"op {self.op} ({self.op_type}) in {self.where}, read by {self.needed_by}, {self.reason}"
        why = "not pure computation" if self.op_type not in allowlist.ALLOWED else "a function it calls is refused"
        return (f"the output needs op {self.op} ({self.op_type}) in {self.where}, read by {self.needed_by}: ckptkit "
                f"never runs it ({why}; a graph is data, not code): end the export before it (ckptkit export CKPT --outputs NAME …), or use --arch")


@dataclass
class Cut:
    consumer: str
    op: str
    op_type: str
    where: str = "the graph"
    reason: str = ""


@dataclass
class Plan:
    graph_def: object  # the pruned GraphDef: only checked nodes and functions, cut control edges removed
    cut: list[Cut] = field(default_factory=list)

    def warn(self) -> None:
        """One warning per cut op that is not training bookkeeping."""
        seen = set()
        for c in self.cut:
            if c.op_type in allowlist.QUIET_CUT or (c.where, c.op) in seen:
                log.debug("cut control dependency of %s on %s (%s) in %s", c.consumer, c.op, c.op_type, c.where)
                continue
            seen.add((c.where, c.op))
            why = c.reason.split(":")[0] if c.reason else "ckptkit never runs a user graph's side effects"
            log.warning("not run: %s (%s) in %s, a control dependency of %s (%s; a control edge cannot change a "
                        "value)", c.op, c.op_type, c.where, c.consumer, why)


def _source(inp: str) -> str:
    return inp[1:] if inp.startswith("^") else inp.split(":")[0]


def _functions_of(node) -> list[str]:
    """Names of the functions a node calls: its op (a library function) and every func / list(func) attr."""
    names = []
    for value in node.attr.values():
        if value.HasField("func") and value.func.name:
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return names


def _stateful(op_type: str) -> bool:
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(op_type)
    return op_def is None or op_def.is_stateful


class _Checker:
    """Reachability and allowlist checks over a GraphDef and its function library."""

    def __init__(self, graph_def, oversize: Optional[dict[str, str]] = None):
        self.oversize = oversize or {}  # main-graph op name -> why its static output is over the bound
        self.library = {f.signature.name: f for f in graph_def.library.function}
        self.functions: dict[str, object] = {}  # name -> (kept node names, cuts) or Refusal
        self.cut: list[Cut] = []

    def node_problem(self, node, where: str) -> Optional[Refusal]:
        op = node.op
        if op in self.library:
            got = self.function(op)
            return got if isinstance(got, Refusal) else None
        if op not in allowlist.ALLOWED or (_stateful(op) and op not in allowlist.STATEFUL_ALLOWED):
            return Refusal(node.name, op, "", where)
        if where == "the graph" and node.name in self.oversize:
            return Refusal(node.name, op, "", where, self.oversize[node.name])
        for name in _functions_of(node):
            got = self.function(name)
            if isinstance(got, Refusal):
                return got
        return None

    def function(self, name: str):
        if name in self.functions:
            got = self.functions[name]
            return (set(), []) if got is None else got  # None: being checked (a recursive call)
        fdef = self.library.get(name)
        if fdef is None:
            return Refusal(name, "function", "", f"function {name}")  # called but not defined: TF would fail
        self.functions[name] = None
        nodes = {n.name: n for n in fdef.node_def}
        data_roots = [_source(v) for v in fdef.ret.values()]
        control_roots = list(fdef.control_ret.values())
        got = self.walk(nodes, data_roots, control_roots, f"function {name}")
        self.functions[name] = got
        return got

    def walk(self, nodes: dict, data_roots: Iterable[str], control_roots: Iterable[str], where: str):
        """(kept node names, cuts) of a body, or the Refusal of a data dependency on a forbidden op."""
        kept: set[str] = set()
        cuts: list[Cut] = []
        failed: dict[str, Refusal] = {}

        def absorb(starts: list[str], consumer: str):
            new, stack, parent = set(), list(starts), {}
            while stack:
                n = stack.pop()
                if n in kept or n in new or n not in nodes:  # not a node: a function argument
                    continue
                problem = self.node_problem(nodes[n], where)
                if problem is not None:
                    if not problem.needed_by:
                        problem = Refusal(problem.op, problem.op_type, parent.get(n, consumer), problem.where)
                    return problem
                new.add(n)
                for inp in nodes[n].input:
                    if not inp.startswith("^"):
                        src = _source(inp)
                        parent.setdefault(src, n)
                        stack.append(src)
            return new

        got = absorb(list(data_roots), "the fetched output")
        if isinstance(got, Refusal):
            return got
        kept |= got
        queue = [(n, _source(i)) for n in got for i in nodes[n].input if i.startswith("^")]
        queue += [("the function's control outputs", n) for n in control_roots]
        while queue:
            consumer, src = queue.pop()
            if src in kept or src not in nodes:
                continue
            got = failed.get(src) or absorb([src], consumer)
            if isinstance(got, Refusal):
                failed[src] = got
                cuts.append(Cut(consumer, got.op, got.op_type, got.where, got.reason))
                continue
            kept |= got
            queue += [(n, _source(i)) for n in got for i in nodes[n].input if i.startswith("^")]
        return kept, cuts


def plan(graph_def, fetches: list[str], oversize: Optional[dict[str, str]] = None) -> Plan:
    """Check what running `fetches` (node names) can reach; the pruned GraphDef to run, or CkptkitError.
    `oversize`: ops whose static output is over the bound (see oversized_ops): refused like forbidden ops."""
    checker = _Checker(graph_def, oversize)
    nodes = {n.name: n for n in graph_def.node}
    got = checker.walk(nodes, fetches, [], "the graph")
    if isinstance(got, Refusal):
        raise CkptkitError(got.message())
    kept, cuts = got
    out = type(graph_def)()
    out.versions.CopyFrom(graph_def.versions)
    all_cuts = list(cuts)
    for node in graph_def.node:
        if node.name in kept:
            copy = out.node.add()
            copy.CopyFrom(node)
            _drop_cut_controls(copy, kept)
    # the functions the kept nodes call, transitively, each pruned to what it was checked for
    todo = [f for n in out.node for f in ([n.op] if n.op in checker.library else []) + _functions_of(n)]
    done = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        fkept, fcuts = checker.functions[name]
        all_cuts += fcuts
        fdef = out.library.function.add()
        fdef.CopyFrom(checker.library[name])
        body = [n for n in fdef.node_def if n.name in fkept]
        for n in body:
            _drop_cut_controls(n, fkept)
            todo += ([n.op] if n.op in checker.library else []) + _functions_of(n)
        del fdef.node_def[:]
        fdef.node_def.extend(body)
        for key in [k for k, v in fdef.control_ret.items() if v not in fkept]:
            del fdef.control_ret[key]
        outputs = [o for o in fdef.signature.control_output if o in fdef.control_ret]
        del fdef.signature.control_output[:]
        fdef.signature.control_output.extend(outputs)
    _check_sizes(out)
    return Plan(out, all_cuts)


def _drop_cut_controls(node, kept: set[str]) -> None:
    inputs = [i for i in node.input if not i.startswith("^") or i[1:] in kept]
    if len(inputs) != len(node.input):
        del node.input[:]
        node.input.extend(inputs)


def tensor_bytes(shape: Iterable[Optional[int]], dtype) -> int:
    """Bytes of a tensor of a static shape (unknown dimensions count 1: the batch)."""
    n = 1
    for d in shape:
        n *= max(int(d), 1) if d is not None and int(d) >= 0 else 1
    return n * np.dtype(dtype).itemsize


def _too_big(what: str, nbytes: int) -> CkptkitError:
    return CkptkitError(f"{what} would hold {nbytes / 2**30:.1f} GiB, over ckptkit's bound of "
                        f"{MAX_TENSOR_BYTES / 2**30:.1f} GiB per tensor: the graph is damaged or hostile "
                        "(CKPTKIT_MAX_TENSOR_BYTES raises the bound)")


def _check_sizes(graph_def) -> None:
    """Refuse constants declared over the bound (also inside functions); other ops are checked on import."""
    from tensorflow.core.framework import types_pb2

    bodies = [graph_def.node] + [f.node_def for f in graph_def.library.function]
    for body in bodies:
        for n in body:
            if n.op in ("Const", "HostConst") and "value" in n.attr:
                t = n.attr["value"].tensor
                dims = [d.size for d in t.tensor_shape.dim]
                dtype = tf().as_dtype(t.dtype).as_numpy_dtype if t.dtype != types_pb2.DT_STRING else np.uint8
                nbytes = tensor_bytes(dims, dtype)
                if nbytes > MAX_TENSOR_BYTES:
                    raise _too_big(f"constant {n.name} of shape {dims}", nbytes)


def oversized_ops(graph) -> dict[str, str]:
    """Ops of a tf.Graph whose statically known output exceeds the bound (a Fill of tens of GB) -> why."""
    out = {}
    for op in graph.get_operations():
        for t in op.outputs:
            nbytes = static_bytes(t)
            if nbytes > MAX_TENSOR_BYTES:
                out[op.name] = (f"would make a tensor of {nbytes / 2**30:.1f} GiB (shape {t.shape}), over ckptkit's "
                                f"bound of {MAX_TENSOR_BYTES / 2**30:.1f} GiB per tensor: the graph is damaged or "
                                "hostile (CKPTKIT_MAX_TENSOR_BYTES raises the bound)")
                break
    return out


def static_bytes(t) -> int:
    """Bytes of a tf.Tensor's statically known shape (unknown dimensions count 1), 0 when not knowable."""
    shape = t.shape
    if shape.rank is None or t.dtype == tf().resource or t.dtype == tf().variant:
        return 0
    try:
        dtype = t.dtype.base_dtype.as_numpy_dtype
    except TypeError:
        return 0
    return tensor_bytes(shape.as_list(), dtype if dtype is not object else np.uint8)


def check_tensor(t) -> None:
    """Refuse to materialise a tensor over the bound (the importer folding a constant, say)."""
    nbytes = static_bytes(t)
    if nbytes > MAX_TENSOR_BYTES:
        raise _too_big(f"op {t.op.name} ({t.op.type}) output of shape {t.shape}", nbytes)


class GatedRun:
    """A TensorFlow session over the checked, pruned copy of a user's graph, computing `output` from `input`.

    Variables take their values from `ckpt` through ckptkit's reader; one the checkpoint lacks takes its
    initial value (`initial_values`: variable -> initial-value tensor name, from the graph's collections),
    computed through the same check. `feed`: extra fixed feeds (tensor name -> value), e.g. is_training.
    """

    def __init__(self, graph, input_name: str, output_name: str, ckpt, feed: Optional[dict] = None,
                 initial_values: Optional[dict[str, str]] = None):
        from ckptkit.core.phases import phase

        _tf = tf()
        gd = graph.as_graph_def()
        fetch = [output_name.split(":")[0]]
        oversize = oversized_ops(graph)
        first = plan(gd, fetch, oversize)
        variables = _variables(first.graph_def)
        missing = [key for key in variables if ckpt is None or key not in ckpt]
        init_tensors = {}
        for key in missing:
            init = (initial_values or {}).get(variables[key].name)
            if init is None:
                where = f"checkpoint {ckpt.prefix}" if ckpt is not None else "no checkpoint (none given)"
                raise CkptkitError(f"the graph reads variable {key} ({len(missing)} missing in all) that {where} does "
                                   "not hold: give the checkpoint that goes with this graph, or a frozen graph")
            init_tensors[key] = init
        checked = plan(gd, fetch + [t.split(":")[0] for t in init_tensors.values()], oversize) if init_tensors \
            else first
        checked.warn()
        self.cut = checked.cut
        g = _tf.Graph()
        readers, others = _handle_uses(checked.graph_def)
        assigned = [key for key, node in variables.items() if node.op == "VarHandleOp" and node.name in others]
        with phase("build TF graph"), g.as_default():
            _tf.graph_util.import_graph_def(checked.graph_def, name="")
            assigns = []  # a resource variable used other than by reads (a function's argument): assigned once
            for key in assigned:
                node = variables[key]
                ph = tf1.placeholder(_tf.as_dtype(node.attr["dtype"].type), name=f"ckptkit_value/{len(assigns)}")
                target = g.get_operation_by_name(node.name).outputs[0]
                assigns.append((key, ph, _tf.raw_ops.AssignVariableOp(resource=target, value=ph)))
        self._graph = g
        self._sess = tf1.Session(graph=g)
        self._ckpt = ckpt
        # Variables are not assigned: each run feeds the tensor a variable gives (a VariableV2's own output,
        # a resource variable's every read) from one aligned copy of each value, which TF reads in place: the
        # weights are in memory once (an assignment held the fed copy and the variable's at its peak).
        # (A resource variable handed to anything but reads is assigned once, by the op made above.)
        self._feeds: list[tuple[list, str, np.dtype]] = []  # (tensors to feed, checkpoint key or init, dtype)
        self._values: dict[str, np.ndarray] = {}  # key -> what is fed (aligned copies, initial values)
        self.held_bytes = 0  # their bytes (LazyReference.release trims the C heap past a threshold)
        try:
            for key, node in variables.items():
                dtype = np.dtype(_tf.as_dtype(node.attr["dtype"].type).as_numpy_dtype)
                if key in assigned:
                    continue
                if node.op == "VarHandleOp":
                    tensors = [g.get_operation_by_name(r).outputs[0] for r in readers.get(node.name, [])]
                else:
                    tensors = [g.get_operation_by_name(node.name).outputs[0]]
                self._feeds.append((tensors, key, dtype))
            if init_tensors:  # the initial values the checkpoint lacks, through the checked graph
                keys = list(init_tensors)
                fetched = self._sess.run([g.get_tensor_by_name(_tensor_name(init_tensors[k])) for k in keys])
                self._values.update(zip(keys, fetched))
            for tensors, key, dtype in self._feeds:  # shapes and dtypes checked now, not at the first run
                value = self._value(key, dtype)
                for t in tensors:
                    if not t.shape.is_compatible_with(value.shape):
                        raise CkptkitError(f"checkpoint {getattr(ckpt, 'prefix', '')} does not fit the graph "
                                           f"(variable {key} is {list(value.shape)} in the checkpoint, "
                                           f"{t.shape} in the graph): check --arch/--meta")
            # assigned a batch of ASSIGN_BATCH_BYTES per run (every run of new fetches costs TF a graph pruning:
            # the cond-v2 graphs of slim's training .meta hand every variable to an `If`)
            batch, ops, keys, size = {}, [], [], 0
            for i, (key, ph, assign) in enumerate(assigns):
                value = self._value(key, np.dtype(ph.dtype.as_numpy_dtype))
                batch[ph], size = value, size + value.nbytes
                ops.append(assign)
                keys.append(key)
                self.held_bytes += value.nbytes
                if size >= ASSIGN_BATCH_BYTES or i == len(assigns) - 1:
                    self._sess.run(ops, batch)
                    for k in keys:  # the variables hold these values now
                        self._values.pop(k, None)
                    batch, ops, keys, size = {}, [], [], 0
            self.held_bytes += sum(v.nbytes for v in self._values.values())
        except _tf.errors.OpError as err:
            self.close()
            raise CkptkitError(f"checkpoint {getattr(ckpt, 'prefix', '')} does not fit the graph "
                               f"({str(err).splitlines()[0][:200]}): check --arch/--meta") from None
        finally:
            self._release_pages()
        self._random = [(n.name, n.op) for body in [checked.graph_def.node] +
                        [f.node_def for f in checked.graph_def.library.function]
                        for n in body if allowlist.is_random(n.op)]
        self._input = g.get_tensor_by_name(_tensor_name(input_name))
        self._output = g.get_tensor_by_name(_tensor_name(output_name))
        self._feed = {g.get_tensor_by_name(_tensor_name(k)): v for k, v in (feed or {}).items()
                      if _exists(g, _tensor_name(k))}
        self.samples_per_run = samples_per_run(g)

    def _value(self, key: str, dtype: np.dtype) -> np.ndarray:
        """A variable's value as fed, kept for the session's life: the checkpoint's view when it is already
        aligned, else one aligned copy (or cast); initial values the checkpoint lacks are there already."""
        if key in self._values:
            return self._values[key]
        from ckptkit.core.pages import ALIGN, aligned_copy

        value = self._ckpt.get(key)
        if value.dtype != dtype or not value.flags.c_contiguous or value.ctypes.data % ALIGN:
            # TensorFlow copies a fed array at every run unless it is 64-byte aligned (a checkpoint's tensors
            # rarely are): one aligned copy (or cast), kept for the session's life, the view's pages given back
            value = aligned_copy(value, dtype)
        self._values[key] = value
        return value

    def _weights(self) -> dict:
        return {t: self._value(key, dtype) for tensors, key, dtype in self._feeds for t in tensors}

    def _release_pages(self) -> None:
        release = getattr(self._ckpt, "release", None)
        if release is not None:
            release()

    def _run(self, x: np.ndarray) -> np.ndarray:
        _tf = tf()
        options = tf1.RunOptions(timeout_in_ms=int(RUN_SECONDS * 1000))
        try:
            with memory_budget():
                return self._sess.run(self._output, {self._input: x, **self._feed, **self._weights()},
                                      options=options)
        except _tf.errors.DeadlineExceededError:
            loops = sorted({op.name.split("/")[0] for op in self._graph.get_operations()
                            if op.type in LOOP_OPS})[:3]
            where = f"; its loops: {', '.join(loops)}" if loops else ""
            raise CkptkitError(f"the TensorFlow reference did not finish one run within {RUN_SECONDS:g} s{where}: a "
                               "loop of the graph may never end (the graph is damaged or hostile; "
                               "CKPTKIT_RUN_SECONDS raises the limit)") from None
        except _tf.errors.ResourceExhaustedError as err:
            op = getattr(err, "op", None)
            name = f"op {op.name} ({op.type})" if op is not None else "an op"
            raise CkptkitError(f"the TensorFlow reference needed more than ckptkit's run-time budget of "
                               f"{RUN_MEMORY / 2**30:.1f} GiB: {name} asked for more at this batch (the graph is "
                               "damaged or hostile, or pass a smaller batch; CKPTKIT_RUN_MEMORY raises the "
                               "budget)") from None
        finally:
            self._release_pages()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The output for a batch, run `samples_per_run` samples at a time (outputs concatenated)."""
        n = self.samples_per_run
        if x.ndim and x.shape[0] > n:
            return np.concatenate([self._one_run(x[i:i + n]) for i in range(0, x.shape[0], n)])
        return self._one_run(x)

    def _one_run(self, x: np.ndarray) -> np.ndarray:
        y = self._run(x)
        if self._random:  # a random op survived the inference rewrite: a second run must agree
            again = self._run(x)
            if not np.array_equal(y, again, equal_nan=True):
                name, kind = self._random[0]
                raise CkptkitError(f"the TensorFlow reference is not deterministic: random op {name} ({kind}) still "
                                   "shapes its output (a dropout or noise layer ckptkit does not recognise), so no "
                                   "export can be judged against it: give --arch NAME or --builder for an "
                                   "inference-mode reference")
            self._random = []  # deterministic on real inputs: once is enough
        return y

    def close(self) -> None:
        """Close the session and drop the fed values (big ones are maps of their own: unmapped right here)."""
        if self._sess is not None:
            self._sess.close()
        self._sess = None
        self._values = {}


ACTIVATION_BUDGET = 128 << 20  # bytes of activations a reference run may take (TF frees them as it goes)
LIVE_FACTOR = 8  # TF's peak over a run was ~8x its largest activation for one sample (vgg_16_bn, resnet_v1_50)


def samples_per_run(g) -> int:
    """How many samples one run takes: all of a batch unless a sample's largest activation (static shapes,
    the batch dimension left out) times LIVE_FACTOR would pass ACTIVATION_BUDGET (vgg at 224 px: 1)."""
    largest = 0
    for op in g.get_operations():
        for t in op.outputs:
            shape = t.shape
            if shape.rank is None or shape.rank < 2 or shape[0] is not None or not shape[1:].is_fully_defined():
                continue
            try:
                size = t.dtype.size
            except (TypeError, ValueError, AttributeError):  # resource, variant, string: no fixed size
                continue
            largest = max(largest, int(np.prod(shape[1:].as_list(), dtype=np.int64)) * size)
    return max(1, ACTIVATION_BUDGET // max(1, LIVE_FACTOR * largest))


def _handle_uses(graph_def) -> tuple[dict[str, list[str]], set[str]]:
    """(node -> the ReadVariableOp nodes reading it, nodes some other op takes as data): a resource variable
    only read is fed at its reads; one handed to anything else (a function call, a gather) is assigned."""
    readers: dict[str, list[str]] = {}
    others: set[str] = set()
    for n in graph_def.node:
        for i, inp in enumerate(n.input):
            if inp.startswith("^"):
                continue
            if n.op == "ReadVariableOp" and i == 0:
                readers.setdefault(_source(inp), []).append(n.name)
            else:
                others.add(_source(inp))
    return readers, others


def _exists(g, name: str) -> bool:
    try:
        g.get_tensor_by_name(name)
        return True
    except (KeyError, ValueError):
        return False


def _tensor_name(name: str) -> str:
    return name if ":" in name else name + ":0"


def _variables(graph_def) -> dict:
    """Checkpoint key -> variable node, for every variable node of a (pruned) GraphDef."""
    out = {}
    for n in graph_def.node:
        if n.op in ("VariableV2", "Variable", "VarHandleOp"):
            shared = n.attr["shared_name"].s.decode() if n.op == "VarHandleOp" and "shared_name" in n.attr else ""
            out[shared or n.name] = n
    return out


def initial_values(graph) -> dict[str, str]:
    """Variable op name -> its initial-value tensor name, from a tf.Graph's variable collections."""
    out = {}
    with graph.as_default():
        for v in tf1.global_variables() + tf1.local_variables():
            try:
                out[v.op.name] = v.initial_value.name
            except (AttributeError, ValueError):
                continue
    return out


def reference(graph, input_t, output_t, ckpt, feed: Optional[dict] = None) -> Callable[[], GatedRun]:
    """A maker of the gated run of `output_t` from `input_t` in a tf.Graph (for a lazy reference)."""
    inits = initial_values(graph)
    feed_names = {(k.name if hasattr(k, "name") else k): v for k, v in (feed or {}).items()}
    return lambda: GatedRun(graph, input_t.name, output_t.name, ckpt, feed_names, inits)
