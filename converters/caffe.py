"""IR -> Caffe (OUT.prototxt + OUT.caffemodel), exact to TF, verified in every installed Caffe consumer
(OpenCV 4.x's importer, MNN: converters/caffe_consumers.py).

Caffe is NCHW with symmetric padding only and rounds pooling output sizes up. The
exact mappings used here:
  * Conv weights HWIO -> OIHW; depthwise [kh,kw,C,M] -> grouped conv [C*M,1,kh,kw], group C.
  * Unequal pads (TF SAME's odd extra pixel bottom/right, explicit Pad ops): pad max(before,
    after) on both sides and grow the kernel by zero rows/columns on the side that must not
    see the extra padding (for SAME: k+1 with a zero first row, pad (total+1)/2).
  * MAX pool: pad = top pad; windows are clipped to the input, so padding never wins.
  * AVE pool: Caffe divides by the window clipped to input+pad, TF by the real cells only;
    the same pooling of ones (Power 0*x+1) gives their ratio, divided out with Power -1 and
    Eltwise PROD (a spatial Scale layer would be exact in BVLC/OpenCV, but MNN misreads it).
  * Per-channel x*s + t (a BatchNorm left over by --bn fold, Mul/Add by constants, ReLU6's
    shift) on NCHW blobs: a 1x1 depthwise Convolution, read alike everywhere; --bn keep:
    BatchNorm (three blobs, scale factor 1) + Scale, as BVLC writes it.
  * Output-size mismatches from Caffe's ceil rounding are refused with a clear error.
  * InnerProduct after a spatial flatten: Caffe flattens C,H,W where TF flattens H,W,C,
    so the weight rows are permuted.
  * ReLU6 default "portable": min(relu(x), 6) = relu(x) - relu(relu(x) - 6), runs in BVLC
    Caffe and OpenCV; "relu6" writes OpenCV's ReLU6 type, "clip" BVLC's newer Clip layer.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ckptkit.ir import registry
from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph, UniqueNames
from ckptkit.core.pages import write_array

from ckptkit.converters import caffe_consumers
from ckptkit.converters.base import Runtime, Writer, write_node
from ckptkit.converters.protobuf_wire import check_protobuf_size, field

log = logging.getLogger("ckptkit")

TOLERANCE = 1e-3  # OpenCV's float kernels differ slightly from TF's (each consumer states its own)
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


# caffe.proto field numbers of the fields the .caffemodel writer spells itself
NET_LAYER = 100  # NetParameter.layer
LAYER_BLOBS = 7  # LayerParameter.blobs
BLOB_DATA = 5  # BlobProto.data (packed float)


def _pb():
    from ckptkit.converters import caffe_pb2

    return caffe_pb2


class _Net:
    def __init__(self, name: str):
        pb = _pb()
        self.pb = pb
        self.net = pb.NetParameter(name=name)
        self.weights = pb.NetParameter(name=name)  # blobs hold their shapes; their data are in `blob_data`
        self.blob_data: list[list[np.ndarray]] = []  # per layer of `weights`, its blobs' float32 values
        self.unique = UniqueNames()

    def layer(self, name: str, type_: str, bottoms: list[str], blobs: Optional[list[np.ndarray]] = None, **params):
        name = self.unique(name)
        layer = self.net.layer.add(name=name, type=type_, bottom=bottoms, top=[name])
        for key, value in params.items():
            getattr(layer, key).CopyFrom(value)
        if blobs:
            wl = self.weights.layer.add(name=name, type=type_)
            for b in blobs:
                wl.blobs.add().shape.dim.extend(np.shape(b))
            self.blob_data.append([np.asarray(b) for b in blobs])  # views: written (as <f4) by write_weights
        return name

    def write_weights(self, path: str) -> None:
        """The .caffemodel: `weights` with each blob's data written from its array, not through the message
        (`repeated float data` would hold a copy, and `extend` wants a list of Python floats: 3 GB for vgg's
        fc6). Each layer: [name, type][blobs: [data: packed floats][shape]], as protobuf would write it."""
        head = self.pb.NetParameter()
        head.CopyFrom(self.weights)
        del head.layer[:]
        with open(path, "wb") as f:
            f.write(head.SerializeToString())
            for layer, arrays in zip(self.weights.layer, self.blob_data):
                bare = self.pb.LayerParameter()
                bare.CopyFrom(layer)
                del bare.blobs[:]
                first = bare.SerializeToString()
                blobs = []
                for blob, data in zip(layer.blobs, arrays):
                    shape = blob.SerializeToString()  # only its shape: the data follow as a packed field
                    nbytes = 4 * data.size
                    lead = field(BLOB_DATA, nbytes)
                    blobs.append((field(LAYER_BLOBS, len(lead) + nbytes + len(shape)) + lead, data, shape))
                size = len(first) + sum(len(lead) + 4 * data.size + len(shape) for lead, data, shape in blobs)
                f.write(field(NET_LAYER, size) + first)
                for lead, data, shape in blobs:
                    f.write(lead)
                    write_array(f, data, "<f4")  # a transposed kernel a slab at a time
                    f.write(shape)


class Builder:
    """What an op's Caffe writer gets: `layer(...)` adds a layer (and its blobs), `pb` is caffe_pb2,
    `flat_from` records 2-D tensors flattened from (H, W, C) (Caffe flattens C, H, W)."""

    def __init__(self, graph: Graph, relu6: str, batchnorm_layers: bool = True):
        self.g = graph
        self.relu6 = relu6
        self.batchnorm_layers = batchnorm_layers  # False: a BatchNorm is written as channel_affine (x*s + t)
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

    def channel_affine(self, name: str, bottom: str, scale: np.ndarray, shift: Optional[np.ndarray], rank: int) -> str:
        """bottom * scale + shift per channel. On NCHW blobs a 1x1 depthwise convolution (group = C): the same
        single multiply-add per value as a Scale layer, and every consumer reads convolutions alike (MNN 3.6
        computes a Scale layer that does not follow a convolution wrongly). On N x C blobs a Scale layer."""
        if rank != 4:
            return self.scale(name, bottom, scale, shift)
        channels = int(scale.shape[0])
        param = self.pb.ConvolutionParameter(num_output=channels, bias_term=shift is not None, group=channels,
                                             kernel_h=1, kernel_w=1, stride_h=1, stride_w=1, pad_h=0, pad_w=0)
        blobs = [np.asarray(scale, np.float32).reshape(channels, 1, 1, 1)] + (
            [np.asarray(shift, np.float32)] if shift is not None else [])
        return self.layer(name, "Convolution", [bottom], blobs, convolution_param=param)

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
        if registry.get(node.op).layout in ("HWIO", "HWCM"):  # a padded convolution (ckptkit/ops/conv.py)
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


def build(graph: Graph, relu6: str = "portable", batchnorm_layers: bool = True):
    """(net prototxt message, its weights: `.weights` (the message without blob data), `.write_weights(path)`).
    `batchnorm_layers`: BatchNorm+Scale layers (--bn keep), else each
    BatchNorm left in the graph becomes its per-channel x*s + t (Builder.channel_affine)."""
    if relu6 not in RELU6_MODES:
        raise CkptkitError(f"--relu6 {relu6} is unknown: choose one of {', '.join(RELU6_MODES)}")
    WRITER.require(graph)
    net = Builder(fuse_pads(graph), relu6, batchnorm_layers).write()
    return net.net, net


def export(graph: Graph, path: str, *, relu6: str = "portable", batchnorm_layers: bool = True, **_) -> list[str]:
    from google.protobuf import text_format

    net, weights = build(graph, relu6, batchnorm_layers)
    prototxt, caffemodel = destinations(path, graph)
    with open(prototxt, "w") as f:
        # the model's metadata (e.g. ckptkit.preprocessing: how its statistics were made) as '#' comments,
        # which every protobuf text parser skips
        f.writelines(f"# {key}: {' '.join(value.split())}\n" for key, value in sorted(graph.metadata.items()))
        f.write(text_format.MessageToString(net))
    weights.write_weights(caffemodel)
    return [prototxt, caffemodel]


def runner(path: str, graph: Optional[Graph] = None, **_):
    """Runs the written model in OpenCV 4.x's Caffe importer (a test/verify dependency)."""
    return caffe_consumers.CONSUMERS["opencv"].runner(path, graph)


