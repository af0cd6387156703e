"""Issue 11: no path may end in exit 0 with a wrong or unverified model. Each test builds the case and
fails on the silent outcome."""
import os

import numpy as np
import pytest

from ckptkit import VerificationError, testing as T
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.commands.export import export
from ckptkit.commands.fold import fold_checkpoint
from ckptkit.commands.inspect import inspect_checkpoint
from ckptkit.topology.sources import load
from conftest import rel_error
from ckptkit.converters.onnx import runner


@pytest.fixture
def ckptkit(run_cli):
    return run_cli


def one_line_error(out, *words):
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ckptkit: error: "), out.stderr
    for w in words:
        assert w in last, last


# ---- 1. epsilon from the graph, never assumed when there is one ------------------------------------------
def test_fold_from_meta_equals_fold_from_arch_bit_for_bit(store, tmp_path):
    prefix = store("resnet_v1_50")
    a = fold_checkpoint(prefix, str(tmp_path / "meta.ckpt"), write_graph=False)
    b = fold_checkpoint(prefix, str(tmp_path / "arch.ckpt"), arch="resnet_v1_50", write_graph=False)
    assert a.units_from.startswith("graph") and b.units_from == "--arch resnet_v1_50"
    assert len(a.folded) == 53 and sorted(a.folded) == sorted(b.folded)
    assert all(e == pytest.approx(1e-5) for e in a.epsilon.values())
    ca, cb = Checkpoint(str(tmp_path / "meta.ckpt")), Checkpoint(str(tmp_path / "arch.ckpt"))
    assert ca.names == cb.names
    for name in ca.names:
        assert np.array_equal(ca.get(name), cb.get(name)), name


@pytest.mark.parametrize("eps", ["nan", "inf", "-1", "0"])
def test_bad_eps_is_refused(store, tmp_path, eps, ckptkit):
    out = ckptkit("fold", store("mobilenet_v2"), "-o", str(tmp_path / "f.ckpt"), "--no-meta", "--eps", eps)
    one_line_error(out, "--eps", "positive finite")
    assert not list(tmp_path.iterdir())


def test_eps_with_a_graph_is_refused_not_ignored(store, tmp_path, ckptkit):
    out = ckptkit("fold", store("mobilenet_v2"), "-o", str(tmp_path / "f.ckpt"), "--eps", "1e-5")
    one_line_error(out, "--eps", "gives every BatchNorm's epsilon")
    out = ckptkit("fold", store("mobilenet_v2"), "-o", str(tmp_path / "f.ckpt"), "--eps", "1e-3", "--no-meta")
    assert out.returncode == 0 and "epsilon from --eps" in out.stdout


def test_unusable_meta_beside_the_checkpoint_is_not_silently_replaced_by_a_guess(tmp_path, ckptkit):
    import shutil

    from conftest import FIXTURE

    shutil.copytree(os.path.dirname(FIXTURE), tmp_path / "m")
    meta = tmp_path / "m" / "model.ckpt.meta"
    meta.write_bytes(meta.read_bytes()[:3000])  # truncated
    out = ckptkit("fold", str(tmp_path / "m" / "model.ckpt"), "-o", str(tmp_path / "f.ckpt"))
    one_line_error(out, "cannot be used", "--no-meta --eps")
    assert not (tmp_path / "f.ckpt.index").exists()
    out = ckptkit("fold", str(tmp_path / "m" / "model.ckpt"), "-o", str(tmp_path / "f.ckpt"), "--eps", "1e-3")
    assert out.returncode == 0 and "cannot be used" in out.stderr and "epsilon from --eps" in out.stdout
    info = inspect_checkpoint(str(tmp_path / "m" / "model.ckpt"))  # inspect writes nothing: warns, by names
    assert info["units_from"] == "variable names" and len(info["batchnorm"]) == 13


# ---- 2. hand-written BN and EMA shadow statistics are found through the graph ----------------------------
def test_inspect_and_fold_find_handwritten_and_ema_statistics(store):
    info = inspect_checkpoint(store("handwritten"))
    units = {u["scope"]: u for u in info["batchnorm"]}
    assert info["units_from"].startswith("graph") and not info["issues"]
    assert units["conv1/bn"]["moving_mean"] == "conv1/bn/moving_avg"
    assert units["conv2/bn"]["moving_variance"].endswith("Squeeze_1/ExponentialMovingAverage")
    assert units["conv1/bn"]["epsilon"] == pytest.approx(1e-4) and units["conv2/bn"]["follows"]["weights"] == \
        "conv2/weights"
    # by names alone they look missing: the fallback says where its answer comes from
    by_names = inspect_checkpoint(store("handwritten"), use_meta=False)
    assert by_names["units_from"] == "variable names"


