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

import os
from typing import Optional

import numpy as np

from ckptkit.errors import CkptkitError
from ckptkit.ir import Graph, Node, UniqueNames, bn_affine

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


def _caffe_pool_out(size: int, k: int, s: int, p: int) -> int:
    out = -(-(size + 2 * p - k) // s) + 1
    if p > 0 and (out - 1) * s >= size + p:  # last window would start inside the padding
        out -= 1
    return out


def _ave_ratio(size: int, k: int, s: int, p: int, offset: int, tf_pad: int, out: int) -> np.ndarray:
    """Per TF output position along one axis: Caffe's divisor / TF's count of real cells.
    Caffe output i + offset covers the same cells as TF output i."""
    ratio = np.empty(out)
    for i in range(out):
        start = (i + offset) * s - p
        caffe = min(start + k, size + p) - max(start, -p)
        tf_start = i * s - tf_pad
        real = min(tf_start + k, size) - max(tf_start, 0)
        ratio[i] = caffe / real
    return ratio


def _pool_axis(size: int, k: int, s: int, top: int, bottom: int, out: int) -> tuple[int, int, int]:
    """(Caffe pad, crop offset, Caffe output size) whose windows are TF's, for one axis.

    Caffe pads symmetrically and rounds up; TF's SAME pads the odd cell after. Either
    Caffe with the top pad gives TF's windows (maybe one extra at the end, cropped), or
    for stride 1 the bottom pad gives them shifted by one (cropped at the start)."""
    for pad, offset in ((top, 0), (bottom, bottom - top)):
        if offset and s != 1:
            continue
        got = _caffe_pool_out(size, k, s, pad)
        if got - offset >= out:
            return pad, offset, got
    raise CkptkitError(f"pooling {k}/{s} with pads ({top},{bottom}) on {size} has no exact Caffe form")


def _even_out(weights: np.ndarray, axis: int, before: int, after: int, dilation: int, name: str):
    diff = after - before
    if diff == 0:
        return weights, before
    if diff % dilation:
        raise CkptkitError(f"{name}: pads ({before},{after}) with dilation {dilation} have no exact Caffe form")
    shape = list(weights.shape)
    shape[axis] = abs(diff) // dilation
    zeros = np.zeros(shape, weights.dtype)
    parts = [zeros, weights] if diff > 0 else [weights, zeros]
    return np.concatenate(parts, axis=axis), max(before, after)


class _Writer:
    def __init__(self, graph: Graph, relu6: str):
        if relu6 not in RELU6_MODES:
            raise CkptkitError(f"--relu6 {relu6} is unknown: choose one of {', '.join(RELU6_MODES)}")
        self.g = graph
        self.relu6 = relu6
        self.n = _Net(_safe(graph.name))
        self.pb = self.n.pb
        self.top: dict[str, str] = {}
        self.flat_from: dict[str, tuple] = {}  # 2-D tensors flattened from (H, W, C) in Caffe's C,H,W order

    def write(self):
        inp = self.g[self.g.inputs[0]]
        h, w, c = inp.shape[1:]
        self.n.net.input.append("input")
        self.n.net.input_shape.add().dim.extend([1, c, h, w])
        self.n.unique("input")
        self.top[inp.name] = "input"
        for node in self.g.nodes:
            if node.op != "Input":
                self.top[node.name] = self.node(node, [self.top[i] for i in node.inputs])
        for o in self.g.outputs:
            if o in self.flat_from and self.flat_from[o][:2] != (1, 1):
                raise CkptkitError(f"output {o} is a spatial flatten, whose order Caffe cannot reproduce")
        return self.n

    # ---- helpers -------------------------------------------------------------------------
    def _conv(self, node: Node, bottom: str, weights: np.ndarray, bias: Optional[np.ndarray], group: int) -> str:
        """weights OIHW; pads from node.attrs (TF semantics), mapped to Caffe's symmetric pads."""
        t, b, l, r = node.attrs["pads"]
        dh, dw = node.attrs["dilations"]
        # Caffe pads symmetrically. With pads (before, after) unequal, pad max(before, after)
        # on both sides and add |after - before| / dilation zero rows to the kernel on the side
        # that must not see the extra padding (first rows when after > before, last otherwise).
        weights, t = _even_out(weights, 2, t, b, dh, node.name)
        weights, l = _even_out(weights, 3, l, r, dw, node.name)
        kh, kw = weights.shape[2:]
        sh, sw = node.attrs["strides"]
        param = self.pb.ConvolutionParameter(num_output=weights.shape[0], bias_term=bias is not None, pad_h=t, pad_w=l,
                                             kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, group=group)
        if (dh, dw) != (1, 1):
            if dh != dw:
                raise CkptkitError(f"{node.name}: dilation {dh}x{dw} must be equal in both axes for Caffe")
            param.dilation.append(dh)
        blobs = [weights] + ([bias] if bias is not None else [])
        return self.n.layer(node.name, "Convolution", [bottom], blobs, convolution_param=param)

    def _scale(self, name: str, bottom: str, scale: np.ndarray, shift: Optional[np.ndarray], axis: int = 1) -> str:
        param = self.pb.ScaleParameter(axis=axis, num_axes=scale.ndim, bias_term=shift is not None)
        blobs = [scale] + ([shift] if shift is not None else [])
        return self.n.layer(name, "Scale", [bottom], blobs, scale_param=param)

    def _relu6(self, name: str, bottom: str, channels: int) -> str:
        if self.relu6 == "relu6":
            return self.n.layer(name, "ReLU6", [bottom])
        if self.relu6 == "clip":
            return self.n.layer(name, "Clip", [bottom], clip_param=self.pb.ClipParameter(min=0.0, max=6.0))
        r = self.n.layer(name + "/relu", "ReLU", [bottom])
        shifted = self._scale(name + "/minus6", r, np.ones(channels, np.float32), np.full(channels, -6.0, np.float32))
        excess = self.n.layer(name + "/excess", "ReLU", [shifted])
        param = self.pb.EltwiseParameter(operation=self.pb.EltwiseParameter.SUM, coeff=[1.0, -1.0])
        return self.n.layer(name, "Eltwise", [r, excess], eltwise_param=param)

    # ---- one IR node ---------------------------------------------------------------------
    def node(self, node: Node, bottoms: list[str]) -> str:
        op, a, p, name = node.op, node.attrs, node.params, node.name
        rank = len(node.shape)
        if op == "Conv":
            return self._conv(node, bottoms[0], p["weights"].transpose(3, 2, 0, 1), p.get("bias"), 1)  # HWIO -> OIHW
        if op == "DepthwiseConv":  # [kh,kw,C,M] -> [C*M,1,kh,kw], output channel c*M + m
            kh, kw, c, m = p["weights"].shape
            w = p["weights"].transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
            return self._conv(node, bottoms[0], w, p.get("bias"), c)
        if op == "Dense":
            w = p["weights"]
            src = node.inputs[0]
            if src in self.flat_from:  # rows in TF's H,W,C order -> Caffe's C,H,W order
                h, wd, c = self.flat_from[src]
                w = w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)
            param = self.pb.InnerProductParameter(num_output=w.shape[1], bias_term=p.get("bias") is not None)
            blobs = [w.T.copy()] + ([p["bias"]] if p.get("bias") is not None else [])
            return self.n.layer(name, "InnerProduct", bottoms, blobs, inner_product_param=param)
        if op == "BatchNorm":
            ch = node.shape[-1]
            bn_affine(node)  # refuses missing/invalid statistics
            param = self.pb.BatchNormParameter(use_global_stats=True, eps=float(a["epsilon"]))
            # blobs: mean * f, variance * f, f  (f = 1)
            blobs = [p["mean"], p["variance"], np.ones(1, np.float32)]
            bn = self.n.layer(name, "BatchNorm", bottoms, blobs, batch_norm_param=param)
            gamma = p["gamma"] if p.get("gamma") is not None else np.ones(ch, np.float32)
            return self._scale(name + "/scale", bn, gamma, p.get("beta"))
        if op == "Affine":
            ch = node.shape[-1]
            scale = p["scale"] if p.get("scale") is not None else np.ones(ch, np.float32)
            return self._scale(name, bottoms[0], scale, p.get("shift"))
        if op == "Relu":
            return self.n.layer(name, "ReLU", bottoms)
        if op == "Relu6":
            return self._relu6(name, bottoms[0], node.shape[-1])
        if op == "Softmax":
            return self.n.layer(name, "Softmax", bottoms, softmax_param=self.pb.SoftmaxParameter(axis=1))
        if op == "Identity":
            return bottoms[0]
        if op == "Add":
            return self.n.layer(name, "Eltwise", bottoms,
                                eltwise_param=self.pb.EltwiseParameter(operation=self.pb.EltwiseParameter.SUM))
        if op == "Concat":
            axis = (0, 2, 3, 1)[a["axis"]] if rank == 4 else a["axis"]
            return self.n.layer(name, "Concat", bottoms, concat_param=self.pb.ConcatParameter(axis=axis))
        if op in ("MaxPool", "AvgPool"):
            return self._pool(node, bottoms[0])
        if op == "Mean":
            pooled = self.n.layer(name if a["keepdims"] else name + "/pool", "Pooling", bottoms,
                                  pooling_param=self.pb.PoolingParameter(pool=self.pb.PoolingParameter.AVE,
                                                                         global_pooling=True))
            if a["keepdims"]:
                return pooled
            self.flat_from[name] = (1, 1, node.shape[-1])
            return self.n.layer(name, "Flatten", [pooled], flatten_param=self.pb.FlattenParameter(axis=1))
        if op == "Reshape":
            src = self.g[node.inputs[0]]
            if len(src.shape) == 4 and rank == 2:
                self.flat_from[name] = tuple(src.shape[1:])
                return self.n.layer(name, "Flatten", bottoms, flatten_param=self.pb.FlattenParameter(axis=1))
            if len(src.shape) == 2 and rank == 4 and node.shape[1:3] == (1, 1):
                raise CkptkitError(f"{name}: reshaping to [N,1,1,C] is not written for Caffe yet")
            raise CkptkitError(f"{name}: reshape {src.shape} -> {node.shape} has no Caffe form")
        if op == "Pad":
            raise CkptkitError(f"{name}: a Pad that no convolution absorbs has no BVLC Caffe layer")
        raise CkptkitError(f"IR op {op} of node {name} has no Caffe writer: this is a bug in ckptkit")

    def _pool(self, node: Node, bottom: str) -> str:
        a = node.attrs
        src = self.g[node.inputs[0]].shape
        (kh, kw), (sh, sw) = a["kernel"], a["strides"]
        t, b, l, r = a["pads"]
        out_h, out_w = node.shape[1:3]
        ph, oh, ch = _pool_axis(src[1], kh, sh, t, b, out_h)
        pw, ow, cw = _pool_axis(src[2], kw, sw, l, r, out_w)
        kind = self.pb.PoolingParameter.MAX if node.op == "MaxPool" else self.pb.PoolingParameter.AVE
        param = self.pb.PoolingParameter(pool=kind, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph,
                                         pad_w=pw)
        ratio = None
        if node.op == "AvgPool":
            ratio = np.outer(_ave_ratio(src[1], kh, sh, ph, oh, t, out_h), _ave_ratio(src[2], kw, sw, pw, ow, l, out_w))
            if np.all(ratio == 1.0):
                ratio = None
        crop = (ch, cw) != (out_h, out_w)
        name = node.name if ratio is None and not crop else node.name + "/caffe_pool"
        y = self.n.layer(name, "Pooling", [bottom], pooling_param=param)
        if crop:  # Crop needs a reference blob of the target size: a 1-stride max pool of the right extent
            ref = self.n.layer(node.name + "/crop_size", "Pooling", [y], pooling_param=self.pb.PoolingParameter(
                pool=self.pb.PoolingParameter.MAX, kernel_h=ch - out_h + 1, kernel_w=cw - out_w + 1, stride=1))
            name = node.name if ratio is None else node.name + "/crop"
            y = self.n.layer(name, "Crop", [y, ref], crop_param=self.pb.CropParameter(axis=2, offset=[oh, ow]))
        if ratio is None:
            return y
        # Caffe divided by cells that include padding; rescale each position to TF's real-cell mean.
        return self._scale(node.name, y, ratio.astype(np.float32), None, axis=2)


def fuse_pads(graph: Graph) -> Graph:
    """Pad -> Conv/DepthwiseConv becomes one convolution with larger pads (Caffe has no Pad layer)."""
    graph = graph.copy()
    users = graph.consumers()
    keep, rename = [], {}
    by_name = {n.name: n for n in graph.nodes}
    for node in graph.nodes:
        if node.op in ("Conv", "DepthwiseConv"):
            src = by_name[node.inputs[0]]
            if src.op == "Pad" and len(users[src.name]) == 1 and src.attrs["pads"][3] == [0, 0]:
                (_, _), (pt, pb_), (pl, pr), _ = src.attrs["pads"]
                t, b, l, r = node.attrs["pads"]
                node.attrs["pads"] = (t + pt, b + pb_, l + pl, r + pr)
                node.inputs = list(src.inputs)
                rename[src.name] = src.inputs[0]
        keep.append(node)
    used = {i for n in keep for i in n.inputs} | set(graph.outputs)
    return graph.rebuild([n for n in keep if n.name in used or n.op == "Input"])


def build(graph: Graph, relu6: str = "portable"):
    """(net prototxt message, weights message)."""
    net = _Writer(fuse_pads(graph), relu6).write()
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
