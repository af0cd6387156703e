"""MNN on deep nets (issue 38.4): MNN's own Winograd convolution, not the Caffe files, made its error grow with
depth; verification runs it dense (converters/mnn_worker.py), where MNN reproduces TensorFlow as OpenCV does,
within the same 1e-3 (measured here far below it)."""
import functools

import numpy as np

import ckptkit
from ckptkit import testing as T

SHAPE = (96, 96, 3)


def test_a_thirteen_conv_vgg_is_read_by_mnn_as_by_opencv(tmp_path):
    builder = functools.partial(T.vgg16_bn_net, width=32)
    prefix = T.save_model(builder, SHAPE, str(tmp_path / "ck" / "model.ckpt"))
    result = ckptkit.export(ckptkit.load(prefix), "caffe", str(tmp_path / "out") + "/")
    errors = {c.runtime.split()[0]: c.max_rel for c in result.comparisons}
    assert set(errors) == {"OpenCV", "MNN"} and all(c.ok for c in result.comparisons)
    assert errors["MNN"] < 2e-5, errors  # with Winograd it measured 1.06e-4 on this network
    x = T.random_input(SHAPE, batch=2)
    expected = T.inference_output(builder, SHAPE, prefix, x)
    assert np.allclose(ckptkit.load(prefix).reference(x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