# ---- 3. broken statistics are refused before anything is written -----------------------------------------
@pytest.mark.parametrize("stats, code", [("reset", "never updated"), ("negative", "negative, NaN or inf")])
def test_export_and_fold_refuse_bad_statistics(store, tmp_path, stats, code, ckptkit):
    prefix = store("mobilenet_v2", stats=stats)
    for args in (["to-onnx", prefix, "-o", str(tmp_path / "m.onnx")], ["fold", prefix, "-o", str(tmp_path / "f.ckpt")],
                 ["to-caffe", prefix, "-o", str(tmp_path / "net")]):
        one_line_error(ckptkit(*args), code, "ckptkit recalibrate", "--allow-bad-statistics")
    assert not list(tmp_path.iterdir())


def test_allow_bad_statistics_warns_and_stays_exact(store, reference, tmp_path, ckptkit):
    prefix = store("mobilenet_v2", stats="reset")
    out = ckptkit("to-onnx", prefix, "-o", str(tmp_path / "m.onnx"), "--allow-bad-statistics")
    assert out.returncode == 0 and "--allow-bad-statistics" in out.stderr and "never updated" in out.stderr
    x = T.random_input((32, 32, 3), batch=2)
    assert rel_error(reference("mobilenet_v2", prefix, x), runner(str(tmp_path / "m.onnx"))(x)) < 1e-4


# ---- 6. another input size: re-inferred, or refused in one line --------------------------------------------
def test_meta_at_another_resolution(tmp_path):
    tf1.disable_control_flow_v2()  # TF1-written graphs (Switch/Merge): shapes are inferred anew
    try:
        prefix = T.save_model(T.mobilenet_v2_net, (32, 32, 3), str(tmp_path / "v1" / "model.ckpt"))
    finally:
        tf1.enable_control_flow_v2()
    result = export(load(prefix, input_shape=(48, 40, 3)), "onnx", str(tmp_path / "m.onnx"))
    assert result.comparison.ok
    x = T.random_input((48, 40, 3), batch=2)
    ref = T.inference_output(T.mobilenet_v2_net, (48, 40, 3), prefix, x)
    assert rel_error(ref, runner(str(tmp_path / "m.onnx"))(x)) < 1e-4


def test_meta_that_fixes_its_size_is_refused(store, tmp_path, ckptkit):
    # control flow v2 records cond output shapes; a flatten before fc fixes the size in any graph
    out = ckptkit("to-onnx", store("variants"), "--input-shape", "64,64,3", "-o", str(tmp_path / "m.onnx"))
    one_line_error(out, "64,64,3")
    tf1.disable_control_flow_v2()
    try:
        prefix = T.save_model(T.bn_variants_net, (32, 32, 3), str(tmp_path / "v1" / "model.ckpt"))
    finally:
        tf1.enable_control_flow_v2()
    one_line_error(ckptkit("to-onnx", prefix, "--input-shape", "64,64,3", "-o", str(tmp_path / "m.onnx")),
                   "fixes its input size")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".onnx")]


# ---- 7. a GraphDef holding variables: restored from the checkpoint ---------------------------------------
def test_non_frozen_graphdef_is_verified_with_checkpoint_values(store, reference, tmp_path):
    prefix = store("mobilenet_v2")
    g = tf().Graph()
    with g.as_default():
        x = tf1.placeholder(tf().float32, [None, 32, 32, 3], name="input")
        T.mobilenet_v2_net(x, is_training=False)
    pb = tmp_path / "inference.pb"
    pb.write_bytes(g.as_graph_def().SerializeToString())
    result = export(load(prefix, frozen=str(pb)), "onnx", str(tmp_path / "m.onnx"))
    assert result.comparison.ok
    xs = T.random_input((32, 32, 3), batch=2)
    assert rel_error(reference("mobilenet_v2", prefix, xs), runner(str(tmp_path / "m.onnx"))(xs)) < 1e-4


# ---- 8. fold's graph is topology only ---------------------------------------------------------------------
def test_topology_reads_no_tensor(store, monkeypatch):
    from ckptkit.topology.sources import topology

    prefix = store("resnet_v1_50")

    def forbidden(self, name):
        raise AssertionError(f"read {name}")

    monkeypatch.setattr(Checkpoint, "get", forbidden)
    topo = topology(prefix)
    assert topo.graph.count("BatchNorm") == 53


