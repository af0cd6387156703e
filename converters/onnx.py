"""IR -> ONNX (opset 13+, default 17), run by onnxruntime for verification.

Inside the model every 4-D tensor is NCHW (ONNX's convolution layout); the graph
input and 4-D outputs stay NHWC as in TensorFlow (a Transpose at each end)
unless `nchw=True`. TF's SAME padding arrives as explicit per-side pads and maps
exactly onto ONNX's [top, left, bottom, right].

Weights go to disk as the model is built (`onnx_file`): one `.onnx` file, or past protobuf's 2 GiB
`NAME.onnx` + `NAME.onnx.data` (ONNX external data, read by onnxruntime from beside the model).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph, Node, UniqueNames

from ckptkit.converters import protobuf_wire
from ckptkit.converters.base import Runtime, Writer, package_label, write_node
from ckptkit.converters.onnx_file import TensorSpool, assemble

DEFAULT_OPSET = 17
IR_VERSION = 8  # loads in every onnxruntime since 1.10
NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


class Builder:
    """What an op's ONNX writer gets: `op(...)` adds a node, `const(...)` an initializer."""

    def __init__(self, graph: Graph, opset: int, spool: TensorSpool):
        from onnx import helper

        self.h = helper
        self.graph = graph
        self.opset = opset
        self.spool = spool
        self.nodes: list = []
        self.inits: list = []
        self.name = UniqueNames()
        self.names: dict[str, str] = {}  # IR node -> ONNX value

    def const(self, base: str, value: np.ndarray, dtype=None) -> str:
        """An initializer (as `dtype`, default the value's); its bytes go to the spool now, from a view a slab at
        a time (a transposed kernel is never copied whole)."""
        name = self.name(base)
        self.inits.append(self.spool.add(name, value, dtype))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(self.h.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def to_nhwc(self, node: Node) -> str:
        """The node's value in TF's NHWC order (values inside the model are NCHW)."""
        x = self.names[node.name]
        return self.op("Transpose", [x], f"{node.name}/nhwc", perm=NCHW_TO_NHWC) if len(node.shape) == 4 else x

    def channel_vector(self, base: str, value: np.ndarray, rank: int) -> str:
        """A per-channel constant that broadcasts over NCHW (rank 4) or [N, C]."""
        return self.const(base, np.asarray(value, np.float32).reshape([1, -1, 1, 1] if rank == 4 else [-1]))


def check_opset(opset: int) -> None:
    """13 (the oldest ckptkit writes) up to the newest the installed onnx package knows."""
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if not 13 <= opset <= newest:
        raise CkptkitError(f"--opset {opset} is outside what ckptkit can write here: give 13 to {newest} "
                           f"(default {DEFAULT_OPSET})")


def build(graph: Graph, spool: TensorSpool, opset: int = DEFAULT_OPSET, nchw: bool = False):
    """The onnx.ModelProto of the graph, its weights external-data references into `spool`."""
    from onnx import TensorProto, helper

    check_opset(opset)
    WRITER.require(graph)
    b = Builder(graph, opset, spool)
    names = b.names
    inp = graph[graph.inputs[0]]
    h, w, c = inp.shape[1:]
    in_shape = ["N", c, h, w] if nchw else ["N", h, w, c]
    in_name = graph.input_names[0] if graph.input_names else "input"  # TF's tensor name, as tf2onnx keeps it
    b.name(in_name)
    names[inp.name] = in_name if nchw else b.op("Transpose", [in_name], "input_nchw", perm=NHWC_TO_NCHW)
    for node in graph.nodes:
        if node.op != "Input":
            names[node.name] = write_node(b, "onnx", node, [names[i] for i in node.inputs])

    outputs = []
    for k, o in enumerate(graph.outputs):
        node = graph[o]
        x = names[o]
        tf_name = graph.output_names[k] if k < len(graph.output_names) else None
        if len(node.shape) == 4 and not nchw:
            x = b.op("Transpose", [x], f"{o}/output", perm=NCHW_TO_NHWC)
            shape = ["N"] + list(node.shape[1:])
        elif len(node.shape) == 4:
            shape = ["N", node.shape[3], node.shape[1], node.shape[2]]
        else:
            shape = ["N"] + list(node.shape[1:])
        if tf_name and tf_name != x:
            x = b.op("Identity", [x], tf_name)
        outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, shape))
    g = helper.make_graph(b.nodes, graph.name, [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
                          outputs, b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="ckptkit")
    model.ir_version = IR_VERSION
    for key, value in sorted(graph.metadata.items()):  # shown by Netron, read by onnx.load(...).metadata_props
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def needs_external_data(graph: Graph) -> bool:
    """Whether the weights are past what one protobuf message (one .onnx file) can hold."""
    return protobuf_wire.too_big(graph)


def data_file(path: str) -> str:
    """The external-data file written beside `path` (onnxruntime finds it by the name the model records)."""
    return path + ".data"


def export(graph: Graph, path: str, *, opset: int = DEFAULT_OPSET, nchw: bool = False,
           external_data: Optional[bool] = None) -> str:
    """Write `graph` as ONNX at `path` (see `write_files`); returns `path`, the file onnxruntime opens."""
    return write_files(graph, path, opset=opset, nchw=nchw, external_data=external_data)[0]


def write_files(graph: Graph, path: str, *, opset: int = DEFAULT_OPSET, nchw: bool = False,
                external_data: Optional[bool] = None) -> list[str]:
    """Write `graph` as ONNX at `path` (with `path`.data when `external_data`, by default past 2 GiB);
    onnx.checker must pass. Returns the files written, the model first."""
    parts = Parts(graph, path, opset, nchw, external_data)
    try:
        return parts.finish()
    finally:
        parts.clean()


class Parts:
    """A model written as a skeleton `.onnx` whose big weights are external data in a spool file (the form
    onnxruntime maps instead of parsing and copying), and `finish()`: the files at `path` (the same two
    past 2 GiB; else one `.onnx` assembled from them, file to file). The export verifies the parts, then
    finishes: the assembled file holds the same node protos and the same tensor bytes."""

    def __init__(self, graph: Graph, path: str, opset: int = DEFAULT_OPSET, nchw: bool = False,
                 external_data: Optional[bool] = None):
        import onnx

        self.path = path
        self.external = needs_external_data(graph) if external_data is None else external_data
        self.spool_path = data_file(path) if self.external else path + ".weights.tmp"
        self.skeleton_path = path if self.external else path + ".skeleton.tmp"
        spool = TensorSpool(self.spool_path)
        try:
            try:
                self.model = build(graph, spool, opset, nchw)
            finally:
                spool.close()
            with open(self.skeleton_path, "wb") as f:  # small: every big weight is a reference into the spool
                f.write(self.model.SerializeToString())
            try:  # by path: the checker sees the external data's files, never loads their bytes
                onnx.checker.check_model(self.skeleton_path, full_check=True)
            except onnx.checker.ValidationError as err:
                raise CkptkitError(f"the ONNX model failed onnx.checker ({str(err).splitlines()[0][:200]}): "
                                   "this is a bug in ckptkit, please report it") from None
        except BaseException:
            self.clean()
            raise

    def finish(self) -> list[str]:
        """The files at `path`, the model first."""
        if self.external:
            return [self.path, self.spool_path]
        size = assemble(self.model, self.spool_path, self.path)
        if size > protobuf_wire.PROTOBUF_LIMIT:
            raise CkptkitError(f"the ONNX model came to {size / 2**30:.2f} GiB, past protobuf's 2 GiB: "
                               "this is a bug in ckptkit (it should have written external data), please report it")
        self.clean()
        return [self.path]

    def clean(self) -> None:
        """Remove the temporary parts (never the files at `path`)."""
        if self.external:
            return
        for tmp in (self.spool_path, self.skeleton_path):
            if os.path.exists(tmp):
                os.remove(tmp)


def runner(path: str, *, nchw: bool = False, **_):
    """A function NHWC batch -> output, running the written file in onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # every graph fusion onnxruntime makes by default, without the NCHWc layout rewrite (ORT_ENABLE_ALL's
    # addition): that copies every convolution kernel into blocked layouts, which on vgg_16_bn took 5.2 s and
    # 2.25 GB to load against 1.3 s and 0.97 GB here: a choice of memory layout, not of what the file computes
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    # a check runs a few batches: no arena kept for later runs (vgg_16_bn's verification: ~90 MB less at peak)
    options.enable_cpu_mem_arena = False
    try:
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        first = str(err).strip().splitlines()[0][-200:] if str(err).strip() else type(err).__name__
        raise CkptkitError(f"onnxruntime {ort.__version__} cannot load the written model ({first}): try a lower "
                           "--opset, or pass --no-verify") from None
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    out_rank = len(sess.get_outputs()[0].shape)

    def run(x: np.ndarray) -> np.ndarray:
        feed = x.transpose(0, 3, 1, 2) if nchw else x
        y = sess.run([out_name], {in_name: np.ascontiguousarray(feed, np.float32)})[0]
        return y.transpose(0, 2, 3, 1) if (nchw and out_rank == 4) else y

    return run


def openvino_runner(path: str, *, nchw: bool = False, **_):
    """A function NHWC batch -> output, running the written file in OpenVINO on the CPU in float32 (the
    precision hint pinned: a CPU with bf16 or f16 units would otherwise run in them). OpenVINO's import sends
    usage telemetry from a forked process unless its optional openvino_telemetry is missing: refused while
    ckptkit imports it (OpenVINO then uses its own stub), so a verification sends nothing anywhere."""
    from ckptkit.core.lazy_tf import Refuse

    with Refuse("openvino_telemetry", why="ckptkit sends no usage data"):
        import openvino as ov

    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as err:  # OpenVINO raises its own RuntimeError subtypes
        first = str(err).strip().splitlines()[0][-200:] if str(err).strip() else type(err).__name__
        raise CkptkitError(f"OpenVINO {ov.__version__} cannot load the written model ({first}): try another "
                           "--opset, or pass --no-verify") from None
    output = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x, np.float32)
        y = np.asarray(compiled(feed)[output])
        return y.transpose(0, 2, 3, 1) if (nchw and y.ndim == 4) else y

    return run


def intermediates(path: str, *, nchw: bool = False, **_):
    """(NHWC batch, IR node names) -> {node: value, NHWC}: the written model with the values named after IR
    nodes made graph outputs too (a copy beside it, sharing its external weights), run unoptimised."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(path, load_external_data=False)
    made = {o for n in model.graph.node for o in n.output}
    listed = {o.name for o in model.graph.output}

    def run(x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        wanted = [n for n in names if n in made and n not in listed]
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in wanted)
        copy = os.path.join(os.path.dirname(os.path.abspath(path)), ".ckptkit-locate-" + os.path.basename(path))
        try:
            onnx.save(model, copy)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(copy, options, providers=["CPUExecutionProvider"])
            feed = x.transpose(0, 3, 1, 2) if nchw else x
            values = sess.run(wanted, {sess.get_inputs()[0].name: np.ascontiguousarray(feed, np.float32)})
        finally:
            del model.graph.output[len(listed):]
            if os.path.exists(copy):
                os.remove(copy)
        return {n: (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v) for n, v in zip(wanted, values)}

    return run


@dataclass(frozen=True)
class Options:
    opset: int = DEFAULT_OPSET
    nchw: bool = False  # NCHW graph input/outputs instead of TF's NHWC


class OnnxWriter(Writer):
    name, label, suffixes, options, runtime_package = "onnx", "ONNX", (".onnx",), Options, "onnxruntime"
    command_help = "export to ONNX, verified with onnxruntime (and OpenVINO when installed)"
    description = ("Export to ONNX (NHWC input, dynamic batch, explicit pads) and check it against TensorFlow's "
                   "inference output with onnxruntime, and OpenVINO when it is installed.")
    output_metavar, output_help = "MODEL.onnx", "output .onnx file"

    def add_flags(self, p, prefix: str = "") -> None:
        p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                       help=f"{prefix or 'ONNX '}opset (default {DEFAULT_OPSET}, at least 13)")
        p.add_argument("--nchw", action="store_true", help=f"{prefix}NCHW input and 4-D outputs instead of TF's NHWC")

    def destinations(self, path: str, graph: Optional[Graph]) -> list[str]:
        # `.onnx`, as Netron, onnxruntime's tools and every reader expect (a `-o model.pb` is a slip, refused up
        # front as to-keras refuses its own); past 2 GiB the weights go to PATH.data beside it
        super().destinations(path, graph)
        return [path, data_file(path)] if graph is not None and needs_external_data(graph) else [path]

    def check_options(self, options: Options) -> None:
        check_opset(options.opset)

    def write(self, graph: Graph, path: str, options: Options) -> list[str]:
        return write_files(graph, path, opset=options.opset, nchw=options.nchw)

    def disk_bytes(self, graph: Graph) -> tuple[int, int]:
        """Below 2 GiB the verified parts (skeleton + weights spool) and the assembled `.onnx` stand side by side
        until the parts are removed: the weights twice; past it, the parts are the files published."""
        size = graph.written_bytes()
        return (size if needs_external_data(graph) else 2 * size), size

    def write_for_check(self, graph: Graph, path: str, options: Options):
        # onnxruntime maps external data and verifies in ~0.6 s and 0.7 GB on vgg_16_bn, against 1.6 s and
        # 1.0 GB parsing one 530 MB file: the parts are verified, then assembled into the one file
        parts = Parts(graph, path, options.opset, options.nchw)
        return parts.skeleton_path, parts.finish

    def runner(self, path: str, graph: Graph, options: Options):
        return runner(path, nchw=options.nchw)

    def runtimes(self, path: str, graph: Graph, options: Options) -> list[Runtime]:
        """onnxruntime, and OpenVINO (the second runtime slim nets deploy on) when it is installed."""
        found = super().runtimes(path, graph, options)
        if importlib.util.find_spec("openvino") is not None:
            found.append(Runtime(package_label("openvino"), lambda: openvino_runner(path, nchw=options.nchw),
                                 self.tolerance))
        return found

    def intermediates(self, path: str, graph: Graph, options: Options):
        return intermediates(path, nchw=options.nchw)


WRITER = OnnxWriter()
