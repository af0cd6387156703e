"""LiteRT (TFLite) through TensorFlow: the IR, BatchNorm folded, run on a fixed input shape (batch 1 by default)
by the ops' own TensorFlow executors in a graph of constants, converted by TensorFlow's LiteRT converter, and run
back in LiteRT's interpreter (the `ai-edge-litert` package; TensorFlow's bundled interpreter where it is absent).

No op needs a writer of its own here: an op's TensorFlow `run` is its writer. What LiteRT's builtin ops cannot
express is refused by name before anything is published (the converter names the TensorFlow ops it would need
from TF-select); `--allow-select-ops` opts in to them, and the model then needs the Flex delegate to run.
"""
from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph

from ckptkit.converters.base import Writer, package_label
from ckptkit.converters.quantize import DEFAULT_MIN_AGREEMENT

log = logging.getLogger("ckptkit")


@dataclass(frozen=True)
class Options:
    batch: int = 1  # the model's fixed batch (LiteRT models on phones are built for one)
    allow_select_ops: bool = False  # TF-select ops where LiteRT's builtins cannot express an op
    quantize: Optional[str] = None  # "int8": full-integer post-training quantization from `data`
    io: str = "float"  # the int8 model's input and output type: float (quantize inside) or int8
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # held-out top-1 agreement an int8 model must reach
    # the representative samples, read as recalibrate reads them (ckptkit.read.data)
    data: Optional[str] = None
    preprocess: Optional[str] = None
    resize: Optional[str] = None
    mean: Optional[object] = None
    std: Optional[object] = None
    max_samples: Optional[int] = None
    image_key: str = "image/encoded"
    seed: int = 0


def constant_graph(graph: Graph, batch: int):
    """(GraphDef, input, output) of the IR run by the ops' TensorFlow executors on an input [batch, H, W, C], its
    weights constants of the graph: what the converter takes without freezing anything (from a tf.function it
    would first lift every captured weight into a constant of a new graph; inception_v3 converts in 3.2 s this
    way against 4.6 s)."""
    from ckptkit.core.lazy_tf import graph_building, tf, tf1
    from ckptkit.run.tf_exec import run_graph

    _tf = tf()
    g = _tf.Graph()
    with graph_building(), g.as_default():
        x = tf1.placeholder(_tf.float32, [batch, *graph.input_shape[1:]],
                            name=_clean(graph.input_names[0] if graph.input_names else "input"))
        y = _tf.identity(run_graph(graph, x), name="output")
    return g.as_graph_def(), x, y


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name.split(":")[0]) or "input"


