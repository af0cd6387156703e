"""`--builder MODULE:FUNCTION`: the user's network code as the topology of a checkpoint without a .meta."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.topology.user_builder import resolve

NET = textwrap.dedent('''
    import tensorflow as tf
    import tf_slim as slim


    def small_net(inputs, num_classes=5, is_training=True, batch_norm=True):
        """A decoder-style net: conv, transposed conv (both with BN), global mean, logits."""
        params = {"is_training": is_training, "epsilon": 1e-5, "scale": True}
        with slim.arg_scope([slim.conv2d, slim.conv2d_transpose], normalizer_fn=slim.batch_norm if batch_norm else None,
                            normalizer_params=params if batch_norm else None):
            net = slim.conv2d(inputs, 8, 3, stride=2, scope="conv1")
            net = slim.conv2d_transpose(net, 6, 3, stride=2, scope="up")
            net = tf.reduce_mean(net, [1, 2])
            logits = slim.fully_connected(net, num_classes, activation_fn=None, scope="logits")
        return logits, {"up": net}
''')


def ckptkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ckptkit.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("builder")
    (root / "my_nets.py").write_text(NET)
    build = resolve(f"{root / 'my_nets.py'}:small_net")
    prefix = T.save_model(lambda x, is_training: resolve(f"{root / 'my_nets.py'}:small_net",
                                                         {"is_training": is_training})(x),
                          (8, 8, 3), str(root / "ckpt" / "model.ckpt"), save_meta=False)
    assert build is not None
    return root, prefix


def test_export_from_builder_module_in_the_current_folder(saved, tmp_path):
    root, prefix = saved
    out = ckptkit("to-onnx", prefix, "--builder", "my_nets:small_net", "--builder-arg", "num_classes=5",
                  "--input-shape", "8,8,3", "-o", str(tmp_path / "m.onnx"), cwd=str(root))
    assert out.returncode == 0, out.stderr
    assert "verified against TensorFlow" in out.stdout


def test_fold_from_builder_file_folds_the_transposed_conv_on_its_output_axis(saved, tmp_path):
    root, prefix = saved
    out = ckptkit("fold", prefix, "--builder", f"{root / 'my_nets.py'}:small_net", "--input-shape", "8,8,3",
                  "-o", str(tmp_path / "f" / "model.ckpt"), "--json")
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout)
    assert sorted(report["folded"]) == ["conv1/BatchNorm", "up/BatchNorm"]
    assert Checkpoint(str(tmp_path / "f" / "model.ckpt")).tensors["up/weights"].shape == (3, 3, 6, 8)
    module_fn = resolve(f"{root / 'my_nets.py'}:small_net")
    no_bn = resolve(f"{root / 'my_nets.py'}:small_net", {"batch_norm": False})
    x = T.random_input((8, 8, 3), batch=3)
    ref = T.inference_output(lambda i, is_training=False: module_fn(i), (8, 8, 3), prefix, x)
    got = T.inference_output(lambda i, is_training=False: no_bn(i), (8, 8, 3), str(tmp_path / "f" / "model.ckpt"), x)
    assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("spec, words", [
    ("my_nets.py", "is not MODULE:FUNCTION"),
    ("my_nets.py:nope", "has no function nope"),
    ("missing_module:f", "no module missing_module here"),
    ("imports_missing.py:f", "imports not_installed_anywhere, which is not installed"),
])
def test_bad_builder_is_one_line(saved, tmp_path, spec, words):
    root, prefix = saved
    (root / "imports_missing.py").write_text("import not_installed_anywhere\n\ndef f(x):\n    return x\n")
    out = ckptkit("to-onnx", prefix, "--builder", spec, "--input-shape", "8,8,3", "-o", str(tmp_path / "m.onnx"),
                  cwd=str(root))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert words in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "m.onnx").exists()


def test_builder_needs_an_input_shape(saved, tmp_path):
    root, prefix = saved
    out = ckptkit("to-onnx", prefix, "--builder", "my_nets:small_net", "-o", str(tmp_path / "m.onnx"), cwd=str(root))
    assert out.returncode == 2 and "--input-shape" in out.stderr.strip().splitlines()[-1]
