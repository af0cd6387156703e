"""Caffe consumers as verification targets: each installed one runs the files, and a consumer that reads them
differently from the others is named as such (the files are right, that reader is not)."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from ckptkit.ir import registry
from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError, VerificationError
from ckptkit.commands.export import export
from ckptkit.ops import pool
from ckptkit.topology.sources import load
from ckptkit.converters import caffe_consumers
from ckptkit.converters.caffe_consumers import CONSUMERS

from test_ops import bn, conv


def same_avg_pool_net(x):
    return tf().nn.avg_pool2d(tf().nn.relu(conv(x, 4, 3)), 3, 1, "SAME")


def spatial_scale_avg_pool(c, node, bottoms):
    """The encoding ckptkit used before: Caffe AVE pooling, then a Scale over the two spatial axes holding the
    exact ratio map. Exact in BVLC Caffe and OpenCV; MNN reads the Scale as per-channel."""
    a, pb = node.attrs, c.pb
    src = c.g[node.inputs[0]].shape
    (ph, oh, _), (pw, ow, _) = pool._caffe_axes(node, c.g)
    param = pb.PoolingParameter(pool=pb.PoolingParameter.AVE, kernel_h=a.kernel[0], kernel_w=a.kernel[1],
                                stride_h=a.strides[0], stride_w=a.strides[1], pad_h=ph, pad_w=pw)
    y = c.layer(node.name + "/caffe_pool", "Pooling", bottoms, pooling_param=param)
    ratio = np.outer(pool._ave_ratio(src[1], a.kernel[0], a.strides[0], ph, oh, a.pads[0], node.shape[1]),
                     pool._ave_ratio(src[2], a.kernel[1], a.strides[1], pw, ow, a.pads[2], node.shape[2]))
    return c.scale(node.name, y, ratio.astype(np.float32), None, axis=2)


needs_both = pytest.mark.skipif(any(c.version() is None for c in CONSUMERS.values()),
                                reason="needs OpenCV 4.x and MNN (the test extra installs both)")


@needs_both
def test_same_average_pool_is_exact_in_every_consumer(tmp_path):
    result = export(load(builder=same_avg_pool_net, input_shape=(9, 9, 3)), "caffe", str(tmp_path / "m"))
    assert [c.runtime.split()[0] for c in result.comparisons] == ["OpenCV", "MNN"]
    assert all(c.max_rel < 1e-5 for c in result.comparisons), result.comparisons
    assert 'type: "Scale"' not in open(result.files[0]).read()


@needs_both
def test_a_consumer_that_reads_the_files_differently_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.get("AvgPool").writers, "caffe", spatial_scale_avg_pool)
    model = load(builder=same_avg_pool_net, input_shape=(9, 9, 3))
    with pytest.raises(VerificationError) as err:
        export(model, "caffe", str(tmp_path / "m"))
    message = str(err.value)
    # MNN either computes garbage or crashes on these files, depending on the shapes: both are named
    assert "MNN" in message and "reproduces TensorFlow from the same files, so MNN reads them differently" in message
    assert "OpenCV" in message and len(message.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    # the same files, verified only where they are right, are published
    assert export(model, "caffe", str(tmp_path / "m"), caffe_runtime="opencv").comparison.ok


def test_unknown_and_missing_consumers_are_refused_before_any_work(tmp_path, monkeypatch):
    model = load(builder=same_avg_pool_net, input_shape=(9, 9, 3))
    with pytest.raises(CkptkitError, match="--caffe-runtime pycafe is unknown: choose from opencv, mnn"):
        export(model, "caffe", str(tmp_path / "m"), caffe_runtime="opencv,pycafe")
    gone = dataclasses.replace(CONSUMERS["mnn"], find_version=lambda: None)
    monkeypatch.setitem(CONSUMERS, "mnn", gone)
    with pytest.raises(CkptkitError, match="--caffe-runtime mnn: MNN is not installed: pip install"):
        export(model, "caffe", str(tmp_path / "m"), caffe_runtime="mnn")
    assert list(tmp_path.iterdir()) == []


def bn_after_pool_net(x):
    return tf().nn.relu(bn(tf().nn.max_pool2d(conv(x, 4, 3), 2, 2, "VALID")))


def test_keep_mode_batchnorm_mnn_misreads_is_refused_for_mnn_and_warned_without_it(tmp_path, monkeypatch, caplog):
    model = load(builder=bn_after_pool_net, input_shape=(8, 8, 3))
    if CONSUMERS["mnn"].version() is not None:
        with pytest.raises(CkptkitError, match=r"MNN misreads a Caffe BatchNorm layer .*\(FusedBatchNorm"):
            export(model, "caffe", str(tmp_path / "m"), fold=False)
        assert list(tmp_path.iterdir()) == []
    gone = dataclasses.replace(CONSUMERS["mnn"], find_version=lambda: None)
    monkeypatch.setitem(CONSUMERS, "mnn", gone)
    with caplog.at_level(logging.WARNING, logger="ckptkit"):
        result = export(model, "caffe", str(tmp_path / "m"), fold=False)
    assert "MNN would misread 1 of these Caffe BatchNorm layers" in caplog.text
    assert result.comparison.ok and 'type: "BatchNorm"' in open(result.files[0]).read()
    # folded, the same BatchNorm is a 1x1 depthwise convolution every consumer reads (no warning)
    caplog.clear()
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="ckptkit"):
        folded = export(model, "caffe", str(tmp_path / "f"))
    assert "MNN" not in caplog.text and all(c.ok for c in folded.comparisons)
    assert 'type: "BatchNorm"' not in open(folded.files[0]).read()


def test_names_parses_a_comma_list():
    assert caffe_consumers.names("") == () and caffe_consumers.names(" OpenCV , mnn") == ("opencv", "mnn")


def test_files_no_installed_consumer_can_run_are_refused_in_one_line(tmp_path):
    """--relu6 clip writes BVLC's Clip layer, which OpenCV 4.x cannot create (was a cv2.error traceback)."""
    from test_ops import hard_sigmoid

    model = load(builder=lambda x: hard_sigmoid(conv(x, 4, 3)), input_shape=(8, 8, 3))
    with pytest.raises(CkptkitError, match=r"OpenCV [\d.]+ cannot run these Caffe files \(.*Clip.*no-verify") as err:
        export(model, "caffe", str(tmp_path / "m"), relu6="clip")
    assert len(str(err.value).splitlines()) == 1 and list(tmp_path.iterdir()) == []
    assert 'type: "Clip"' in open(export(model, "caffe", str(tmp_path / "m"), relu6="clip", check=False).files[0]).read()


def test_the_caffemodel_written_from_arrays_is_the_message_protobuf_writes(tmp_path):
    """Blobs go to the .caffemodel straight from numpy (not through `repeated float data`): parsed back by
    protobuf it is the message protobuf itself would have built, blob for blob and bit for bit."""
    from ckptkit.converters import caffe as writer
    from ckptkit.converters import caffe_pb2

    model = load(builder=bn_after_pool_net, input_shape=(9, 9, 3))
    _, weights = writer.build(model.graph)
    path = str(tmp_path / "m.caffemodel")
    weights.write_weights(path)
    expected = caffe_pb2.NetParameter()
    expected.CopyFrom(weights.weights)
    for layer, arrays in zip(expected.layer, weights.blob_data):
        for blob, data in zip(layer.blobs, arrays):
            blob.data.extend(data.ravel().tolist())
    got = caffe_pb2.NetParameter.FromString(open(path, "rb").read())
    assert got == expected and sum(len(b.data) for layer in got.layer for b in layer.blobs) > 0
    assert open(path, "rb").read() == expected.SerializeToString()  # even the same bytes, in canonical order
