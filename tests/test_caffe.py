"""Caffe export (BatchNorm folded and kept): OpenCV 4.x's Caffe importer reproduces TF's own output."""
import os

import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit._tf import tf
from ckptkit.export import export
from ckptkit.sources import load
from conftest import NETS, rel_error
from converters.caffe import runner


@pytest.mark.parametrize("bn", ["fold", "keep"])
@pytest.mark.parametrize("name", list(NETS))
def test_caffe_matches_tf(store, reference, tmp_path, name, bn):
    prefix = store(name)
    result = export(load(prefix), "caffe", str(tmp_path / "net"), fold=bn == "fold")
    prototxt, caffemodel = result.files
    assert prototxt.endswith("net.prototxt") and os.path.getsize(caffemodel) > 0
    text = open(prototxt).read()
    assert ('type: "BatchNorm"' in text) == (bn == "keep" or name == "resnet_v2_50")
    x = T.random_input(NETS[name][1], batch=2, seed=5)
    assert rel_error(reference(name, prefix, x), runner(prototxt, graph=result.graph)(x)) < 1e-3


def test_native_relu6_types(store, tmp_path):
    prefix = store("mobilenet_v2")
    result = export(load(prefix), "caffe", str(tmp_path / "net"), relu6="relu6")
    assert 'type: "ReLU6"' in open(result.files[0]).read()


def test_output_folder_uses_graph_name(tmp_path):
    from conftest import FIXTURE

    result = export(load(FIXTURE), "caffe", str(tmp_path))
    assert [os.path.basename(f) for f in result.files] == ["mobilenet_v2_tiny.prototxt", "mobilenet_v2_tiny.caffemodel"]


def small_net(x):
    w = tf().constant(np.arange(2 * 2 * 1 * 2, dtype=np.float32).reshape(2, 2, 1, 2) / 10)
    y = tf().nn.relu(tf().nn.conv2d(x, w, 2, "SAME"))
    return tf().nn.avg_pool2d(y, 3, 2, "SAME")


EXPECTED_PROTOTXT = '''name: "model"
input: "input"
input_shape {
  dim: 1
  dim: 1
  dim: 5
  dim: 5
}
layer {
  name: "Conv2D"
  type: "Convolution"
  bottom: "input"
  top: "Conv2D"
  convolution_param {
    num_output: 2
    bias_term: false
    group: 1
    pad_h: 1
    pad_w: 1
    kernel_h: 3
    kernel_w: 3
    stride_h: 2
    stride_w: 2
  }
}
layer {
  name: "Relu"
  type: "ReLU"
  bottom: "Conv2D"
  top: "Relu"
}
layer {
  name: "AvgPool2D/caffe_pool"
  type: "Pooling"
  bottom: "Relu"
  top: "AvgPool2D/caffe_pool"
  pooling_param {
    pool: AVE
    kernel_h: 3
    kernel_w: 3
    stride_h: 2
    stride_w: 2
    pad_h: 1
    pad_w: 1
  }
}
layer {
  name: "AvgPool2D"
  type: "Scale"
  bottom: "AvgPool2D/caffe_pool"
  top: "AvgPool2D"
  scale_param {
    axis: 2
    num_axes: 2
    bias_term: false
  }
}
'''


def test_exact_prototxt_for_a_small_net(tmp_path):
    """5x5 input. Conv 2x2/2 SAME has pads (0,1): written as a 3x3 kernel with a zero first row and
    column and pad 1. AVE 3x3/2 SAME on 3x3 has pads (1,1); Caffe counts the padded cells, so a
    Scale (axis 2, two axes) rescales each position."""
    result = export(load(builder=small_net, input_shape=(5, 5, 1)), "caffe", str(tmp_path / "net"))
    assert open(result.files[0]).read() == EXPECTED_PROTOTXT
