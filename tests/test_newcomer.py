"""A newcomer's path (issue 36): errors that need no TensorFlow come without importing it, and their own slim
code imports in ckptkit's environment."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BROKEN = os.path.join(ROOT, "fixtures", "digits", "broken")
CALIBRATION = os.path.join(ROOT, "fixtures", "digits", "calibration")

_PROBE = ("import atexit, sys; from ckptkit.cli import entry; "
          "atexit.register(lambda: print('TF' if 'tensorflow' in sys.modules else 'no TF')); entry()")


def _run(*args):
    return subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.fast
@pytest.mark.parametrize("command", ["recalibrate", "diagnose"])
@pytest.mark.parametrize("case", ["not_a_folder", "empty", "no_preprocess", "only_tiff"])
def test_data_errors_come_before_tensorflow(command, case, tmp_path):
    data = {"not_a_folder": tmp_path / "missing", "empty": tmp_path / "empty", "no_preprocess": CALIBRATION,
            "only_tiff": tmp_path / "tiffs"}[case]
    if case == "empty":
        data.mkdir()
    if case == "only_tiff":
        data.mkdir()
        (data / "scan.tif").write_bytes(b"II*\0")
    args = [command, BROKEN, "--data", data] + (["-o", tmp_path / "out" / "model.ckpt"] if command == "recalibrate"
                                                 else [])
    run = _run(*args)
    assert run.returncode == 2, run.stderr
    assert run.stdout.strip().endswith("no TF"), run.stderr
    line = [ln for ln in run.stderr.splitlines() if ln.startswith("ckptkit: error:")]
    assert len(line) == 1, run.stderr
    expected = {"not_a_folder": "is not a folder", "empty": "no usable samples", "no_preprocess": "--preprocess",
                "only_tiff": "TIFF"}[case]
    assert expected in line[0]
    assert ".tif," not in line[0]  # the formats listed are those that are read


def test_a_users_own_slim_code_imports_after_ckptkit(tmp_path):
    """`import tf_slim` nets fail on TF 2.21 without ckptkit's shims (tf_keras.legacy_tf_layers): importing
    ckptkit installs them for whatever imports tf_slim next."""
    code = ("import ckptkit, tensorflow.compat.v1 as tf; tf.disable_eager_execution(); "
            "import tf_slim as slim; from tf_slim.nets import resnet_v2; "
            "x = tf.placeholder(tf.float32, [None, 32, 32, 3]); "
            "net, _ = resnet_v2.resnet_v2_50(x, num_classes=3, is_training=False); print(net.shape)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(None, 1, 1, 3)" in run.stdout


@pytest.mark.fast
def test_library_errors_name_the_keyword_passed(tmp_path):
    from ckptkit.core.errors import CkptkitError
    from ckptkit.commands.recalibrate import recalibrate

    with pytest.raises(CkptkitError, match=r"batch_size=1 is too small") as err:
        recalibrate(BROKEN, CALIBRATION, str(tmp_path / "out" / "model.ckpt"), preprocess="unit", batch_size=1)
    assert "--batch-size" not in str(err.value)


@pytest.mark.fast
def test_a_prefix_without_its_step_names_the_checkpoints_beside_it(tmp_path):
    import shutil

    from ckptkit.read.checkpoint import Checkpoint
    from ckptkit.core.errors import CkptkitError

    for step in (9, 25):
        for f in os.listdir(BROKEN):
            if f.startswith("model.ckpt."):
                shutil.copy(os.path.join(BROKEN, f), tmp_path / f.replace("model.ckpt", f"model.ckpt-{step}"))
    with pytest.raises(CkptkitError, match=r"model\.ckpt-9, model\.ckpt-25: pass the prefix with its step"):
        Checkpoint(str(tmp_path / "model.ckpt"))


def test_an_onnx_output_must_be_named_onnx(tmp_path):
    run = _run("to-onnx", os.path.join(ROOT, "fixtures", "mobilenet_v2_tiny"), "-o", tmp_path / "model.pb")
    assert run.returncode == 2 and "must end in .onnx" in run.stderr, run.stderr
    assert not list(tmp_path.iterdir())


def test_an_export_into_a_shared_folder_names_what_else_is_there(tmp_path):
    (tmp_path / "other.onnx").write_bytes(b"not ours")
    run = _run("export", os.path.join(ROOT, "fixtures", "mobilenet_v2_tiny"), "--to", "keras", "-o", tmp_path)
    assert run.returncode == 0, run.stderr
    assert "also holds models this export did not write (other.onnx)" in run.stderr
    assert (tmp_path / "other.onnx").read_bytes() == b"not ours"


def test_verify_of_an_existing_file_names_where_it_departs(tmp_path, capsys):
    """A file made from one checkpoint, checked against another that differs in one layer: `ckptkit verify` exits
    3 and names that layer's node as the first to diverge, with its statistics (issue 38.3)."""
    import json
    import shutil

    from ckptkit import cli
    from ckptkit.read.checkpoint import Checkpoint, write_checkpoint

    fixture = os.path.join(ROOT, "fixtures", "mobilenet_v2_tiny")
    onnx_path = str(tmp_path / "m.onnx")
    assert cli.main(["to-onnx", fixture, "-o", onnx_path, "-q"]) == 0
    assert cli.main(["verify", fixture, onnx_path, "-q"]) == 0  # the file and its own checkpoint agree
    ckpt = Checkpoint(fixture)
    changed = sorted(n for n in ckpt.names if n.endswith("project/weights"))[-1]

    def tensors():
        for name in ckpt.names:
            value = ckpt.get(name)
            yield name, (value * 1.5 if name == changed else value)

    other = tmp_path / "other"
    other.mkdir()
    write_checkpoint(str(other / "model.ckpt"), tensors())
    shutil.copy(ckpt.prefix + ".meta", other / "model.ckpt.meta")
    capsys.readouterr()
    rc = cli.main(["verify", str(other), onnx_path, "--json"])
    out, err = capsys.readouterr()
    assert rc == 3, err
    divergence = json.loads(out)["divergence"]
    scope = changed[: -len("/weights")]
    assert divergence["node"].startswith(scope) and divergence["op"] == "Conv", (divergence, scope)
    assert f"first diverging node: Conv {divergence['node']}" in err


