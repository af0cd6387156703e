"""IR -> Caffe (OUT.prototxt + OUT.caffemodel), exact to TF, verified with OpenCV 4.x's Caffe importer.

Caffe is NCHW with symmetric padding only and rounds pooling output sizes up. The
exact mappings used here:
  * Conv weights HWIO -> OIHW; depthwise [kh,kw,C,M] -> grouped conv [C*M,1,kh,kw], group C.
  * Unequal pads (TF SAME's odd extra pixel bottom/right, explicit Pad ops): pad max(before,
    after) on both sides and grow the kernel by zero rows/columns on the side that must not
    see the extra padding (for SAME: k+1 with a zero first row, pad (total+1)/2).
  * MAX pool: pad = top pad; windows are clipped to the input, so padding never wins.
  * AVE pool: Caffe divides by the window clipped to input+pad, TF by the real cells only;
    a Scale layer (axis 2, two axes) multiplies by the exact ratio map.
  * Output-size mismatches from Caffe's ceil rounding are refused with a clear error.
  * InnerProduct after a spatial flatten: Caffe flattens C,H,W where TF flattens H,W,C,
    so the weight rows are permuted.
  * ReLU6 default "portable": min(relu(x), 6) = relu(x) - relu(relu(x) - 6), runs in BVLC
    Caffe and OpenCV; "relu6" writes OpenCV's ReLU6 type, "clip" BVLC's newer Clip layer.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit import ops
from ckptkit.errors import CkptkitError
from ckptkit.ir import Graph, UniqueNames

from .base import Writer, write_node

TOLERANCE = 1e-3  # OpenCV's float kernels differ slightly from TF's
RELU6_MODES = ("portable", "relu6", "clip")
BN_MODES = ("fold", "keep")


def destinations(path: str, graph: Optional[Graph]) -> list[str]:
    """OUT.prototxt and OUT.caffemodel; a folder (which needs the graph for its name) gives FOLDER/NAME.*."""
    if os.path.isdir(path) or path.endswith(os.sep):
        base = os.path.join(path, _safe(graph.name))
    else:
        base = path[: -len(".prototxt")] if path.endswith(".prototxt") else path
        base = base[: -len(".caffemodel")] if base.endswith(".caffemodel") else base
    return [base + ".prototxt", base + ".caffemodel"]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) or "model"


def _pb():
    from converters import caffe_pb2

    return caffe_pb2


class _Net:
    def __init__(self, name: str):
        pb = _pb()
        self.pb = pb
        self.net = pb.NetParameter(name=name)
        self.weights = pb.NetParameter(name=name)
        self.unique = UniqueNames()

    def layer(self, name: str, type_: str, bottoms: list[str], blobs: Optional[list[np.ndarray]] = None, **params):
        name = self.unique(name)
        layer = self.net.layer.add(name=name, type=type_, bottom=bottoms, top=[name])
        for key, value in params.items():
            getattr(layer, key).CopyFrom(value)
        if blobs:
            wl = self.weights.layer.add(name=name, type=type_)
            for b in blobs:
                blob = wl.blobs.add()
                blob.shape.dim.extend(b.shape)
                blob.data.extend(np.asarray(b, np.float32).ravel().tolist())
        return name


class Builder:
    """What an op's Caffe writer gets: `layer(...)` adds a layer (and its blobs), `pb` is caffe_pb2,
    `flat_from` records 2-D tensors flattened from (H, W, C) (Caffe flattens C, H, W)."""

    def __init__(self, graph: Graph, relu6: str):
        self.g = graph
        self.relu6 = relu6
        self.n = _Net(_safe(graph.name))
        self.pb = self.n.pb
        self.top: dict[str, str] = {}
        self.flat_from: dict[str, tuple] = {}

    def layer(self, name: str, type_: str, bottoms: list[str], blobs: Optional[list[np.ndarray]] = None,
              **params) -> str:
        return self.n.layer(name, type_, bottoms, blobs, **params)

    def write(self):
        inp = self.g[self.g.inputs[0]]
        h, w, c = inp.shape[1:]
        self.n.net.input.append("input")
        self.n.net.input_shape.add().dim.extend([1, c, h, w])
        self.n.unique("input")
        self.top[inp.name] = "input"
        for node in self.g.nodes:
            if node.op != "Input":
                self.top[node.name] = write_node(self, "caffe", node, [self.top[i] for i in node.inputs])
        for o in self.g.outputs:
            if o in self.flat_from and self.flat_from[o][:2] != (1, 1):
                raise CkptkitError(f"output {o} is a spatial flatten, whose order Caffe cannot reproduce")
        return self.n

    def scale(self, name: str, bottom: str, scale: np.ndarray, shift: Optional[np.ndarray], axis: int = 1) -> str:
        """A Scale layer: bottom * scale (+ shift), scale spanning `scale.ndim` axes from `axis`."""
        param = self.pb.ScaleParameter(axis=axis, num_axes=scale.ndim, bias_term=shift is not None)
        blobs = [scale] + ([shift] if shift is not None else [])
        return self.layer(name, "Scale", [bottom], blobs, scale_param=param)

    def crop(self, name: str, bottom: str, size: tuple[int, int], extra: tuple[int, int], offset: tuple[int, int]) -> str:
        """bottom[:, :, oh:oh+H, ow:ow+W] where bottom is (H, W) + `extra` big. Caffe's Crop takes its size from
        a reference blob: a stride-1 max pool of window extra+1 over the bottom has exactly that size."""
        ref = self.layer(name + "/crop_size", "Pooling", [bottom], pooling_param=self.pb.PoolingParameter(
            pool=self.pb.PoolingParameter.MAX, kernel_h=extra[0] + 1, kernel_w=extra[1] + 1, stride=1))
        return self.layer(name, "Crop", [bottom, ref], crop_param=self.pb.CropParameter(axis=2, offset=list(offset)))


def fuse_pads(graph: Graph) -> Graph:
    """Pad -> convolution becomes one convolution with larger pads (Caffe has no Pad layer)."""
    graph = graph.copy()
    users = graph.consumers()
    keep, rename = [], {}
    by_name = {n.name: n for n in graph.nodes}
    for node in graph.nodes:
        if ops.get(node.op).layout in ("HWIO", "HWCM"):  # a padded convolution (ckptkit/ops/conv.py)
            src = by_name[node.inputs[0]]
            if src.op == "Pad" and len(users[src.name]) == 1 and src.attrs.pads[3] == [0, 0]:
                (_, _), (pt, pb_), (pl, pr), _ = src.attrs.pads
                t, b, l, r = node.attrs.pads
                node.attrs = dataclasses.replace(node.attrs, pads=(t + pt, b + pb_, l + pl, r + pr))
                node.inputs = list(src.inputs)
                rename[src.name] = src.inputs[0]
        keep.append(node)
    used = {i for n in keep for i in n.inputs} | set(graph.outputs)
    return graph.rebuild([n for n in keep if n.name in used or n.op == "Input"])


def build(graph: Graph, relu6: str = "portable"):
    """(net prototxt message, weights message)."""
    if relu6 not in RELU6_MODES:
        raise CkptkitError(f"--relu6 {relu6} is unknown: choose one of {', '.join(RELU6_MODES)}")
    WRITER.require(graph)
    net = Builder(fuse_pads(graph), relu6).write()
    return net.net, net.weights


def export(graph: Graph, path: str, *, relu6: str = "portable", **_) -> list[str]:
    from google.protobuf import text_format

    net, weights = build(graph, relu6)
    prototxt, caffemodel = destinations(path, graph)
    with open(prototxt, "w") as f:
        f.write(text_format.MessageToString(net))
    with open(caffemodel, "wb") as f:
        f.write(weights.SerializeToString())
    return [prototxt, caffemodel]


def runner(path: str, graph: Optional[Graph] = None, **_):
    """Runs the written model in OpenCV 4.x's Caffe importer (a test/verify dependency)."""
    try:
        import cv2
    except ImportError:
        raise CkptkitError("verifying Caffe output needs OpenCV 4.x: pip install 'ckptkit[caffe]' (or "
                           "'opencv-python-headless<5'), or pass --no-verify") from None
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise CkptkitError(f"OpenCV {cv2.__version__} has no Caffe importer (OpenCV 5 dropped it): "
                           "pip install 'opencv-python-headless<5', or pass --no-verify")
    prototxt, caffemodel = path, path[: -len(".prototxt")] + ".caffemodel"
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    if hasattr(net, "enableWinograd"):  # Winograd convolution trades precision for speed: measure the export
        net.enableWinograd(False)

    def run(x: np.ndarray) -> np.ndarray:
        net.setInput(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))
        y = np.asarray(net.forward())
        y = y.transpose(0, 2, 3, 1) if y.ndim == 4 else y.reshape(y.shape[0], -1)
        if graph is not None:  # OpenCV may drop unit spatial axes: give TF's output shape back
            want = (y.shape[0],) + tuple(graph[graph.outputs[0]].shape[1:])
            if y.size == int(np.prod(want)):
                y = y.reshape(want)
        return y

    return run


@dataclass(frozen=True)
class Options:
    relu6: str = "portable"  # portable | relu6 | clip


class CaffeWriter(Writer):
    name, label, suffixes, options, tolerance = "caffe", "Caffe", (".prototxt", ".caffemodel"), Options, TOLERANCE

    def destinations(self, path: str, graph: Optional[Graph]) -> list[str]:
        return destinations(path, graph)

    def check_options(self, options: Options) -> None:
        if options.relu6 not in RELU6_MODES:
            raise CkptkitError(f"--relu6 {options.relu6} is unknown: choose one of {', '.join(RELU6_MODES)}")

    def prepare(self, graph: Graph) -> Graph:
        return fuse_pads(graph)

    def write(self, graph: Graph, path: str, options: Options) -> list[str]:
        return export(graph, path, relu6=options.relu6)

    def runner(self, path: str, graph: Graph, options: Options):
        return runner(path, graph)


WRITER = CaffeWriter()
