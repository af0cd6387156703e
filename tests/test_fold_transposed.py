import numpy as np
from ckptkit import testing as T
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.commands.fold import fold_checkpoint


def transposed_dense_net(inputs, is_training=False, batch_norm=True):
    """A fully connected layer stored [out, in] (MatMul transpose_b) followed by slim BN."""
    s = T.slim()
    net = tf().reshape(inputs, [-1, 4 * 4 * 3])
    w = tf1.get_variable("fc/weights", [6, 48], initializer=tf1.glorot_uniform_initializer())
    net = tf().matmul(net, w, transpose_b=True)
    if batch_norm:
        return s.batch_norm(net, is_training=is_training, scale=True, scope="fc/BatchNorm")
    return tf().nn.bias_add(net, tf1.get_variable("fc/biases", [6], initializer=tf1.zeros_initializer()))


def test_fold_scales_a_transposed_dense_kernel_on_its_output_axis(tmp_path):
    prefix = T.save_model(transposed_dense_net, (4, 4, 3), str(tmp_path / "tb" / "model.ckpt"))
    report = fold_checkpoint(prefix, str(tmp_path / "f.ckpt"), write_graph=False)
    assert report.folded == ["fc/BatchNorm"]
    x = T.random_input((4, 4, 3), batch=3)
    ref = T.inference_output(transposed_dense_net, (4, 4, 3), prefix, x)
    no_bn = lambda i, is_training=False: transposed_dense_net(i, is_training, batch_norm=False)  # noqa: E731
    got = T.inference_output(no_bn, (4, 4, 3), str(tmp_path / "f.ckpt"), x)
    assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max()
