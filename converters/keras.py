"""IR -> a plain Keras 3 functional model (standard layers only), saved as .keras or legacy .h5.

Layouts match TF's: channels_last, Conv2D kernels (kh,kw,in,out), DepthwiseConv2D
(kh,kw,in,mult), Dense (in,out). TF SAME padding is Keras 'same' (the TF backend
runs the same kernels); any other padding becomes an explicit ZeroPadding2D.
"""
from __future__ import annotations

import re

import numpy as np

from ckptkit.errors import CkptkitError
from ckptkit.ir import Graph, Node, UniqueNames, same_pads

EXTENSIONS = (".keras", ".h5")


def _name(ir_name: str, unique: UniqueNames) -> str:
    """Keras forbids '/' in layer names: TF scopes become underscores."""
    return unique(re.sub(r"[^A-Za-z0-9_.-]", "_", ir_name.replace("/", "_")) or "layer")


def _padding_mode(node: Node, in_shape: tuple, kernel, strides, dilations=(1, 1)) -> str:
    """'same' when the pads are TF SAME's for this input, 'valid' when zero, else 'explicit'."""
    pads = tuple(node.attrs["pads"])
    if not any(pads):
        return "valid"
    same = same_pads(in_shape[1], kernel[0], strides[0], dilations[0]) + same_pads(in_shape[2], kernel[1], strides[1],
                                                                                    dilations[1])
    return "same" if pads == same else "explicit"


def build(graph: Graph):
    import keras
    from keras import layers as L

    used = UniqueNames()
    inp = graph[graph.inputs[0]]
    x_in = keras.Input(shape=tuple(inp.shape[1:]), name=_name(inp.name, used))
    values = {inp.name: x_in}
    weights: list[tuple[object, list[np.ndarray]]] = []

    for node in graph.nodes:
        if node.op == "Input":
            continue
        xs = [values[i] for i in node.inputs]
        in_shape = graph[node.inputs[0]].shape if node.inputs else None
        op, a, p = node.op, node.attrs, node.params
        name = _name(node.name, used)
        if op in ("Conv", "DepthwiseConv"):
            w = p["weights"]
            mode = _padding_mode(node, in_shape, w.shape[:2], a["strides"], a["dilations"])
            x = xs[0]
            if mode == "explicit":
                t, b, l, r = a["pads"]
                x = L.ZeroPadding2D(((t, b), (l, r)), name=_name(node.name + "_pad", used))(x)
                mode = "valid"
            common = dict(kernel_size=w.shape[:2], strides=a["strides"], dilation_rate=a["dilations"], padding=mode,
                          use_bias=p.get("bias") is not None, name=name)
            layer = L.Conv2D(w.shape[3], **common) if op == "Conv" else L.DepthwiseConv2D(depth_multiplier=w.shape[3],
                                                                                          **common)
            y = layer(x)
            weights.append((layer, [w] + ([p["bias"]] if p.get("bias") is not None else [])))
        elif op == "Dense":
            w = p["weights"]
            layer = L.Dense(w.shape[1], use_bias=p.get("bias") is not None, name=name)
            y = layer(xs[0])
            weights.append((layer, [w] + ([p["bias"]] if p.get("bias") is not None else [])))
        elif op == "BatchNorm":
            layer = L.BatchNormalization(axis=-1, epsilon=float(a["epsilon"]), center=p.get("beta") is not None,
                                         scale=p.get("gamma") is not None, name=name)
            y = layer(xs[0])
            weights.append((layer, [v for v in (p.get("gamma"), p.get("beta"), p["mean"], p["variance"])
                                    if v is not None]))
        elif op == "Affine":
            channels = node.shape[-1]
            scale = p.get("scale") if p.get("scale") is not None else np.ones(channels, np.float32)
            shift = p.get("shift") if p.get("shift") is not None else np.zeros(channels, np.float32)
            if len(node.shape) == 4:  # per-channel x*s + t as a 1x1 depthwise convolution
                layer = L.DepthwiseConv2D(1, use_bias=True, name=name)
                weights.append((layer, [scale.reshape(1, 1, channels, 1), shift]))
            else:  # diagonal dense: each output is one product plus the shift
                layer = L.Dense(channels, name=name)
                weights.append((layer, [np.diag(scale).astype(np.float32), shift]))
            y = layer(xs[0])
        elif op == "Relu":
            y = L.ReLU(name=name)(xs[0])
        elif op == "Relu6":
            y = L.ReLU(max_value=6.0, name=name)(xs[0])
        elif op == "Softmax":
            y = L.Softmax(axis=-1, name=name)(xs[0])
        elif op == "Identity":
            y = L.Identity(name=name)(xs[0])
        elif op == "Add":
            y = L.Add(name=name)(xs)
        elif op == "Concat":
            y = L.Concatenate(axis=a["axis"], name=name)(xs)
        elif op in ("MaxPool", "AvgPool"):
            mode = _padding_mode(node, in_shape, a["kernel"], a["strides"])
            if mode == "explicit":
                raise CkptkitError(f"pooling {node.name} has padding {a['pads']} that Keras pooling cannot express")
            cls = L.MaxPooling2D if op == "MaxPool" else L.AveragePooling2D
            y = cls(pool_size=a["kernel"], strides=a["strides"], padding=mode, name=name)(xs[0])
        elif op == "Mean":
            y = L.GlobalAveragePooling2D(keepdims=a["keepdims"], name=name)(xs[0])
        elif op == "Pad":
            (n0, n1), (t, b), (l, r), (c0, c1) = a["pads"]
            if c0 or c1:
                raise CkptkitError(f"Pad {node.name} pads channels, which Keras' ZeroPadding2D cannot")
            y = L.ZeroPadding2D(((t, b), (l, r)), name=name)(xs[0])
        elif op == "Reshape":
            y = L.Reshape(tuple(a["shape"][1:]), name=name)(xs[0])
        else:
            raise CkptkitError(f"IR op {op} of node {node.name} has no Keras writer: this is a bug in ckptkit")
        values[node.name] = y

    model = keras.Model(x_in, [values[o] for o in graph.outputs] if len(graph.outputs) > 1 else values[graph.outputs[0]],
                        name=re.sub(r"[^A-Za-z0-9_]", "_", graph.name))
    for layer, ws in weights:
        layer.set_weights([np.asarray(w, np.float32) for w in ws])
    return model


def destinations(path: str, graph: Graph) -> list[str]:
    if not path.endswith(EXTENSIONS):
        raise CkptkitError(f"output {path} must end in .keras (native) or .h5 (legacy HDF5)")
    return [path]


def export(graph: Graph, path: str, **_) -> str:
    import warnings

    model = build(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that .h5 is legacy: the user asked for it
        model.save(path)
    return path


def runner(path: str, **_):
    import keras

    model = keras.models.load_model(path, compile=False)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(model(x, training=False))

    return run
