"""Element-wise activations: Relu, Relu6, Sigmoid, Tanh, Elu, LeakyRelu, Softmax (last axis).

hard-sigmoid relu6(x+3)/6 and hard-swish x*relu6(x+3)/6 (MobileNet v3) import exactly as their
pieces: an Affine, a Relu6, an Affine and a Mul of two computed tensors (ckptkit/ops/binary.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.tf_import import common as C
from ckptkit.ops._unary import caffe_layer, keras_layer, onnx_op, unary


def _relu6_onnx(b, node, x):
    lo, hi = b.const(f"{node.name}/min", np.array(0, np.float32)), b.const(f"{node.name}/max", np.array(6, np.float32))
    return b.op("Clip", [x, lo, hi], node.name)


def _relu6_caffe(c, node, bottom):
    """Caffe's ReLU6 per --relu6: OpenCV's ReLU6 type, BVLC's newer Clip, or (portable, the default)
    min(relu(x), 6) = relu(x) - relu(relu(x) - 6), which every Caffe runs."""
    name, channels = node.name, node.shape[-1]
    if c.relu6 == "relu6":
        return c.layer(name, "ReLU6", [bottom])
    if c.relu6 == "clip":
        return c.layer(name, "Clip", [bottom], clip_param=c.pb.ClipParameter(min=0.0, max=6.0))
    r = c.layer(name + "/relu", "ReLU", [bottom])
    shifted = c.channel_affine(name + "/minus6", r, np.ones(channels, np.float32), np.full(channels, -6.0, np.float32),
                               len(node.shape))
    excess = c.layer(name + "/excess", "ReLU", [shifted])
    param = c.pb.EltwiseParameter(operation=c.pb.EltwiseParameter.SUM, coeff=[1.0, -1.0])
    return c.layer(name, "Eltwise", [r, excess], eltwise_param=param)


RELU = unary("Relu", lambda x, a: tf().nn.relu(x), tf_types=("Relu",), onnx=onnx_op("Relu"),
             keras=keras_layer(lambda L, node, name: L.ReLU(name=name)), caffe=caffe_layer("ReLU"))
RELU6 = unary("Relu6", lambda x, a: tf().nn.relu6(x), tf_types=("Relu6",), onnx=_relu6_onnx,
              keras=keras_layer(lambda L, node, name: L.ReLU(max_value=6.0, name=name)), caffe=_relu6_caffe)
SIGMOID = unary("Sigmoid", lambda x, a: tf().sigmoid(x), tf_types=("Sigmoid",), onnx=onnx_op("Sigmoid"),
                keras=keras_layer(lambda L, node, name: L.Activation("sigmoid", name=name)),
                caffe=caffe_layer("Sigmoid"))
TANH = unary("Tanh", lambda x, a: tf().tanh(x), tf_types=("Tanh",), onnx=onnx_op("Tanh"),
             keras=keras_layer(lambda L, node, name: L.Activation("tanh", name=name)), caffe=caffe_layer("TanH"))
ELU = unary("Elu", lambda x, a: tf().nn.elu(x), tf_types=("Elu",), onnx=onnx_op("Elu", alpha=1.0),
            keras=keras_layer(lambda L, node, name: L.ELU(alpha=1.0, name=name)),
            caffe=caffe_layer("ELU", lambda c, node: {"elu_param": c.pb.ELUParameter(alpha=1.0)}))


@dataclass
class LeakyReluAttrs:
    alpha: float = 0.2


LEAKY_RELU = unary(
    "LeakyRelu", lambda x, a: tf().nn.leaky_relu(x, a.alpha), attrs=LeakyReluAttrs, doc="x if x > 0 else alpha * x", tf_types=("LeakyRelu",),
    import_attrs=lambda op: {"alpha": float(C.attr(op, "alpha", 0.2))},
    onnx=onnx_op("LeakyRelu", alpha=lambda a: float(a.alpha)),
    keras=keras_layer(lambda L, node, name: L.LeakyReLU(negative_slope=node.attrs.alpha, name=name)),
    caffe=caffe_layer("ReLU", lambda c, node: {"relu_param": c.pb.ReLUParameter(negative_slope=node.attrs.alpha)}))

SOFTMAX = unary("Softmax", lambda x, a: tf().nn.softmax(x), tf_types=("Softmax",),
                onnx=lambda b, node, x: b.op("Softmax", [x], node.name, axis=1 if len(node.shape) == 4 else -1),
                keras=keras_layer(lambda L, node, name: L.Softmax(axis=-1, name=name)),
                caffe=caffe_layer("Softmax", lambda c, node: {"softmax_param": c.pb.SoftmaxParameter(axis=1)}))

RELU.doc = "max(x, 0)"
RELU6.doc = "min(max(x, 0), 6)"
SIGMOID.doc = "1 / (1 + exp(-x))"
TANH.doc = "tanh(x)"
ELU.doc = "x if x > 0 else exp(x) - 1"
SOFTMAX.doc = "softmax over the last axis"
