"""Networks with the op patterns of the public slim model zoo beyond tf_slim.nets, each saved as a training
graph (.meta beside the checkpoint, BN in training mode, update ops), exported to every target and checked
against TensorFlow in the target's runtime, or refused up front where the target cannot express an op.

  mobilenet_v3   hard-swish x*relu6(x+3)/6, squeeze-excite with hard-sigmoid, residual
  cifarnet       LRN after the conv/pool stages, flatten + fully connected, dropout
  nasnet         factorized reduction (pad then crop [:, 1:, 1:, :], 1x1 stride-2 average pools),
                 separable convolutions, concat, cell additions
  inception_resnet  branches, concat, scaled residual `net += 0.17 * up`
  deeplab        atrous convolutions, ASPP with image pooling, bilinear resize (align_corners)
  pix2pix        U-Net: leaky ReLU encoder, transposed-conv decoder with BN, skip concat, tanh
  attention      broadcasting of computed tensors: a spatial mask [N,H,W,1] times the features, a channel
                 gate [N,1,1,C] added, minimum with a per-row [N,1,W,C] mean (Caffe: refused by name)
"""
import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.core.errors import CkptkitError
from ckptkit.commands.export import export, writer_for
from ckptkit.topology.sources import load


def _scopes(is_training, activation=None):
    s = T.slim()
    return s.arg_scope([s.conv2d, s.separable_conv2d, s.conv2d_transpose], normalizer_fn=s.batch_norm,
                       activation_fn=activation or tf().nn.relu), \
        s.arg_scope([s.batch_norm], is_training=is_training, scale=True, epsilon=1e-3)


def hard_swish(x):
    return x * tf().nn.relu6(x + np.float32(3)) * np.float32(1.0 / 6.0)


def hard_sigmoid(x):
    return tf().nn.relu6(x + np.float32(3)) * np.float32(1.0 / 6.0)


def mobilenet_v3(inputs, is_training=False):
    s, _tf = T.slim(), tf()
    a, b = _scopes(is_training, hard_swish)
    with a, b:
        net = s.conv2d(inputs, 8, 3, stride=2, scope="Conv")
        x = net
        h = s.conv2d(x, 16, 1, scope="expanded_conv/expand")
        h = s.separable_conv2d(h, None, 3, depth_multiplier=1, activation_fn=_tf.nn.relu, scope="expanded_conv/depthwise")
        se = _tf.reduce_mean(h, [1, 2], keepdims=True)
        se = s.conv2d(se, 4, 1, normalizer_fn=None, activation_fn=_tf.nn.relu, scope="expanded_conv/squeeze_excite/Conv")
        se = s.conv2d(se, 16, 1, normalizer_fn=None, activation_fn=hard_sigmoid,
                      scope="expanded_conv/squeeze_excite/Conv_1")
        h = h * se
        h = s.conv2d(h, 8, 1, activation_fn=None, scope="expanded_conv/project")
        net = h + x
        net = s.conv2d(net, 24, 1, scope="Conv_1")
        net = _tf.reduce_mean(net, [1, 2], keepdims=True)
        net = s.conv2d(net, 10, 1, normalizer_fn=None, activation_fn=None, scope="Logits")
        return _tf.squeeze(net, [1, 2])


def cifarnet(inputs, is_training=False):
    s, _tf = T.slim(), tf()
    net = s.conv2d(inputs, 8, 5, scope="conv1")
    net = s.max_pool2d(net, 3, 2, padding="SAME", scope="pool1")
    net = _tf.nn.lrn(net, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75, name="norm1")
    net = s.conv2d(net, 8, 5, scope="conv2")
    net = _tf.nn.lrn(net, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75, name="norm2")
    net = s.max_pool2d(net, 3, 2, padding="SAME", scope="pool2")
    net = s.flatten(net)
    net = s.fully_connected(net, 24, normalizer_fn=s.batch_norm,
                            normalizer_params={"is_training": is_training, "scale": True}, scope="fc3")
    net = s.dropout(net, 0.5, is_training=is_training, scope="dropout3")
    return s.fully_connected(net, 10, activation_fn=None, scope="logits")


