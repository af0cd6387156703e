"""Every BatchNorm spelling a training script produces gets an independent reference that is right (issue 38.1).

Each net is built the way a training script builds it — in training mode, update ops wired, then saved — and
exported with verification on. The export must be accepted (the reference does not cry wolf) and must match
TensorFlow's own inference graph of the same checkpoint, built independently by the same script with
`is_training=False`. The spellings that made the reference wrong: a slim BN with `zero_debias_moving_mean`, a
non-fused BN followed by another BN, and the hand-written BN of `tf.nn.moments` + `tf.nn.batch_normalization`
with `tf.assign` EMA updates under a Python-bool `is_training`, in TF1 (ref) and TF2 (resource) variables.
"""
import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.core.compat import slim

SHAPE = (12, 12, 3)


def _slim_net(fused, zero_debias: bool, order: str = "conv-bn-relu", python_bool: bool = True):
    def net_fn(inputs, is_training=False):
        s = slim()
        if python_bool:  # the training script's literal `is_training=True`: no cond in the saved graph
            is_training = is_training is not False
        params = dict(is_training=is_training, scale=True, fused=fused, zero_debias_moving_mean=zero_debias)
        bn = dict(normalizer_fn=s.batch_norm, normalizer_params=params)
        if order == "bn-first":  # a BN straight on the input, then conv+BN pairs
            inputs = s.batch_norm(inputs, scope="input_bn", **params)
        net = s.conv2d(inputs, 8, 3, stride=2, scope="conv1", **bn)
        net = s.conv2d(net, 8, 3, scope="conv2", **bn)
        net = s.flatten(net)
        net = s.fully_connected(net, 16, scope="fc", **bn)
        return s.fully_connected(net, 10, activation_fn=None, normalizer_fn=None, scope="logits")

    return net_fn


def _handwritten_net(resource: bool, layers: int = 3):
    """The seed reports' BN: unnamed tf.Variable statistics, `tf.assign(v, v * decay + m * (1 - decay))`, the
    normalisation under `control_dependencies` of the updates, and a Python-bool training flag (the saved
    training graph holds the batch path only; the inference graph reads the population variables)."""

    def net_fn(inputs, is_training=False):
        _tf = tf()
        training = is_training is not False  # a placeholder when saved for training: the script passed True
        var = (lambda v, **kw: tf1.Variable(v, use_resource=True, **kw)) if resource else \
            (lambda v, **kw: tf1.Variable(v, use_resource=False, **kw))

        def bn(x, decay=0.99, eps=1e-3):
            c = int(x.shape[-1])
            scale, beta = var(tf1.ones([c])), var(tf1.zeros([c]))
            pop_mean, pop_var = var(tf1.zeros([c]), trainable=False), var(tf1.ones([c]), trainable=False)
            if training:
                axes = list(range(x.shape.rank - 1))
                batch_mean, batch_var = _tf.nn.moments(x, axes)
                train_mean = tf1.assign(pop_mean, pop_mean * decay + batch_mean * (1 - decay))
                train_var = tf1.assign(pop_var, pop_var * decay + batch_var * (1 - decay))
                with _tf.control_dependencies([train_mean, train_var]):
                    return _tf.nn.batch_normalization(x, batch_mean, batch_var, beta, scale, eps)
            return _tf.nn.batch_normalization(x, pop_mean, pop_var, beta, scale, eps)

        net = inputs
        for i in range(layers):
            w = var(tf1.random.normal([3, 3, int(net.shape[-1]), 8], stddev=0.3))
            net = _tf.nn.relu(bn(_tf.nn.conv2d(net, w, 2 if i == 0 else 1, "SAME")))
        net = _tf.reduce_mean(net, [1, 2])
        w = var(tf1.random.normal([8, 10], stddev=0.3))
        return _tf.matmul(bn(_tf.matmul(net, var(tf1.random.normal([8, 8], stddev=0.3)))), w, name="logits")

    return net_fn


NETS = {
    "zero_debias_fused": _slim_net(True, True),
    "zero_debias_alone": lambda: None,  # filled below: one conv + BN, the smallest failing case reported
    "zero_debias_nonfused": _slim_net(False, True),
    "nonfused_then_bn": _slim_net(False, False),
    "nonfused_bn_first": _slim_net(False, False, "bn-first"),
    "zero_debias_placeholder": _slim_net(None, True, python_bool=False),
    "handwritten_ref": _handwritten_net(resource=False),
    "handwritten_resource": _handwritten_net(resource=True),
}


