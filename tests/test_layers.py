"""Each padding/pooling/layout case on its own small graph, in every format, against TF itself."""
import numpy as np
import pytest

from ckptkit.core.lazy_tf import tf
from ckptkit.commands.export import export
from ckptkit.topology.sources import load


def const(shape, seed):
    return tf().constant(np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32))


def conv(k, s, padding, cin=3, cout=4, rate=1):
    return lambda x: tf().nn.conv2d(x, const((k, k, cin, cout), k + s), s, padding, dilations=rate)


CASES = {
    "conv_same_odd_total_s2": conv(3, 2, "SAME"),
    "conv_same_even_kernel_s1": conv(2, 1, "SAME"),
    "conv_same_k4_s2": conv(4, 2, "SAME"),
    "conv_valid_s2": conv(3, 2, "VALID"),
    "conv_dilated_same": conv(3, 1, "SAME", rate=2),
    "depthwise_mult2_same_s2": lambda x: tf().nn.depthwise_conv2d(x, const((3, 3, 3, 2), 1), [1, 2, 2, 1], "SAME"),
    "maxpool_same_k3_s2": lambda x: tf().nn.max_pool2d(x - 5.0, 3, 2, "SAME"),
    "maxpool_valid_k3_s2": lambda x: tf().nn.max_pool2d(x, 3, 2, "VALID"),
    "avgpool_same_k3_s2": lambda x: tf().nn.avg_pool2d(x, 3, 2, "SAME"),
    "avgpool_same_k2_s1": lambda x: tf().nn.avg_pool2d(x, 2, 1, "SAME"),
    "avgpool_valid_k3_s2": lambda x: tf().nn.avg_pool2d(x, 3, 2, "VALID"),
    "global_mean_keepdims": lambda x: tf().reduce_mean(x, [1, 2], keepdims=True),
    "global_mean_flat": lambda x: tf().reduce_mean(x, [1, 2]),
    "flatten_dense": lambda x: tf().matmul(tf().reshape(tf().nn.relu(x), [-1, int(np.prod(x.shape[1:]))]),
                                           const((int(np.prod(x.shape[1:])), 5), 2)),
    "relu6_concat": lambda x: tf().concat([tf().nn.relu6(x * 4.0), tf().nn.relu(x)], axis=3),
    "explicit_pad_conv": lambda x: tf().nn.conv2d(tf().pad(x, [[0, 0], [1, 2], [2, 1], [0, 0]]), const((3, 3, 3, 4), 3),
                                                  2, "VALID"),
}


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt, ext", [("onnx", ".onnx"), ("keras", ".keras"), ("caffe", "")])
def test_case_matches_tf(tmp_path, case, size, fmt, ext):
    model = load(builder=CASES[case], input_shape=(size, size, 3))
    result = export(model, fmt, str(tmp_path / f"m{ext}"))
    assert result.comparison.ok
    assert result.comparison.max_rel < 1e-5, result.comparison  # far inside the tolerance