def mnn_misreads(graph: Graph, batchnorm_layers: bool) -> list[str]:
    """Nodes MNN 3.6 computes wrongly from these Caffe files: a BatchNorm layer that does not directly follow a
    (non-grouped) convolution used by nothing else. MNN folds that one into the convolution; any other, its
    BatchNorm (and Scale) layers compute garbage: measured 0.6-1.0 relative error after a pool, an Eltwise, a
    ReLU, a depthwise or a shared convolution."""
    if not batchnorm_layers:
        return []
    graph = fuse_pads(graph)
    users = graph.consumers()
    wrong = []
    for node in graph.nodes:
        if node.op == "BatchNorm":
            src = graph[node.inputs[0]]
            if registry.get(src.op).layout != "HWIO" or len(users[src.name]) != 1:
                wrong.append(node.name)
    return wrong


@dataclass(frozen=True)
class Options:
    relu6: str = "portable"  # portable | relu6 | clip
    caffe_runtime: str = ""  # comma-separated consumers to verify in (converters/caffe_consumers.py); "": installed
    fold: bool = True  # from export(): BatchNorms left over are written as x*s + t, not BatchNorm+Scale


class CaffeWriter(Writer):
    name, label, suffixes, options, tolerance = "caffe", "Caffe", (".prototxt", ".caffemodel"), Options, TOLERANCE
    command_help = "export to Caffe (.prototxt + .caffemodel), verified in each installed Caffe consumer"
    output_help = "writes OUT.prototxt and OUT.caffemodel (or OUT/NAME.* when OUT is a folder)"
    keep_help = "keep Caffe BatchNorm+Scale layers"

    @property
    def description(self) -> str:
        consumers = "; ".join(f"{c.name}: {c.label} (tolerance {c.tolerance:g}; {c.install})"
                              for c in caffe_consumers.CONSUMERS.values())
        return ("Export to Caffe: BatchNorm folded (default) or as BatchNorm+Scale; TF's SAME padding, average "
                "pooling and flatten order mapped exactly, in layers every consumer reads alike; checked in every "
                f"installed consumer: {consumers}.")

    def add_flags(self, p, prefix: str = "") -> None:
        p.add_argument("--relu6", choices=RELU6_MODES, default=RELU6_MODES[0],
                       help=f"{prefix}portable: relu(x) - relu(relu(x) - 6), loads in every Caffe consumer "
                            "(default); relu6: OpenCV's ReLU6 layer (not in BVLC Caffe); clip: the Clip layer of "
                            "recent BVLC Caffe, which neither OpenCV 4.x nor MNN can load (so it cannot be verified "
                            "here: needs --no-verify)")
        p.add_argument("--caffe-runtime", default="", metavar="NAMES",
                       help=f"{prefix}Caffe consumers to verify in, comma-separated "
                            f"({', '.join(caffe_consumers.CONSUMERS)}), each required to be installed; default: every "
                            "installed one, each within its own tolerance")

    def destinations(self, path: str, graph: Optional[Graph]) -> list[str]:
        return destinations(path, graph)

    def check_options(self, options: Options) -> None:
        if options.relu6 not in RELU6_MODES:
            raise CkptkitError(f"--relu6 {options.relu6} is unknown: choose one of {', '.join(RELU6_MODES)}")
        caffe_consumers.names(options.caffe_runtime)  # refuses unknown names

    def check(self, graph: Graph, options: Options) -> None:
        check_protobuf_size(graph, "a .caffemodel", "export to ONNX (written with external data past 2 GiB) or "
                            "Keras instead")
        wrong = mnn_misreads(graph, not options.fold)
        if not wrong:
            return
        shown = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        advice = "use --bn fold (each becomes a per-channel 1x1 convolution, read alike by every consumer)"
        if "mnn" in caffe_consumers.names(options.caffe_runtime) or (
                not options.caffe_runtime and caffe_consumers.CONSUMERS["mnn"].version() is not None):
            raise CkptkitError(f"MNN misreads a Caffe BatchNorm layer that does not directly follow a convolution "
                               f"({shown}): {advice}; or --caffe-runtime opencv if the files are not for MNN")
        log.warning("warning: MNN would misread %d of these Caffe BatchNorm layers (%s), which do not directly "
                    "follow a convolution: for MNN, %s", len(wrong), shown, advice)

    def prepare(self, graph: Graph) -> Graph:
        return fuse_pads(graph)

    def write(self, graph: Graph, path: str, options: Options) -> list[str]:
        return export(graph, path, relu6=options.relu6, batchnorm_layers=not options.fold)

    def runner(self, path: str, graph: Graph, options: Options):
        return runner(path, graph)

    def intermediates(self, path: str, graph: Graph, options: Options):
        """OpenCV's blobs of the layers named after IR nodes (when OpenCV is installed)."""
        if caffe_consumers.CONSUMERS["opencv"].version() is None:
            return None
        return caffe_consumers.opencv_intermediates(path, self.prepare(graph))

    def runtimes(self, path: str, graph: Graph, options: Options) -> list[Runtime]:
        return [Runtime(f"{consumer.label} {version}", functools.partial(consumer.runner, path, graph),
                        consumer.tolerance) for consumer, version in caffe_consumers.select(
                            caffe_consumers.names(options.caffe_runtime))]


WRITER = CaffeWriter()
