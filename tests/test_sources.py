"""Topology sources beyond the .meta: frozen graphs, TF1 (Switch/Merge) control flow, networks without BN."""
import numpy as np
import pytest

from ckptkit import CkptkitError, testing as T
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.commands.export import export
from ckptkit.topology.sources import load
from conftest import FIXTURE, rel_error
from ckptkit.converters.onnx import runner


def export_everywhere(model, tmp_path, x, ref, caffe_runtime=None) -> None:
    """ONNX, Keras and Caffe exports of `model`, each run on `x` in its own runtimes inside the export (the .h5
    container is test_keras's, on small nets; Caffe in every consumer, or `caffe_runtime`) and held there to the
    model's TensorFlow reference, which is held here to `ref`, TF's own inference output of the checkpoint."""
    np.save(tmp_path / "x.npy", x)
    for fmt, path, tol in (("onnx", "m.onnx", 1e-4), ("keras", "m.keras", 1e-4), ("caffe", "net", 1e-3)):
        runtime = {"caffe_runtime": caffe_runtime} if fmt == "caffe" and caffe_runtime else {}
        result = export(model, fmt, str(tmp_path / path), verify_data=str(tmp_path / "x.npy"), **runtime)
        assert result.comparisons and all(c.ok and c.max_rel < tol for c in result.comparisons), fmt
    assert rel_error(ref, model.reference(x)) < 1e-5


def freeze(builder, shape, prefix, path):
    g = tf().Graph()
    with g.as_default():
        x = tf1.placeholder(tf().float32, [None] + list(shape), name="input")
        out = builder(x, is_training=False)
        with tf1.Session() as sess:
            tf1.train.Saver().restore(sess, prefix)
            gd = tf1.graph_util.convert_variables_to_constants(sess, g.as_graph_def(), [out.op.name])
    with open(path, "wb") as f:
        f.write(gd.SerializeToString())


def test_frozen_graph_needs_no_checkpoint(tmp_path):
    pb = str(tmp_path / "frozen.pb")
    freeze(T.mobilenet_v2_net, (32, 32, 3), FIXTURE, pb)
    model = load(frozen=pb)
    result = export(model, "onnx", str(tmp_path / "m.onnx"))
    assert result.graph.count("BatchNorm") == 0
    x = T.random_input((32, 32, 3), batch=2)
    ref = T.inference_output(T.mobilenet_v2_net, (32, 32, 3), FIXTURE, x)
    assert rel_error(ref, runner(str(tmp_path / "m.onnx"))(x)) < 1e-4


def test_tf1_switch_merge_training_graph(tmp_path):
    """Graphs written by TF1 use Switch/Merge for tf.cond; the inference branch is taken."""
    tf1.disable_control_flow_v2()
    try:
        prefix = T.save_model(T.bn_variants_net, (32, 32, 3), str(tmp_path / "tf1" / "model.ckpt"))
    finally:
        tf1.enable_control_flow_v2()
    model = load(prefix)
    from tensorflow.core.protobuf import meta_graph_pb2

    mgd = meta_graph_pb2.MetaGraphDef()
    mgd.ParseFromString(open(prefix + ".meta", "rb").read())
    assert any(n.op == "Merge" for n in mgd.graph_def.node)
    result = export(model, "onnx", str(tmp_path / "m.onnx"))
    x = T.random_input((32, 32, 3), batch=2)
    ref = T.inference_output(T.bn_variants_net, (32, 32, 3), prefix, x)
    assert rel_error(ref, runner(str(tmp_path / "m.onnx"))(x)) < 1e-4
    assert result.comparison.ok


@pytest.mark.slow
def test_alexnet_without_bn_from_arch_and_meta(tmp_path):
    builder = T.arch_net("alexnet_v2")
    prefix = T.save_model(builder, (224, 224, 3), str(tmp_path / "alexnet" / "model.ckpt"), training="literal")
    x = T.random_input((224, 224, 3), batch=2)
    ref = T.inference_output(builder, (224, 224, 3), prefix, x)
    by_arch, by_meta = load(prefix, arch="alexnet_v2"), load(prefix)
    assert by_arch.graph.count("BatchNorm") == by_meta.graph.count("BatchNorm") == 0
    export(by_arch, "onnx", str(tmp_path / "arch.onnx"))
    assert rel_error(ref, runner(str(tmp_path / "arch.onnx"))(x)) < 1e-4
    export_everywhere(by_meta, tmp_path, x, ref)


def test_ambiguous_output_lists_candidates(tmp_path):
    g = tf().Graph()
    with g.as_default():
        x = tf1.placeholder(tf().float32, [None, 8, 8, 3], name="input")
        w = tf1.get_variable("w", initializer=np.ones((1, 1, 3, 2), np.float32))
        tf().nn.relu(tf().nn.conv2d(x, w, 1, "SAME"), name="a")
        tf().nn.relu6(tf().nn.conv2d(x, w, 1, "SAME"), name="b")
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            prefix = tf1.train.Saver().save(sess, str(tmp_path / "m.ckpt"))
    with pytest.raises(CkptkitError, match=r"last computed: a, b\): pass --outputs NAME"):
        load(prefix)
    assert load(prefix, output_name="b").graph.count("Relu6") == 1


@pytest.mark.slow
def test_vgg_16_without_bn_from_arch(tmp_path):
    """The full-size network (~0.5 GB checkpoint at 10 classes): its 7x7 fc6 needs 224 inputs."""
    builder = T.arch_net("vgg_16")
    prefix = T.save_model(builder, (224, 224, 3), str(tmp_path / "vgg" / "model.ckpt"), save_meta=False,
                          training="literal")
    x = T.random_input((224, 224, 3), batch=2)
    ref = T.inference_output(builder, (224, 224, 3), prefix, x)
    # Caffe in OpenCV: MNN's converter takes 15 s on this 537 MB caffemodel (MNN reads every net of the matrix)
    export_everywhere(load(prefix, arch="vgg_16"), tmp_path, x, ref, caffe_runtime="opencv")