def test_an_export_of_bad_statistics_says_what_its_check_means(tmp_path):
    run = _run("to-onnx", BROKEN, "-o", tmp_path / "m.onnx", "--allow-bad-statistics")
    assert run.returncode == 0, run.stderr
    assert "of outputs up to" in run.stdout  # the error is relative to a scale that is printed
    assert "note: its BatchNorm statistics are never updated or invalid" in run.stdout


def test_a_refused_caffe_export_names_where_it_departs(monkeypatch, tmp_path, capsys):
    """Caffe's localisation reads OpenCV's blobs: a Relu6 written as plain ReLU is named as the first to diverge."""
    import json

    from ckptkit import cli

    from ckptkit.ir import registry

    relu6 = registry.get("Relu6")
    monkeypatch.setitem(relu6.writers, "caffe", lambda c, node, xs: c.layer(node.name, "ReLU", xs))
    rc = cli.main(["to-caffe", os.path.join(ROOT, "fixtures", "mobilenet_v2_tiny"), "-o", str(tmp_path / "m"),
                   "--caffe-runtime", "opencv", "--json", "--verify-data", _saturating(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 3, err
    divergence = json.loads(out)["divergence"]
    assert divergence["op"] == "Relu6" and divergence["where"] == "target", divergence
    assert not list(tmp_path.glob("m.*"))


def _saturating(tmp_path) -> str:
    """Inputs large enough that some ReLU6 saturates (its input passes 6)."""
    import numpy as np

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(-20, 20, (4, 32, 32, 3)).astype(np.float32))
    return str(path)
