"""The verification reference cannot produce noise: every dropout / noise spelling of a training graph is
resolved to its inference path (in the importer and, independently, in the reference rewrite), and a
random op that survives is reported as such instead of blaming the export.

Each net is saved from a *training* graph where the noise is applied unconditionally (as a script with
`is_training=True` leaves it); the export must match TensorFlow's inference graph of the same checkpoint,
built independently with no noise at all.
"""
import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.core.compat import slim

SHAPE = (16, 16, 3)


def _noise(kind: str, net, is_training):
    _tf = tf()
    if is_training is False:
        return net
    if kind == "slim_dropout":  # TF 2.21: SelectV2(GreaterEqual(RandomUniform, rate), x * 1/keep, 0)
        return slim().dropout(net, 0.5, is_training=True, scope="Dropout")
    if kind == "keep_prob_placeholder":  # TF1 scripts: a scalar keep_prob placeholder
        keep = tf1.placeholder_with_default(0.7, [], name="keep_prob")
        return tf1.nn.dropout(net, keep_prob=keep)
    if kind == "keras_dropout":
        import tf_keras

        return tf_keras.layers.Dropout(0.3)(net, training=True)
    if kind == "where_drop_zero_else_x":
        drop = _tf.random.uniform(_tf.shape(net)) < 0.3
        return _tf.where(drop, _tf.zeros_like(net), net / 0.7)
    if kind == "gaussian_noise":
        return net + _tf.random.normal(_tf.shape(net), stddev=0.5)
    if kind == "residual_dropout":  # a branch holding a dropout is data, not noise: x + dropout(fc(x))
        branch = slim().fully_connected(net, int(net.shape[-1]), scope="branch")
        return net + slim().dropout(branch, 0.5, is_training=True, scope="BranchDropout")
    raise AssertionError(kind)


def noisy_net(kind: str):
    def net_fn(inputs, is_training=False):
        s = slim()
        bn = dict(normalizer_fn=s.batch_norm, normalizer_params=dict(is_training=is_training, scale=True))
        net = s.conv2d(inputs, 8, 3, stride=2, scope="conv1", **bn)
        net = s.flatten(net)
        net = s.fully_connected(net, 16, scope="fc", **bn)
        if kind == "residual_dropout" and is_training is False:  # same variables, no dropout
            net = net + s.fully_connected(net, 16, scope="branch")
        else:
            net = _noise(kind, net, is_training)
        return s.fully_connected(net, 10, activation_fn=None, scope="logits")

    return net_fn


KINDS = ["slim_dropout", "keep_prob_placeholder", "keras_dropout", "where_drop_zero_else_x", "gaussian_noise",
         "residual_dropout"]


@pytest.mark.parametrize("kind", KINDS)
def test_noise_spellings_export_and_match_an_independent_inference_graph(kind, tmp_path):
    import ckptkit

    builder = noisy_net(kind)
    prefix = T.save_model(builder, SHAPE, str(tmp_path / kind / "model.ckpt"))
    out = str(tmp_path / "m.onnx")
    ckptkit.export(ckptkit.load(prefix), "onnx", out)  # verified against the rewritten training graph: no wolf
    assert T.onnx_error_against_tf(builder, SHAPE, prefix, out) <= 1e-4


def test_a_random_reference_is_reported_as_such():
    """A builder graph still in training mode draws a new mask each run: the gateway says so, naming the op."""
    from ckptkit.core.errors import CkptkitError
    from ckptkit.run.gateway import GatedRun

    g = tf().Graph()
    with g.as_default():
        x = tf1.placeholder(tf().float32, [None, *SHAPE], name="input")
        y = tf().nn.dropout(slim().flatten(x), rate=0.5)
    run = GatedRun(g, x.name, y.name, None)
    with pytest.raises(CkptkitError, match=r"not deterministic: random op .*RandomUniform"):
        run(T.random_input(SHAPE))
    run.close()