def convert(graph: Graph, options: Options, calibration: Optional[np.ndarray] = None) -> bytes:
    """The .tflite bytes of `graph` (BatchNorm already folded by the caller's prepare step); full-integer int8
    (weights per channel, activations per tensor) calibrated on `calibration` when it is given."""
    from ckptkit.core.lazy_tf import tf

    _tf = tf()
    graph_def, x, y = constant_graph(graph, options.batch)
    converter = _tf.compat.v1.lite.TFLiteConverter(graph_def, [x], [y])
    builtins = _tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if calibration is not None else _tf.lite.OpsSet.TFLITE_BUILTINS
    converter.target_spec.supported_ops = [builtins] + (
        [_tf.lite.OpsSet.SELECT_TF_OPS] if options.allow_select_ops else [])
    if calibration is not None:
        batch = options.batch

        def representative():
            for i in range(0, len(calibration) - batch + 1, batch):
                yield [calibration[i:i + batch]]

        converter.optimizations = [_tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        if options.io == "int8":
            converter.inference_input_type = converter.inference_output_type = _tf.int8
    from ckptkit.core.lazy_tf import quiet_native_stderr

    try:
        with quiet_native_stderr():
            return converter.convert()
    except Exception as err:  # the converter's ConverterError and friends
        text = str(err)
        needed = sorted(set(re.findall(r"'?tf\.([A-Za-z0-9]+)'?", text)))
        if needed:
            raise CkptkitError(f"LiteRT's builtin ops cannot express TensorFlow op(s) {', '.join(needed)} of this "
                               "model: pass --allow-select-ops to use TF-select ops (the app then needs the Flex "
                               "delegate), or export to onnx") from None
        first = text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__
        raise CkptkitError(f"TensorFlow's LiteRT converter failed: {first}") from None


def _interpreter_class():
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, package_label("ai-edge-litert")
    from ckptkit.core.lazy_tf import tf

    return tf().lite.Interpreter, f"TensorFlow {tf().__version__} LiteRT interpreter"


def runner(path: str, *, batch: int = 1, **_):
    """A function NHWC batch -> output running the file in LiteRT's interpreter, `batch` samples a call (the
    model's fixed batch; a last partial batch is padded and cut)."""
    from ckptkit.core.lazy_tf import quiet_native_stderr

    Interpreter, _ = _interpreter_class()
    try:
        with quiet_native_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            interp = Interpreter(model_path=path)
            interp.allocate_tensors()
    except Exception as err:  # the interpreter's own error types
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CkptkitError(f"LiteRT cannot load the written model ({first}): pass --no-verify to write it "
                           "unverified") from None
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    in_scale, in_zero = inp.get("quantization", (0.0, 0))
    out_scale, out_zero = out.get("quantization", (0.0, 0))

    def run(x: np.ndarray) -> np.ndarray:
        outputs = []
        for i in range(0, len(x), batch):
            chunk = np.asarray(x[i:i + batch], np.float32)
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
            if inp["dtype"] == np.int8:  # an int8-io model: quantized as its input records
                chunk = np.clip(np.round(chunk / in_scale + in_zero), -128, 127).astype(np.int8)
            interp.set_tensor(inp["index"], chunk)
            with quiet_native_stderr():
                interp.invoke()
            y = np.array(interp.get_tensor(out["index"]))[:n]
            outputs.append((y.astype(np.float32) - out_zero) * out_scale if out["dtype"] == np.int8 else y)
        return np.concatenate(outputs)

    return run


class TfliteWriter(Writer):
    name, label, suffixes, runtime_package = "tflite", "LiteRT", (".tflite",), "ai-edge-litert"
    options = Options
    leaves_cycles = True  # the converted TF graph holds the weights in reference cycles
    through_tf = True
    command_help = "export to LiteRT (.tflite), float or int8, verified in LiteRT's interpreter"
    description = ("Run the BN-folded network as a TensorFlow graph of fixed input shape, convert it with "
                   "TensorFlow's LiteRT converter (builtin ops only unless --allow-select-ops; int8 calibrated on "
                   "--data with --quantize int8) and check it in LiteRT's interpreter against TensorFlow's "
                   "inference output.")
    output_metavar, output_help = "MODEL.tflite", "output .tflite file"
    takes_data = True  # --quantize int8 reads its representative samples as recalibrate reads data

    def add_flags(self, p, prefix: str = "") -> None:
        p.add_argument("--batch", type=int, default=1, metavar="N",
                       help=f"{prefix}the model's fixed batch size (default 1, as phones run it)")
        p.add_argument("--allow-select-ops", action="store_true",
                       help=f"{prefix}use TF-select ops where LiteRT's builtins cannot express an op (the app then "
                            "needs the Flex delegate); default: such a model is refused, naming the ops")
        p.add_argument("--quantize", choices=["int8"], help=f"{prefix}full-integer post-training quantization: "
                       "int8 weights (per channel) and activations, calibrated on --data; judged on held-out samples")
        p.add_argument("--io", choices=["float", "int8"], default="float",
                       help=f"{prefix}an int8 model's input and output type (default float: quantized inside)")
        p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT, metavar="FRACTION",
                       help=f"{prefix}top-1 agreement with the float model on held-out samples below which an int8 "
                            f"model is refused (default {DEFAULT_MIN_AGREEMENT})")

    def __init__(self):
        self._held: dict[str, np.ndarray] = {}  # int8: written path -> its held-out samples, until checked

    def check_options(self, options: Options) -> None:
        from ckptkit.core import validate

        validate.count("--batch", options.batch, 1)
        validate.choice("--quantize", options.quantize or "none", ("none", "int8"))
        validate.choice("--io", options.io, ("float", "int8"))
        if not (isinstance(options.min_agreement, (int, float)) and 0.0 <= options.min_agreement <= 1.0):
            raise CkptkitError(f"{validate.named('--min-agreement', options.min_agreement)} is not a fraction: "
                               "give a value from 0 to 1, e.g. 0.9")
        if options.quantize is None and (options.data or options.io != "float"):
            raise CkptkitError("--data and --io belong to --quantize int8: add it, or leave them out")

    def write(self, graph: Graph, path: str, options: Options) -> list[str]:
        calibration = None
        self._held.clear()
        if options.quantize == "int8":
            from ckptkit.converters.quantize import badly_conditioned, read_samples

            calibration, held = read_samples(graph, options)
            self._held[path] = held
            for layer in badly_conditioned(graph, calibration):
                log.warning("int8: %s: one scale per tensor resolves its narrow channels poorly (a folded "
                            "BatchNorm with a tiny variance makes such a channel); if agreement is low, "
                            "recalibrate or keep that layer in float", layer)
            log.info("int8: calibrated on %d samples, checked on %d held out", len(calibration), len(held))
        data = convert(graph, options, calibration)
        with open(path, "wb") as f:
            f.write(data)
        return [path]

    def check_inputs(self, graph: Graph, options: Options, path: str):
        """An int8 model is checked on the held-out samples of its data (kept by `write` for that file), not on
        synthetic inputs."""
        if options.quantize != "int8":
            return None
        return self._held.pop(path, None)

    def judge(self, options: Options):
        if options.quantize != "int8":
            return None
        from ckptkit.converters.quantize import judge

        return lambda ref, got: judge(ref, got, options.min_agreement)

    def runtimes(self, path: str, graph: Graph, options: Options):
        from ckptkit.converters.base import Runtime

        _, label = _interpreter_class()
        return [Runtime(label, lambda: runner(path, batch=options.batch), self.tolerance)]

    def runner(self, path: str, graph: Graph, options: Options):
        return runner(path, batch=options.batch)


WRITER = TfliteWriter()
