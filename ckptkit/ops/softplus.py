"""Softplus: log(1 + exp(x))."""
from ckptkit.core.lazy_tf import tf
from ckptkit.ops._unary import keras_layer, onnx_op, unary

SOFTPLUS = unary("Softplus", lambda x, attrs: tf().nn.softplus(x), tf_types=("Softplus",),
                 onnx=onnx_op("Softplus"),
                 keras=keras_layer(lambda L, node, name: L.Activation("softplus", name=name)),
                 doc="log(1 + exp(x))")
# no caffe= : a Caffe export of a net using it is refused up front, naming the node
