"""Small frictions a new user met (issue 23, item 5), each checked where it happened."""
import json
import os
import subprocess
import sys

import onnx
import pytest

from ckptkit import testing as T

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURE = os.path.join(ROOT, "fixtures", "mobilenet_v2_tiny", "model.ckpt")
DIGITS = os.path.join(ROOT, "fixtures", "digits")


def _ckptkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ckptkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_import_from_the_folder_holding_the_clone(tmp_path):
    """A folder named ckptkit (the clone) in the current folder must not shadow the package."""
    os.symlink(ROOT, tmp_path / "ckptkit")
    got = subprocess.run([sys.executable, "-c", "import ckptkit, os; print(ckptkit.__file__); ckptkit.load"],
                         cwd=str(tmp_path), capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().endswith(os.path.join("ckptkit", "__init__.py"))


def test_the_onnx_input_keeps_the_graphs_input_name(tmp_path, run_cli, store):
    prefix = store("mobilenet_v2")  # saved as a training script saves it: the graph's input is `input`
    # rename nothing: the training graph's input is `input`; pass it as tf2onnx users spell it
    out = str(tmp_path / "m.onnx")
    run = run_cli("-q", "to-onnx", prefix, "--inputs", "input:0", "-o", out)
    assert run.returncode == 0, run.stderr
    assert onnx.load(out).graph.input[0].name == "input:0"


@pytest.mark.slow
def test_fold_and_export_carry_the_recorded_preprocessing(tmp_path, run_cli):
    recal, folded, out = (str(tmp_path / d / "model.ckpt") for d in ("recal", "folded", "onnx"))
    assert run_cli("-q", "recalibrate", os.path.join(DIGITS, "broken"), "--data", os.path.join(DIGITS, "calibration"),
                    "--preprocess", "none", "--mean", "127.5", "--std", "127.5", "--max-samples", "64",
                    "-o", recal).returncode == 0
    run = run_cli("-q", "fold", recal, "-o", folded)
    assert run.returncode == 0, run.stderr
    with open(recal + ".ckptkit.json") as a, open(folded + ".ckptkit.json") as b:
        assert json.load(a) == json.load(b)
    run = run_cli("-q", "to-onnx", folded, "-o", out + ".onnx")
    assert run.returncode == 0, run.stderr
    meta = {p.key: p.value for p in onnx.load(out + ".onnx").metadata_props}
    assert json.loads(meta["ckptkit.preprocessing"])["mean"] == [127.5]
    run = run_cli("-q", "to-caffe", folded, "-o", out)  # verified in every consumer with the comment header
    assert run.returncode == 0, run.stderr
    first = open(out + ".prototxt").readline()
    assert first.startswith("# ckptkit.preprocessing: ") and json.loads(first.split(": ", 1)[1])["mean"] == [127.5]


def test_an_export_result_prints_short(tmp_path):
    import ckptkit

    result = ckptkit.export(ckptkit.load(FIXTURE), "onnx", str(tmp_path / "m.onnx"))
    assert len(str(result)) < 400 and "m.onnx" in str(result)


def test_top_level_help_names_every_format():
    run = _ckptkit("--help")
    assert run.returncode == 0 and all(f in run.stdout for f in ("ONNX", "Keras", "Caffe"))


def test_tensorflows_own_decoder_errors_stay_off_stderr(tmp_path):
    import numpy as np
    from PIL import Image

    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype("uint8")).save(tmp_path / f"{i}.jpg")
    data = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "0.jpg").write_bytes(data[:-20])  # truncated: libjpeg complains in C++
    run = _ckptkit("-q", "diagnose", os.path.join(DIGITS, "broken"), "--data", str(tmp_path), "--preprocess", "unit")
    assert run.returncode in (0, 1), run.stderr
    assert "E0000" not in run.stderr and "Premature end" not in run.stderr, run.stderr
    assert f"skipping {tmp_path / '0.jpg'}" in run.stderr


def test_inspect_lists_the_output_of_a_net_fed_by_tf_data(tmp_path):
    """images and labels come from one IteratorGetNext: only the labels' consumers are training-only."""
    prefix = T.save_tf_data_net(str(tmp_path / "model.ckpt"), convs=1)
    run = _ckptkit("inspect", prefix, "--io")
    outputs = [line.split()[1] for line in run.stdout.splitlines() if line.strip().startswith("output ")]
    assert outputs == ["logits/BiasAdd:0"], run.stdout
