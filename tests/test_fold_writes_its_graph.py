"""Every graph `fold` folds has its BN-free `.meta` written back and chains into the exports (issue 38.2).

Two networks that left `fold` without a graph: a pre-activation ResNet (slim's resnet_v2: BatchNorms after
additions stay, and were written in a form ckptkit's own importer could not read back), and a training graph with
two terminal outputs (the logits under an `output` identity and slim's `predictions` softmax) where `fold` could
not tell the output and advised a flag it did not accept. Each is checked against TensorFlow's own inference
graph of the original checkpoint, never against ckptkit's import.
"""
import os

import numpy as np
import onnxruntime as ort
import pytest

from ckptkit import cli
from ckptkit import testing as T
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.core.compat import slim

SHAPE = (24, 24, 3)


def tiny_resnet_v2(inputs, is_training=False):
    from tf_slim.nets import resnet_v2

    blocks = [resnet_v2.resnet_v2_block("block1", base_depth=4, num_units=2, stride=2),
              resnet_v2.resnet_v2_block("block2", base_depth=8, num_units=1, stride=1)]
    with slim().arg_scope(resnet_v2.resnet_arg_scope()):
        logits, _ = resnet_v2.resnet_v2(inputs, blocks, num_classes=10, is_training=is_training,
                                        global_pool=True, scope="resnet_v2_tiny")
    return tf().squeeze(logits, [1, 2])



def test_a_resnet_v2_fold_writes_its_graph_and_chains_into_onnx(tmp_path, capsys):
    prefix = T.save_model(tiny_resnet_v2, SHAPE, str(tmp_path / "ck" / "model.ckpt"))
    folded = str(tmp_path / "folded" / "model.ckpt")
    assert cli.main(["fold", prefix, "-o", folded]) == 0
    assert os.path.exists(folded + ".meta"), capsys.readouterr().err
    out = str(tmp_path / "m.onnx")
    assert cli.main(["to-onnx", folded, "-o", out]) == 0, capsys.readouterr().err  # the graph beside it: no flags
    x = T.random_input(SHAPE, batch=3)
    expected = T.inference_output(tiny_resnet_v2, SHAPE, prefix, x)
    got = T.onnx_output(out, x).reshape(expected.shape)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def _net(inputs, is_training):
    s = slim()
    bn = dict(normalizer_fn=s.batch_norm, normalizer_params=dict(is_training=is_training, scale=True))
    net = s.conv2d(inputs, 8, 3, stride=2, scope="conv1", **bn)
    net = s.conv2d(net, 8, 3, scope="conv2", **bn)
    net = tf().reduce_mean(net, [1, 2])
    return s.fully_connected(net, 10, activation_fn=None, scope="logits")


def _save_two_heads(prefix: str) -> None:
    """A training graph (BN in training mode, update ops) with no loss in it and two heads, as a script that
    exports its graph for serving before the loss is built: `output` (the logits) and `predictions`."""
    _tf = tf()
    g = _tf.Graph()
    with g.as_default():
        x = tf1.placeholder(_tf.float32, [None, *SHAPE], name="input")
        logits = _net(x, True)
        _tf.identity(logits, name="output")
        _tf.nn.softmax(logits, name="predictions")
        with tf1.Session(graph=g) as sess:
            T.randomize(sess, np.random.default_rng(0))
            sess.run([v.initializer for v in tf1.global_variables() if not sess.run(
                tf1.is_variable_initialized(v))])
            os.makedirs(os.path.dirname(prefix), exist_ok=True)
            tf1.train.Saver().save(sess, prefix)


@pytest.mark.fast
def test_a_two_headed_graph_is_folded_with_both_heads_and_each_exports(tmp_path, capsys):
    prefix = str(tmp_path / "ck" / "model.ckpt")
    _save_two_heads(prefix)
    folded = str(tmp_path / "folded" / "model.ckpt")
    assert cli.main(["fold", prefix, "-o", folded]) == 0
    assert os.path.exists(folded + ".meta"), capsys.readouterr().err  # written with both heads
    x = T.random_input(SHAPE, batch=3)
    expected = T.inference_output(lambda i, is_training=False: _net(i, False), SHAPE, prefix, x)
    for head, want in (("output", expected), ("predictions", _softmax(expected))):
        out = str(tmp_path / f"{head}.onnx")
        assert cli.main(["to-onnx", folded, "--outputs", head, "-o", out]) == 0, capsys.readouterr().err
        got = T.onnx_output(out, x)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), head
    # and `fold --outputs` writes the one head asked for
    one = str(tmp_path / "one" / "model.ckpt")
    assert cli.main(["fold", prefix, "--outputs", "predictions", "-o", one]) == 0
    assert cli.main(["to-onnx", one, "-o", str(tmp_path / "one.onnx")]) == 0, capsys.readouterr().err


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