# ---- 9. the reference of a training .meta is the user's graph, not our import ------------------------------
def test_training_meta_reference_catches_an_importer_mistake(store, tmp_path):
    model = load(store("mobilenet_v2"))
    bn = next(n for n in model.graph if n.op == "BatchNorm")
    bn.attrs.epsilon = 0.5  # what a wrong epsilon in the importer would do
    with pytest.raises(VerificationError, match="does not match TensorFlow"):
        export(model, "onnx", str(tmp_path / "m.onnx"))
    assert not list(tmp_path.iterdir())


def hard_coded_training_net(inputs, is_training=False):
    """A training graph built the way slim's train scripts do: is_training=True as a Python bool
    (fused and non-fused BN in training mode, dropout on)."""
    s = T.slim()
    with s.arg_scope([s.batch_norm], is_training=True, scale=True):
        net = s.conv2d(inputs, 8, 3, stride=2, normalizer_fn=s.batch_norm, scope="fused")
        net = s.conv2d(net, 8, 3, normalizer_fn=s.batch_norm, normalizer_params={"fused": False}, scope="plain")
    net = s.dropout(s.flatten(net), 0.5, is_training=True, scope="dropout")
    return s.fully_connected(net, 10, activation_fn=None, scope="logits")


def test_hard_coded_training_graph_is_verified_in_inference_mode(tmp_path):
    prefix = T.save_model(hard_coded_training_net, (16, 16, 3), str(tmp_path / "hc" / "model.ckpt"))
    result = export(load(prefix), "onnx", str(tmp_path / "m.onnx"))
    assert result.comparison.ok
    x = T.random_input((16, 16, 3), batch=3)
    inference = lambda i, is_training=False: _inference_twin(i)  # noqa: E731
    ref = T.inference_output(inference, (16, 16, 3), prefix, x)
    assert rel_error(ref, runner(str(tmp_path / "m.onnx"))(x)) < 1e-4


def _inference_twin(inputs):
    s = T.slim()
    with s.arg_scope([s.batch_norm], is_training=False, scale=True):
        net = s.conv2d(inputs, 8, 3, stride=2, normalizer_fn=s.batch_norm, scope="fused")
        net = s.conv2d(net, 8, 3, normalizer_fn=s.batch_norm, normalizer_params={"fused": False}, scope="plain")
    net = s.flatten(net)
    return s.fully_connected(net, 10, activation_fn=None, scope="logits")


def test_default_verification_inputs_have_a_realistic_scale():
    from ckptkit.run.verify import verification_inputs

    x = verification_inputs((None, 8, 8, 3))
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.3
    y = verification_inputs((None, 8, 8, 3), value_range=(-123.68, 151.06))
    assert y.max() > 100


def _save_queue_fed(prefix: str, two_inputs: bool = False) -> str:
    """A training graph fed like slim's train_image_classifier: images from a queue, no placeholder
    (or, with two_inputs, two 4-D float placeholders: the images and images for a summary)."""
    g = tf().Graph()
    with g.as_default():
        if two_inputs:
            images = tf1.placeholder(tf().float32, [None, 32, 32, 3], name="images")
            shown = tf1.placeholder(tf().float32, [None, 32, 32, 3], name="summary_images")
            tf1.summary.image("inputs", shown)
            labels = tf1.placeholder(tf().int64, [None], name="labels")
        else:
            queue = tf1.FIFOQueue(8, [tf().float32, tf().int64], shapes=[[32, 32, 3], []], name="batch_queue")
            images, labels = queue.dequeue_many(4)
        logits = T.mobilenet_v2_net(images, is_training=True)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        with tf().control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            tf1.train.GradientDescentOptimizer(0.01).minimize(loss)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            T.randomize(sess, np.random.default_rng(0))
            return tf1.train.Saver().save(sess, prefix)


@pytest.mark.parametrize("two_inputs", [False, True], ids=["queue", "two_placeholders"])
def test_fold_finds_epsilons_without_a_single_placeholder_input(tmp_path, two_inputs):
    prefix = _save_queue_fed(str(tmp_path / "q" / "model.ckpt"), two_inputs)
    report = fold_checkpoint(prefix, str(tmp_path / "f.ckpt"))
    assert report.units_from.startswith("graph") and len(report.folded) == 13 and not report.kept
    x = T.random_input((32, 32, 3), batch=2)
    ref = T.inference_output(T.mobilenet_v2_net, (32, 32, 3), prefix, x)
    no_bn = lambda i, is_training=False: T.mobilenet_v2_net(i, is_training, batch_norm=False)  # noqa: E731
    assert rel_error(ref, T.inference_output(no_bn, (32, 32, 3), str(tmp_path / "f.ckpt"), x)) < 1e-4
