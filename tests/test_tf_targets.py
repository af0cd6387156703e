"""The targets written through TensorFlow on every test network (issue 35): LiteRT float in LiteRT's interpreter and
the SavedModel loaded with tf.saved_model.load, each against TensorFlow's own inference output of the checkpoint
(the `reference` fixture, independent of ckptkit's importer)."""
import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit.commands.export import export
from ckptkit.topology.sources import load
from conftest import NETS, quick, rel_error


@pytest.mark.parametrize("name", quick(NETS))
def test_litert_float_matches_tf(store, loaded, reference, tmp_path, name):
    from ai_edge_litert.interpreter import Interpreter

    prefix = store(name)
    path = str(tmp_path / "m.tflite")
    result = export(loaded(name), "tflite", path, batch=2)
    assert result.comparison.ok and "ai-edge-litert" in result.comparison.runtime
    interp = Interpreter(model_path=path)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert list(inp["shape"]) == [2, *NETS[name][1]]
    x = T.random_input(NETS[name][1], batch=2, seed=11)
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    assert rel_error(reference(name, prefix, x), np.array(interp.get_tensor(out["index"]))) < 1e-4


@pytest.mark.parametrize("name", quick(NETS))
def test_saved_model_matches_tf(store, loaded, reference, tmp_path, name):
    from ckptkit.core.lazy_tf import tf

    prefix = store(name)
    path = str(tmp_path / "served")
    export(loaded(name), "savedmodel", path, check=False)  # verified here instead (test_savedmodel.py: the check)
    serve = tf().saved_model.load(path).signatures["serving_default"]
    (key,) = serve.structured_input_signature[1]
    x = T.random_input(NETS[name][1], batch=3, seed=11)
    (got,) = serve(**{key: tf().constant(x)}).values()
    assert rel_error(reference(name, prefix, x), got.numpy()) < 1e-4


# The slim model zoo's MobileNet v1, as its mobilenet_v1.py builds it (our own code after its documented layer
# table: MobilenetV1/Conv2d_0, then Conv2d_N_depthwise + Conv2d_N_pointwise with BatchNorm (decay 0.9997, epsilon
# 1e-3, scale) and ReLU6, then Logits/AvgPool_1a, Dropout_1b, Conv2d_1c_1x1, SpatialSqueeze), narrowed by a depth
# multiplier: the zoo's checkpoints themselves are not reachable from this machine.
_V1_BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512)] + [(1, 512)] * 5 + [(2, 1024), (1, 1024)]


def zoo_mobilenet_v1(inputs, is_training=False, depth_multiplier=0.25, num_classes=10):
    s, _tf = T.slim(), T.tf()
    depth = lambda d: max(int(d * depth_multiplier), 8)  # noqa: E731
    bn = dict(is_training=is_training, decay=0.9997, epsilon=0.001, center=True, scale=True)
    with s.arg_scope([s.conv2d, s.separable_conv2d], normalizer_fn=s.batch_norm, activation_fn=_tf.nn.relu6,
                     padding="SAME"), s.arg_scope([s.batch_norm], **bn), \
            _tf.compat.v1.variable_scope("MobilenetV1"):
        net = s.conv2d(inputs, depth(32), 3, stride=2, scope="Conv2d_0")
        for i, (stride, d) in enumerate(_V1_BLOCKS, start=1):
            net = s.separable_conv2d(net, None, 3, depth_multiplier=1, stride=stride, scope=f"Conv2d_{i}_depthwise")
            net = s.conv2d(net, depth(d), 1, scope=f"Conv2d_{i}_pointwise")
        with _tf.compat.v1.variable_scope("Logits"):
            net = s.avg_pool2d(net, net.shape[1:3], padding="VALID", scope="AvgPool_1a")
            net = s.dropout(net, keep_prob=0.999, is_training=is_training, scope="Dropout_1b")
            logits = s.conv2d(net, num_classes, 1, activation_fn=None, normalizer_fn=None, scope="Conv2d_1c_1x1")
            return _tf.squeeze(logits, [1, 2], name="SpatialSqueeze")


@pytest.mark.parametrize("target", ["tflite", "savedmodel"])
def test_the_zoos_mobilenet_v1_deploys(target, shared_checkpoint, tmp_path):
    """A MobileNet v1 saved as its training script saves it (BN in training mode, update ops, dropout), through the
    .meta beside it, to LiteRT and SavedModel, each compared with TF's own inference graph of the checkpoint."""
    from ckptkit.core.lazy_tf import tf

    shape = (96, 96, 3)
    prefix = shared_checkpoint("zoo-mobilenet_v1", zoo_mobilenet_v1, shape, training="literal")  # both targets
    x = T.random_input(shape, batch=2, seed=5)
    expected = T.inference_output(zoo_mobilenet_v1, shape, prefix, x)
    out = str(tmp_path / ("m.tflite" if target == "tflite" else "served"))
    export(load(prefix), target, out)  # verified in its runtime first
    if target == "tflite":
        from ckptkit.converters.tflite import runner

        got = runner(out)(x)
    else:
        serve = tf().saved_model.load(out).signatures["serving_default"]
        (key,) = serve.structured_input_signature[1]
        (got,) = serve(**{key: tf().constant(x)}).values()
    assert rel_error(expected, np.asarray(got)) < 1e-4