def _arrays(tf_err: float, export_err: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    exact = rng.normal(0, 1, (4, 10))
    scale = np.abs(exact).max()
    ref = exact + tf_err * scale * np.sign(rng.normal(size=exact.shape))
    got = exact + export_err * scale * np.sign(rng.normal(size=exact.shape))
    return ref, got, exact


@pytest.mark.parametrize("tf_err, export_err, ok, words", [
    (7.3e-4, 4.9e-4, True, "at least as close to float64 as TensorFlow"),  # inception_v4's case, as reported
    (7.3e-4, 1.5e-3, False, "the export is wrong"),  # the export is further from float64 than TF
    (5e-3, 4e-3, False, "FAILED"),  # beyond float32 rounding: no rescue
])
def test_precision_verdict_tells_rounding_from_a_wrong_export(tf_err, export_err, ok, words):
    from ckptkit.run.verify import compare, precision_verdict

    ref, got, exact = _arrays(tf_err, export_err)
    first = compare(ref, got, 1e-4)
    assert not first.ok
    judged = precision_verdict(first, ref, got, exact)
    assert judged.ok is ok and words in str(judged), str(judged)


def test_the_float64_evaluation_is_the_model():
    """The yardstick must be the same model: the IR in float64 agrees with TensorFlow's float32 run."""
    import ckptkit
    from ckptkit.run.tf_exec import float64_fn

    model = ckptkit.load(T.__file__.replace("ckptkit/testing.py", "fixtures/mobilenet_v2_tiny"))
    x = T.random_input((32, 32, 3), batch=4)
    exact, ref = float64_fn(model.graph)(x), model.reference(x)
    assert exact.dtype == np.float64
    assert np.abs(exact - ref).max() <= 1e-5 * np.abs(exact).max()


@pytest.mark.fast
def test_reference_feeds_every_kind_of_variable(tmp_path):
    """The gated reference feeds weights in place of variables (no assignment holds a second copy): a ref
    variable, a resource variable read directly, and one handed to a tf.function (assigned instead) all
    give what TensorFlow gives with the checkpoint restored."""
    from ckptkit.read.checkpoint import Checkpoint
    from ckptkit.run.gateway import GatedRun

    _tf = tf()
    g = _tf.Graph()
    with g.as_default():
        x = tf1.placeholder(_tf.float32, [None, 3], name="input")
        v = tf1.get_variable("v", [3, 2], use_resource=True, initializer=tf1.random_normal_initializer())
        r = tf1.get_variable("r", [3, 2], use_resource=True, initializer=tf1.random_normal_initializer())
        w = tf1.get_variable("w", [2], use_resource=False, initializer=tf1.random_normal_initializer())

        @_tf.function
        def f(a):
            return _tf.matmul(a, v)

        y = _tf.identity(f(x) + _tf.matmul(x, r) + w, name="out")
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            tf1.train.Saver().save(sess, str(tmp_path / "m.ckpt"))
            inputs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
            want = sess.run(y, {x: inputs})
    run = GatedRun(g, "input:0", "out:0", Checkpoint(str(tmp_path / "m.ckpt")))
    assert np.allclose(run(inputs), want, rtol=1e-6, atol=1e-6)
    assert run.held_bytes == 3 * 2 * 4 + 3 * 2 * 4 + 2 * 4  # the assigned one and the aligned copies fed
    run.close()


@pytest.mark.fast
def test_a_reference_with_big_activations_runs_a_sample_at_a_time(monkeypatch):
    """A run is sized so its activations stay within a budget: samples go through in groups and the outputs
    are the batch's, in order."""
    from ckptkit.run import gateway

    _tf = tf()
    g = _tf.Graph()
    with g.as_default():
        x = tf1.placeholder(_tf.float32, [None, 32, 32, 3], name="input")
        k = _tf.constant(np.random.default_rng(1).normal(size=(3, 3, 3, 8)).astype(np.float32))
        y = _tf.reduce_mean(_tf.nn.conv2d(x, k, 1, "SAME"), axis=[1, 2], name="out")
    monkeypatch.setattr(gateway, "ACTIVATION_BUDGET", gateway.LIVE_FACTOR * 32 * 32 * 8 * 4 * 2)  # two samples
    run = gateway.GatedRun(g, "input:0", "out:0", None)
    assert run.samples_per_run == 2
    inputs = np.random.default_rng(2).normal(size=(5, 32, 32, 3)).astype(np.float32)
    with tf1.Session(graph=g) as sess:
        want = sess.run(y, {x: inputs})
    assert np.allclose(run(inputs), want, rtol=1e-5, atol=1e-6)
    run.close()
