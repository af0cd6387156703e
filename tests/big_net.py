"""A slim net whose checkpoint is just over 2 GiB (tests/test_onnx_external_data.py gives it to `--builder`):
conv + BatchNorm, then a fully connected layer of 65536 x 8200 float32 weights (2.0019 GiB)."""
BIG_INPUT = (32, 32, 64)
BIG_UNITS = 8200


def big_net(inputs, is_training=False):
    from ckptkit.core.compat import slim

    s = slim()
    net = s.conv2d(inputs, 64, 3, normalizer_fn=s.batch_norm, normalizer_params={"is_training": is_training},
                   scope="conv")
    return s.fully_connected(s.flatten(net), BIG_UNITS, activation_fn=None, scope="fc")
