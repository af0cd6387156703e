"""Caffe export (BatchNorm folded and kept): every Caffe consumer installed (OpenCV 4.x's importer, MNN)
reproduces TF's own output, each run here on the written files independently of the export's own check."""
import os

import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError
from ckptkit.commands.export import export
from ckptkit.topology.sources import load
from conftest import E2E, E2E_IDS, NETS, quick, rel_error
from ckptkit.converters.caffe_consumers import CONSUMERS

INSTALLED = [c for c in CONSUMERS.values() if c.version() is not None]
# nets with a BatchNorm that does not directly follow a plain convolution: --bn keep cannot be read by MNN
BN_AFTER_OTHER_LAYERS = {"variants", "mobilenet_v2", "resnet_v2_50"}


def test_every_consumer_this_suite_verifies_in_is_installed():
    """CI installs OpenCV 4.x and MNN (the test extra): a missing one would silently skip its checks."""
    assert {c.name for c in INSTALLED} == set(CONSUMERS)


@pytest.mark.parametrize("name, fold", quick(E2E), ids=E2E_IDS)
def test_caffe_matches_tf_in_every_consumer(store, loaded, reference, tmp_path, name, fold):
    bn = "fold" if fold else "keep"
    prefix = store(name)
    runtimes = {}
    if bn == "keep" and name in BN_AFTER_OTHER_LAYERS:
        with pytest.raises(CkptkitError, match="MNN misreads a Caffe BatchNorm layer"):
            export(loaded(name), "caffe", str(tmp_path / "net"), fold=False)
        assert not os.listdir(tmp_path)
        runtimes = {"caffe_runtime": "opencv"}
    x = T.random_input(NETS[name][1], batch=2, seed=5)
    np.save(tmp_path / "x.npy", x)
    # every consumer runs the written files on x inside the export and is held to the model's TensorFlow reference
    # there (a consumer past its tolerance fails the export); that reference is held here to TF's own inference
    # graph of the checkpoint, built by the network's code (independent of ckptkit's importer)
    result = export(loaded(name), "caffe", str(tmp_path / "net"), fold=bn == "fold", verify_data=str(tmp_path / "x.npy"),
                    **runtimes)
    prototxt, caffemodel = result.files
    assert prototxt.endswith("net.prototxt") and os.path.getsize(caffemodel) > 0
    assert [c.runtime.split()[0] for c in result.comparisons] == (["OpenCV"] if runtimes else ["OpenCV", "MNN"])
    assert all(c.ok and c.max_rel < CONSUMERS[c.runtime.split()[0].lower()].tolerance for c in result.comparisons)
    text = open(prototxt).read()
    assert ('type: "BatchNorm"' in text) == (bn == "keep")
    assert rel_error(reference(name, prefix, x), loaded(name).reference(x)) < 1e-5


def test_native_relu6_types(loaded, tmp_path):
    result = export(loaded("mobilenet_v2"), "caffe", str(tmp_path / "net"), relu6="relu6")
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
  name: "AvgPool2D/ones"
  type: "Power"
  bottom: "Relu"
  top: "AvgPool2D/ones"
  power_param {
    power: 1.0
    scale: 0.0
    shift: 1.0
  }
}
layer {
  name: "AvgPool2D/real_share"
  type: "Pooling"
  bottom: "AvgPool2D/ones"
  top: "AvgPool2D/real_share"
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
  name: "AvgPool2D/rescale"
  type: "Power"
  bottom: "AvgPool2D/real_share"
  top: "AvgPool2D/rescale"
  power_param {
    power: -1.0
  }
}
layer {
  name: "AvgPool2D"
  type: "Eltwise"
  bottom: "AvgPool2D/caffe_pool"
  bottom: "AvgPool2D/rescale"
  top: "AvgPool2D"
  eltwise_param {
    operation: PROD
  }
}
'''


def test_exact_prototxt_for_a_small_net(tmp_path):
    """5x5 input. Conv 2x2/2 SAME has pads (0,1): written as a 3x3 kernel with a zero first row and
    column and pad 1. AVE 3x3/2 SAME on 3x3 has pads (1,1); Caffe counts the padded cells, so the same
    pooling of ones (Power 0*x+1) measures real cells / Caffe's divisor, inverted (Power -1) and multiplied in
    (Eltwise PROD): layers every consumer reads alike (a spatial Scale layer is misread by MNN)."""
    result = export(load(builder=small_net, input_shape=(5, 5, 1)), "caffe", str(tmp_path / "net"))
    assert open(result.files[0]).read() == EXPECTED_PROTOTXT