def _zero_debias_alone(inputs, is_training=False):
    s = slim()
    is_training = is_training is not False
    net = s.conv2d(inputs, 8, 3, stride=2, scope="conv1", normalizer_fn=s.batch_norm,
                   normalizer_params=dict(is_training=is_training, scale=True, zero_debias_moving_mean=True))
    net = s.flatten(net)
    return s.fully_connected(net, 10, activation_fn=None, scope="logits")


NETS["zero_debias_alone"] = _zero_debias_alone


def _stats_after_training(prefix: str, builder, steps: int = 3) -> None:
    """Run a few training steps so that every moving statistic (and zero-debias' `biased`/`local_step`) holds a
    value of its own, as a trained checkpoint does (the helper's random values leave hand-made names alone)."""
    _tf = tf()
    g = _tf.Graph()
    with g.as_default():
        meta = tf1.train.import_meta_graph(prefix + ".meta")
        with tf1.Session(graph=g) as sess:
            meta.restore(sess, prefix)
            train = g.get_operation_by_name("GradientDescent")
            rng = np.random.default_rng(3)
            for _ in range(steps):
                x = rng.normal(0.5, 2.0, (8, *SHAPE)).astype(np.float32)
                sess.run(train, {"input:0": x, "labels:0": rng.integers(0, 10, 8)})
            meta.save(sess, prefix, write_meta_graph=False)


@pytest.mark.parametrize("kind", sorted(NETS))
def test_every_bn_spelling_exports_verified_and_matches_tfs_inference_graph(kind, tmp_path):
    import ckptkit

    builder = NETS[kind]
    prefix = T.save_model(builder, SHAPE, str(tmp_path / kind / "model.ckpt"))
    _stats_after_training(prefix, builder)
    out = str(tmp_path / "m.onnx")
    ckptkit.export(ckptkit.load(prefix), "onnx", out)  # verified against the rewritten training graph: no wolf
    assert T.onnx_error_against_tf(builder, SHAPE, prefix, out) <= 1e-4


def test_a_reference_that_is_not_independent_is_not_called_verified(monkeypatch, tmp_path, capsys):
    """When the training graph cannot be rewritten, the check runs against ckptkit's own import: said plainly."""
    from ckptkit import cli
    from ckptkit.run import inference_graph
    from ckptkit.core.errors import CkptkitError

    def cannot(*_a, **_k):
        raise CkptkitError("cannot rewrite this graph (test)")

    monkeypatch.setattr(inference_graph, "plan", cannot)
    prefix = T.save_model(NETS["zero_debias_alone"], SHAPE, str(tmp_path / "ck" / "model.ckpt"))
    rc = cli.main(["to-onnx", prefix, "-o", str(tmp_path / "m.onnx")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "verified" not in out.replace("NOT an independent verification", ""), out
    assert "NOT an independent verification" in out and "NOT an independent verification" in err


@pytest.mark.fast
def test_a_failed_verification_names_the_first_diverging_node(monkeypatch, tmp_path, capsys):
    """A target that computes one op wrongly (here every ONNX Relu6 written as Relu: wrong only where a value
    passes 6) is refused, and the refusal names the first node where onnxruntime departs from TensorFlow's
    kernels, with its statistics, in one line and in --json."""
    import json

    from ckptkit import cli

    from ckptkit.ir import registry

    def net(inputs, is_training=False):
        s = slim()
        bn = dict(normalizer_fn=s.batch_norm, normalizer_params=dict(is_training=is_training, scale=True))
        x = s.conv2d(inputs, 8, 3, scope="conv1", **bn)  # relu: right in the broken writer
        x = s.conv2d(x, 8, 3, scope="conv2", activation_fn=tf().nn.relu6, **bn)
        x = s.flatten(s.conv2d(x * 20.0, 8, 3, stride=2, scope="conv3", activation_fn=tf().nn.relu6, **bn))
        return s.fully_connected(x, 10, activation_fn=None, scope="logits")

    prefix = T.save_model(net, SHAPE, str(tmp_path / "ck" / "model.ckpt"))
    relu6 = registry.get("Relu6")
    monkeypatch.setitem(relu6.writers, "onnx", lambda b, node, xs: b.op("Relu", xs, node.name))
    rc = cli.main(["to-onnx", prefix, "-o", str(tmp_path / "m.onnx"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 3, err
    line = [ln for ln in err.splitlines() if ln.startswith("ckptkit: error:")][0]
    doc = json.loads(out)["divergence"]
    assert doc["op"] == "Relu6" and doc["where"] == "target", doc
    assert doc["node"].startswith(("conv2/", "conv3/")), doc  # the first Relu6 whose input passes 6
    assert f"first diverging node: Relu6 {doc['node']}" in line and "cosine" in line
    assert doc["beyond"] > 0 and doc["max_rel"] > 1e-4 and doc["compared"] > 0
    assert not (tmp_path / "m.onnx").exists()
