"""IR -> ONNX (opset 13+, default 17), run by onnxruntime for verification.

Inside the model every 4-D tensor is NCHW (ONNX's convolution layout); the graph
input and 4-D outputs stay NHWC as in TensorFlow (a Transpose at each end)
unless `nchw=True`. TF's SAME padding arrives as explicit per-side pads and maps
exactly onto ONNX's [top, left, bottom, right].
"""
from __future__ import annotations


import numpy as np

from ckptkit.errors import CkptkitError
from ckptkit.ir import Graph, Node, UniqueNames

DEFAULT_OPSET = 17
IR_VERSION = 8  # loads in every onnxruntime since 1.10
NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


class _Builder:
    def __init__(self, opset: int):
        from onnx import helper

        self.h = helper
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self.name = UniqueNames()

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(self.h.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _nchw_axis(axis: int, rank: int) -> int:
    return (0, 2, 3, 1)[axis] if rank == 4 else axis


def check_opset(opset: int) -> None:
    """13 (the oldest ckptkit writes) up to the newest the installed onnx package knows."""
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if not 13 <= opset <= newest:
        raise CkptkitError(f"--opset {opset} is outside what ckptkit can write here: give 13 to {newest} "
                           f"(default {DEFAULT_OPSET})")


def build(graph: Graph, opset: int = DEFAULT_OPSET, nchw: bool = False):
    """The onnx.ModelProto of the graph."""
    from onnx import TensorProto, helper

    check_opset(opset)
    b = _Builder(opset)
    names: dict[str, str] = {}
    inp = graph[graph.inputs[0]]
    h, w, c = inp.shape[1:]
    in_shape = ["N", c, h, w] if nchw else ["N", h, w, c]
    in_name = graph.input_names[0] if graph.input_names else "input"  # TF's tensor name, as tf2onnx keeps it
    b.name(in_name)
    names[inp.name] = in_name if nchw else b.op("Transpose", [in_name], "input_nchw", perm=NHWC_TO_NCHW)

    def to_nhwc(node: Node) -> str:
        x = names[node.name]
        return b.op("Transpose", [x], f"{node.name}/nhwc", perm=NCHW_TO_NHWC) if len(node.shape) == 4 else x

    for node in graph.nodes:
        if node.op == "Input":
            continue
        names[node.name] = _write(b, graph, node, [names[i] for i in node.inputs], to_nhwc)

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
    return model


def _write(b: _Builder, graph: Graph, node: Node, xs: list[str], to_nhwc) -> str:
    op, a, p, n = node.op, node.attrs, node.params, node.name
    rank = len(node.shape)
    if op in ("Conv", "DepthwiseConv"):
        w = p["weights"]
        if op == "Conv":
            kernel = w.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            group = 1
        else:  # [kh,kw,C,M] -> [C*M, 1, kh, kw]; output channel c*M + m
            kh, kw, ch, m = w.shape
            kernel = w.transpose(2, 3, 0, 1).reshape(ch * m, 1, kh, kw)
            group = ch
        t, bo, l, r = a["pads"]
        inputs = [xs[0], b.const(f"{n}/weights", kernel.astype(np.float32))]
        if p.get("bias") is not None:
            inputs.append(b.const(f"{n}/bias", p["bias"].astype(np.float32)))
        return b.op("Conv", inputs, n, kernel_shape=list(w.shape[:2]), strides=list(a["strides"]),
                    dilations=list(a["dilations"]), pads=[t, l, bo, r], group=group)
    if op == "Dense":
        inputs = [xs[0], b.const(f"{n}/weights", p["weights"].astype(np.float32))]
        if p.get("bias") is not None:
            inputs.append(b.const(f"{n}/bias", p["bias"].astype(np.float32)))
        return b.op("Gemm", inputs, n)
    if op == "BatchNorm":
        channels = node.shape[-1]
        gamma = p["gamma"] if p.get("gamma") is not None else np.ones(channels, np.float32)
        beta = p["beta"] if p.get("beta") is not None else np.zeros(channels, np.float32)
        inputs = [xs[0]] + [b.const(f"{n}/{k}", v.astype(np.float32)) for k, v in
                            (("gamma", gamma), ("beta", beta), ("moving_mean", p["mean"]),
                             ("moving_variance", p["variance"]))]
        return b.op("BatchNormalization", inputs, n, epsilon=float(a["epsilon"]))
    if op == "Affine":
        x = xs[0]
        shape = [1, -1, 1, 1] if rank == 4 else [-1]
        if p.get("scale") is not None:
            x = b.op("Mul", [x, b.const(f"{n}/scale", p["scale"].astype(np.float32).reshape(shape))], f"{n}/mul")
        if p.get("shift") is not None:
            x = b.op("Add", [x, b.const(f"{n}/shift", p["shift"].astype(np.float32).reshape(shape))], f"{n}/add")
        return x
    if op == "Relu":
        return b.op("Relu", xs, n)
    if op == "Relu6":
        return b.op("Clip", [xs[0], b.const(f"{n}/min", np.array(0, np.float32)),
                             b.const(f"{n}/max", np.array(6, np.float32))], n)
    if op == "Softmax":
        return b.op("Softmax", xs, n, axis=1 if rank == 4 else -1)
    if op == "Identity":
        return b.op("Identity", xs, n)
    if op == "Add":
        return b.op("Add", xs, n)
    if op == "Concat":
        return b.op("Concat", xs, n, axis=_nchw_axis(a["axis"], rank))
    if op in ("MaxPool", "AvgPool"):
        t, bo, l, r = a["pads"]
        kw = dict(kernel_shape=list(a["kernel"]), strides=list(a["strides"]), pads=[t, l, bo, r])
        if op == "AvgPool":
            kw["count_include_pad"] = 0  # TF never counts padded cells
        return b.op("MaxPool" if op == "MaxPool" else "AveragePool", xs, n, **kw)
    if op == "Mean":
        pooled = b.op("GlobalAveragePool", xs, n if a["keepdims"] else f"{n}/pool")
        return pooled if a["keepdims"] else b.op("Flatten", [pooled], n, axis=1)
    if op == "Pad":
        (n0, n1), (t, bo), (l, r), (c0, c1) = a["pads"]
        pads = np.array([n0, c0, t, l, n1, c1, bo, r], np.int64)
        return b.op("Pad", [xs[0], b.const(f"{n}/pads", pads)], n, mode="constant")
    if op == "Reshape":
        src = graph[node.inputs[0]]
        x = to_nhwc(src)  # TF reshapes in NHWC order
        y = b.op("Reshape", [x, b.const(f"{n}/shape", np.array(a["shape"], np.int64))],
                 n if rank != 4 else f"{n}/nhwc")
        return b.op("Transpose", [y], n, perm=NHWC_TO_NCHW) if rank == 4 else y
    raise CkptkitError(f"IR op {op} of node {n} has no ONNX writer: this is a bug in ckptkit")


def export(graph: Graph, path: str, *, opset: int = DEFAULT_OPSET, nchw: bool = False) -> str:
    """Write `graph` to `path` as ONNX; onnx.checker must pass."""
    import onnx

    model = build(graph, opset, nchw)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise CkptkitError(f"the ONNX model failed onnx.checker ({str(err).splitlines()[0][:200]}): "
                           "this is a bug in ckptkit, please report it") from None
    onnx.save(model, path)
    return path


def runner(path: str, *, nchw: bool = False, **_):
    """A function NHWC batch -> output, running the written file in onnxruntime."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
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
