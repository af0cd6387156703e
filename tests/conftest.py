"""Shared fixtures: checkpoints built once per test session with tf_slim (realistic statistics)."""
import functools
import os

import numpy as np
import pytest

from ckptkit import testing as T

# name -> (builder, input shape, builder without BN for fold tests or None)
NETS = {
    "variants": (T.bn_variants_net, (32, 32, 3)),
    "handwritten": (T.handwritten_bn_net, (16, 16, 3)),  # tf.nn.moments + moving_avg/var; EMA shadows
    "mobilenet_v2": (T.mobilenet_v2_net, (32, 32, 3)),
    "vgg16_bn": (T.vgg16_bn_net, (32, 32, 3)),
    "resnet_v1_50": (T.arch_net("resnet_v1_50"), (64, 64, 3)),
    "resnet_v2_50": (T.arch_net("resnet_v2_50"), (64, 64, 3)),
    "resnet_v1_50_os16": (T.arch_net("resnet_v1_50", output_stride=16), (71, 71, 3)),
    "inception_v1": (T.arch_net("inception_v1"), (224, 224, 3)),  # its 7x7 final pool needs 224
    "inception_v2": (T.arch_net("inception_v2"), (64, 64, 3)),
    "inception_v3": (T.arch_net("inception_v3"), (139, 139, 3)),
}
# --arch name and extra args for the nets that are tf_slim.nets networks
ARCH = {"resnet_v1_50": ("resnet_v1_50", {}), "resnet_v2_50": ("resnet_v2_50", {}),
        "resnet_v1_50_os16": ("resnet_v1_50", {"output_stride": 16}), "inception_v1": ("inception_v1", {}),
        "inception_v2": ("inception_v2", {}), "inception_v3": ("inception_v3", {})}


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")

    @functools.lru_cache(maxsize=None)
    def make(name: str, stats: str = "random", trainable_only: bool = False) -> str:
        builder, shape = NETS[name]
        prefix = str(root / f"{name}-{stats}-{int(trainable_only)}" / "model.ckpt")
        return T.save_model(builder, shape, prefix, stats=stats, trainable_only=trainable_only)

    return make


@pytest.fixture(scope="session")
def reference():
    """TF's own inference output of a net restored from a checkpoint (independent of ckptkit's importer)."""
    cache = {}

    def run(name: str, prefix: str, x: np.ndarray) -> np.ndarray:
        key = (name, prefix, x.tobytes())
        if key not in cache:
            builder, shape = NETS[name]
            cache[key] = T.inference_output(builder, shape, prefix, x)
        return cache[key]

    return run


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    from ckptkit.verify import compare

    got = np.asarray(got)
    if got.shape != ref.shape and got.size == ref.size and got.shape[0] == ref.shape[0]:
        # a training .meta's detected output is the logits the loss reads, often [N,C] where the
        # network function returns [N,1,1,C]: same values, same order
        got = got.reshape(ref.shape)
    return compare(ref, got).max_rel


FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mobilenet_v2_tiny", "model.ckpt")


def quick(names) -> list:
    """Parameter values with the first one in the quick tier: `@pytest.mark.parametrize("name", quick(NETS))`."""
    names = list(names)
    first = names[0] if isinstance(names[0], tuple) else (names[0],)  # several argnames: a tuple of values
    return [pytest.param(*first, marks=pytest.mark.fast)] + names[1:]


def pytest_configure(config):
    # `make test-fast` (pytest -m fast): the TF-free unit tests, the op cases in ONNX, one network per format, the
    # reader against TensorFlow, the quick CLI checks; each marked where it is defined (--strict-markers)
    config.addinivalue_line("markers", "fast: the quick development tier (`make test-fast`)")