def _factorized_reduction(net, out, is_training, scope):
    s, _tf = T.slim(), tf()
    path1 = s.avg_pool2d(net, 1, 2, padding="VALID", scope=f"{scope}/path1_pool")
    path1 = s.conv2d(path1, out // 2, 1, normalizer_fn=None, activation_fn=None, scope=f"{scope}/path1_conv")
    path2 = _tf.pad(net, [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :]
    path2 = s.avg_pool2d(path2, 1, 2, padding="VALID", scope=f"{scope}/path2_pool")
    path2 = s.conv2d(path2, out // 2, 1, normalizer_fn=None, activation_fn=None, scope=f"{scope}/path2_conv")
    net = _tf.concat([path1, path2], 3)
    return s.batch_norm(net, is_training=is_training, scale=True, scope=f"{scope}/final_path_bn")


def nasnet(inputs, is_training=False):
    s, _tf = T.slim(), tf()
    a, b = _scopes(is_training, activation=None)
    with a, b:
        net = s.conv2d(inputs, 8, 3, stride=2, scope="conv0")
        prev = _factorized_reduction(_tf.nn.relu(net), 8, is_training, "cell_0/prev_1x1")
        h = s.separable_conv2d(_tf.nn.relu(net), 8, 3, depth_multiplier=1, stride=2, scope="cell_0/comb_iter_0/left")
        left = h + prev
        right = s.max_pool2d(net, 3, 2, padding="SAME") + s.separable_conv2d(
            _tf.nn.relu(prev), 8, 5, depth_multiplier=1, scope="cell_0/comb_iter_1/left")
        net = _tf.concat([left, right], 3)
        net = _tf.reduce_mean(_tf.nn.relu(net), [1, 2])
        return s.fully_connected(net, 10, activation_fn=None, normalizer_fn=None, scope="final_layer")


def inception_resnet(inputs, is_training=False):
    s, _tf = T.slim(), tf()
    a, b = _scopes(is_training)
    with a, b:
        net = s.conv2d(inputs, 16, 3, stride=2, scope="Conv2d_1a_3x3")
        for i in range(2):
            scope = f"Repeat/block35_{i + 1}"
            b0 = s.conv2d(net, 8, 1, scope=f"{scope}/Branch_0/Conv2d_1x1")
            b1 = s.conv2d(s.conv2d(net, 8, 1, scope=f"{scope}/Branch_1/Conv2d_0a_1x1"), 8, 3,
                          scope=f"{scope}/Branch_1/Conv2d_0b_3x3")
            mixed = _tf.concat([b0, b1], 3)
            up = s.conv2d(mixed, 16, 1, normalizer_fn=None, activation_fn=None, scope=f"{scope}/Conv2d_1x1")
            net = _tf.nn.relu(net + 0.17 * up)
        net = _tf.reduce_mean(net, [1, 2])
        return s.fully_connected(net, 10, activation_fn=None, normalizer_fn=None, scope="Logits")


def deeplab(inputs, is_training=False):
    s, _tf = T.slim(), tf()
    a, b = _scopes(is_training)
    size = inputs.shape[1:3].as_list()
    with a, b:
        net = s.conv2d(inputs, 8, 3, stride=2, scope="entry")
        net = s.conv2d(net, 8, 3, rate=2, scope="atrous")
        feat = net.shape[1:3].as_list()
        pool = _tf.reduce_mean(net, [1, 2], keepdims=True)
        pool = s.conv2d(pool, 8, 1, scope="image_pooling")
        pool = tf1.image.resize_bilinear(pool, feat, align_corners=True)
        aspp0 = s.conv2d(net, 8, 1, scope="aspp0")
        aspp1 = s.conv2d(net, 8, 3, rate=2, scope="aspp1")
        net = s.conv2d(_tf.concat([pool, aspp0, aspp1], 3), 8, 1, scope="concat_projection")
        logits = s.conv2d(net, 4, 1, normalizer_fn=None, activation_fn=None, scope="logits")
        return tf1.image.resize_bilinear(logits, size, align_corners=True)


def pix2pix(inputs, is_training=False):
    s, _tf = T.slim(), tf()
    lrelu = lambda x: _tf.nn.leaky_relu(x, 0.2)  # noqa: E731
    a, b = _scopes(is_training, lrelu)
    with a, b:
        e1 = s.conv2d(inputs, 8, 4, stride=2, normalizer_fn=None, scope="encoder_1")
        e2 = s.conv2d(e1, 16, 4, stride=2, scope="encoder_2")
        d1 = s.conv2d_transpose(e2, 8, 4, stride=2, activation_fn=_tf.nn.relu, scope="decoder_1")
        d1 = _tf.concat([d1, e1], 3)
        out = s.conv2d_transpose(d1, 3, 4, stride=2, normalizer_fn=None, activation_fn=_tf.tanh, scope="decoder_2")
        return out


def attention(inputs, is_training=False, rows: bool = True):
    s, _tf = T.slim(), tf()
    a, b = _scopes(is_training)
    with a, b:
        net = s.conv2d(inputs, 8, 3, stride=2, scope="conv1")
        mask = s.conv2d(net, 1, 1, normalizer_fn=None, activation_fn=_tf.sigmoid, scope="spatial_mask")
        net = mask * net  # [N,H,W,1] * [N,H,W,C]: the channel axis is broadcast
        gate = s.conv2d(_tf.reduce_mean(net, [1, 2], keepdims=True), 8, 1, normalizer_fn=None, scope="gate")
        net = net + gate  # [N,H,W,C] + [N,1,1,C]
        if rows:
            h = int(net.shape[1])  # [N,1,W,C], each column's mean: one row spread over H
            net = _tf.minimum(net, s.avg_pool2d(net, [h, 1], stride=[h, 1], padding="VALID"))
        net = s.conv2d(net, 8, 3, scope="conv2")
        net = _tf.reduce_mean(net, [1, 2])
        return s.fully_connected(net, 10, activation_fn=None, normalizer_fn=None, scope="logits")


NETS = {  # builder, input shape, targets that must refuse it (and a word of why)
    "mobilenet_v3": (mobilenet_v3, (32, 32, 3), {}),
    "cifarnet": (cifarnet, (16, 16, 3), {"keras": "LRN"}),
    "nasnet": (nasnet, (16, 16, 3), {"caffe": "Pad"}),
    "inception_resnet": (inception_resnet, (17, 17, 3), {}),
    "deeplab": (deeplab, (33, 33, 3), {"keras": "align_corners", "caffe": "bilinear"}),
    "pix2pix": (pix2pix, (16, 16, 3), {}),
    "attention": (attention, (16, 16, 3), {"caffe": "broadcasting"}),
    "attention_caffe": (lambda x, is_training=False: attention(x, is_training, rows=False), (16, 16, 3), {}),
}


@pytest.fixture(scope="session")
def saved(shared_checkpoint):
    """The zoo pattern's checkpoint, built once per run (tests/test_bn_scan.py scans the same ones)."""

    def get(name):
        builder, shape, _ = NETS[name]
        return shared_checkpoint(f"zoo-{name}", builder, shape)

    return get


@pytest.fixture(scope="session")
def zoo_model(saved):
    """`load` of the zoo pattern through its training .meta, once per worker for its three targets (an export
    leaves its Model as it was)."""
    import functools

    return functools.lru_cache(maxsize=None)(lambda name: load(saved(name)))


@pytest.mark.parametrize("target, ext", [("onnx", ".onnx"), ("keras", ".keras"), ("caffe", "")])
@pytest.mark.parametrize("name", list(NETS))
def test_zoo_pattern_exports_from_its_training_meta(saved, zoo_model, tf_output, tmp_path, name, target, ext):
    builder, shape, refused = NETS[name]
    prefix = saved(name)
    model = zoo_model(name)  # the training .meta beside the checkpoint
    out = str(tmp_path / f"m{ext}")
    if target in refused:
        with pytest.raises(CkptkitError, match="cannot express") as err:
            export(model, target, out)
        assert refused[target] in str(err.value)
        assert not list(tmp_path.iterdir())
        return
    assert not writer_for(target).unsupported(model.graph)
    result = export(model, target, out)
    assert result.comparison.ok, result.comparison
    assert result.graph.count("BatchNorm") == 0 or name == "nasnet"
    # the reference is TF's own graph restored from the checkpoint, not ckptkit's importer
    x = T.random_input(shape, batch=2)
    expected = tf_output(builder, shape, prefix, x)
    assert np.allclose(model.reference(x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["mobilenet_v3", "pix2pix", "inception_resnet"])
def test_fold_then_export_chains_through_the_bn_free_graph(saved, tf_output, tmp_path, name):
    from ckptkit.commands.fold import fold_checkpoint

    builder, shape, _ = NETS[name]
    prefix = saved(name)
    report = fold_checkpoint(prefix, str(tmp_path / "folded" / "model.ckpt"))
    assert report.folded and report.graph, report.kept  # the BN-free .meta was written beside it
    folded = load(str(tmp_path / "folded" / "model.ckpt"))
    assert folded.graph.count("BatchNorm") == 0
    x = T.random_input(shape, batch=2)
    expected = tf_output(builder, shape, prefix, x)  # the original net, original checkpoint
    got = folded.reference(x)  # TensorFlow running the folded checkpoint in its BN-free graph
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert export(folded, "onnx", str(tmp_path / "m.onnx")).comparison.ok
