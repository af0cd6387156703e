"""The command line: thin commands, one-line errors, non-zero exits, no tracebacks."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FIXTURE


def process(*args, cwd=None):
    """`ckptkit ARGS` as its own process: for what only a process shows (what it imports, its start-up lines)."""
    return subprocess.run([sys.executable, "-m", "ckptkit.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def ckptkit(run_cli):
    return run_cli


def test_help_lists_every_command():
    out = process("--help")
    assert out.returncode == 0
    for cmd in ("inspect", "fold", "to-onnx", "to-keras"):
        assert cmd in out.stdout


def test_help_does_not_import_tensorflow():
    code = "import sys; from ckptkit.cli import build_parser; build_parser(); print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_command_imports_keras_without_scikit_learn(tmp_path):
    """`ckptkit to-keras` in its own process: keras without its scikit-learn wrappers and image gallery (1.6 s),
    the model written and verified all the same; a user's process that imports ckptkit gets keras whole."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckptkit.cli", "-q", "to-keras", FIXTURE, "-o",
                          str(tmp_path / "m.keras")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    # a refused import is listed too (microseconds): what it would have loaded is not
    assert "keras" in imported and not {"sklearn.base", "matplotlib.figure"} & imported
    assert "verified against TensorFlow in keras" in run.stdout and (tmp_path / "m.keras").is_file()
    from ckptkit.core import lazy_tf

    assert lazy_tf.OWN_PROCESS is False  # this test process is a user's: nothing refused here


@pytest.mark.fast
def test_tensorflow_start_up_chatter_stays_off_stderr():
    """The checkpoint is read without TensorFlow; the .meta beside it still imports TensorFlow, whose C++
    start-up lines (oneDNN, CUDA, absl) must not reach the user."""
    out = process("inspect", FIXTURE)
    assert out.returncode in (0, 1), out.stderr
    assert "BatchNorm" in out.stdout
    for noise in ("oneDNN", "cuda", "absl", "cpu_feature_guard"):
        assert noise not in out.stderr, out.stderr


@pytest.mark.parametrize("args, message", [
    (["inspect", "/nonexistent/model.ckpt"], "no checkpoint at /nonexistent/model.ckpt"),
    (["fold", FIXTURE, "-o", FIXTURE], "is the input checkpoint"),
    (["to-onnx", FIXTURE, "--arch", "resnet_v9", "-o", "x.onnx"], "unknown --arch resnet_v9"),
    (["to-onnx", FIXTURE, "--output", "nope", "-o", "x.onnx"], "--outputs nope:0 is not in the graph"),
    (["to-onnx", FIXTURE, "--output", "logits", "-o", "x.onnx"], "did you mean logits_1?"),
    (["to-onnx", FIXTURE, "--input-shape", "32x32", "-o", "x.onnx"], "--input-shape 32x32 is not H,W,C"),
])
def test_errors_are_one_line(args, message, tmp_path, ckptkit):
    out = ckptkit(*args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("ckptkit: error: ") and message in lines[-1]
    assert "Traceback" not in out.stderr
    assert not any(p.endswith(".onnx") for p in os.listdir(tmp_path))


def test_fold_then_export_end_to_end(tmp_path, ckptkit):
    out = ckptkit("fold", FIXTURE, "-o", str(tmp_path / "folded.ckpt"))
    assert out.returncode == 0, out.stderr
    assert "folded 13 BatchNorm unit(s) (epsilon from graph" in out.stdout
    out = ckptkit("to-onnx", FIXTURE, "-o", str(tmp_path / "m.onnx"))
    assert out.returncode == 0, out.stderr
    assert "verified against TensorFlow" in out.stdout and ": ok" in out.stdout


def test_outputs_that_are_input_files_are_refused_through_symlinks(tmp_path, ckptkit):
    """Compared by file identity: a symlinked folder, the .meta, the state file, never overwritten."""
    import filecmp
    import shutil

    shutil.copytree(os.path.dirname(FIXTURE), tmp_path / "self")
    os.symlink("self", tmp_path / "lnk")
    before = {p: (tmp_path / "self" / p).read_bytes() for p in os.listdir(tmp_path / "self")}
    for args in (["fold", "self/model.ckpt", "-o", "lnk/model.ckpt"],
                 ["to-onnx", "self/model.ckpt", "-o", "lnk/model.ckpt.index"],
                 ["to-onnx", "lnk/model.ckpt", "-o", "self/model.ckpt.meta"],
                 ["to-keras", "self/model.ckpt", "-o", "lnk/checkpoint"]):
        out = ckptkit(*args, cwd=tmp_path)
        assert out.returncode == 2 and "input" in out.stderr.strip().splitlines()[-1], (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert {p: (tmp_path / "self" / p).read_bytes() for p in os.listdir(tmp_path / "self")} == before
    assert not filecmp.dircmp(tmp_path / "self", os.path.dirname(FIXTURE)).diff_files


def test_usage_errors_are_one_line_and_flags_work_after_the_command(tmp_path, ckptkit):
    out = ckptkit("fold", FIXTURE, "--no-such-flag")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("ckptkit: error: ")
    out = ckptkit("inspect", FIXTURE, "-q")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("args, message", [
    (["to-onnx", FIXTURE, "--input-shape", "0,0,3", "-o", "x.onnx"], "size below 1"),
    (["to-onnx", FIXTURE, "--input-shape", "33,33,4", "-o", "x.onnx"], "4 channel(s)"),
    (["to-onnx", FIXTURE, "--arch", "resnet_v1_50", "--arch-arg", "nosuchkw=1", "-o", "x.onnx"], "nosuchkw"),
    (["to-onnx", FIXTURE, "--arch", "resnet_v1_50", "--arch-arg", "output_stride=7", "-o", "x.onnx"],
     "output_stride=7"),
    (["to-onnx", FIXTURE, "--opset", "99", "-o", "x.onnx"], "--opset 99"),
    (["to-onnx", FIXTURE, "-o", "folder/"], "is a folder"),
])
def test_bad_values_are_one_line(args, message, tmp_path, ckptkit):
    out = ckptkit(*args, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ckptkit: error: ") and message in last, last
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("state", [b"", b"\xff\xfe not utf-8", b'model_checkpoint_path: "/moved/elsewhere/model.ckpt"\n'])
def test_folder_with_a_broken_state_file_opens_its_single_checkpoint(tmp_path, state, ckptkit):
    import shutil

    shutil.copytree(os.path.dirname(FIXTURE), tmp_path / "glob[1]")  # glob characters in the path too
    (tmp_path / "glob[1]" / "checkpoint").write_bytes(state)
    out = ckptkit("inspect", str(tmp_path / "glob[1]"))
    assert out.returncode == 0 and "13 BatchNorm unit(s)" in out.stdout, out.stderr


def test_outputs_go_into_new_folders(tmp_path, ckptkit):
    out = ckptkit("fold", FIXTURE, "-o", str(tmp_path / "new" / "deeper" / "f.ckpt"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "new" / "deeper" / "f.ckpt.index").exists()
    out = ckptkit("to-caffe", FIXTURE, "-o", str(tmp_path / "caffe") + "/", "--no-verify")
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path / "caffe")) == ["mobilenet_v2_tiny.caffemodel", "mobilenet_v2_tiny.prototxt"]


@pytest.mark.parametrize("args, message", [
    (["to-onnx", FIXTURE, "--tolerance", "nan"], "--tolerance nan is not a positive finite number"),
    (["to-onnx", FIXTURE, "--tolerance", "-1"], "--tolerance -1.0 is not a positive finite number"),
    (["to-onnx", FIXTURE, "--tolerance", "inf"], "--tolerance inf is not a positive finite number"),
    (["to-onnx", FIXTURE, "--tolerance", "0.5"], "--tolerance 0.5 would accept a wrong model"),
    (["to-onnx", FIXTURE, "--verify-data", "nope.npy"], "--verify-data nope.npy does not exist"),
    (["fold", FIXTURE, "--eps", "nan"], "--eps nan is not a positive finite number"),
    (["recalibrate", FIXTURE, "--data", ".", "--top", "-1"], "--top -1 is too small"),
    (["recalibrate", FIXTURE, "--data", ".", "--batch-size", "1"], "--batch-size 1 is too small"),
    (["recalibrate", FIXTURE, "--data", ".", "--mode", "fast"], "--mode: invalid choice: 'fast'"),
    (["recalibrate", FIXTURE, "--data", ".", "--device", ","], "--device ',' names no device"),
])
@pytest.mark.fast
def test_option_values_are_checked_before_any_work(args, message, tmp_path, ckptkit):
    out = ckptkit(*args, "-o", str(tmp_path / "out" / "model.x"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ckptkit: error: ") and message in last, last
    assert "Traceback" not in out.stderr and not (tmp_path / "out").exists()


def test_export_to_several_formats_runs_tensorflow_once(tmp_path, ckptkit):
    from ckptkit.commands.export import export_many
    from ckptkit.topology.sources import load

    model = load(FIXTURE)
    runs = []
    make = model.reference._make

    def counting():
        fn = make()
        return lambda x: runs.append(len(x)) or fn(x)

    model.reference._make = counting
    results = export_many(model, ["onnx", "keras", "caffe"], str(tmp_path / "out"))
    assert all(r.comparison.ok for r in results) and len(runs) == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["mobilenet_v2_tiny.caffemodel", "mobilenet_v2_tiny.keras",
                                                    "mobilenet_v2_tiny.onnx", "mobilenet_v2_tiny.prototxt"]
    out = ckptkit("export", FIXTURE, "--to", "onnx,caffe", "-o", str(tmp_path / "cli"))
    assert out.returncode == 0, out.stderr
    from ckptkit.converters.caffe_consumers import CONSUMERS

    consumers = [c.label for c in CONSUMERS.values() if c.version() is not None]  # Caffe: each one by name
    import importlib.util

    onnx_runtimes = 1 + (importlib.util.find_spec("openvino") is not None)  # onnxruntime, and OpenVINO
    assert out.stdout.count("verified against TensorFlow in ") == onnx_runtimes + len(consumers)
    assert all(f"caffe verified against TensorFlow in {label} " in out.stdout for label in consumers)
    out = ckptkit("export", FIXTURE, "--to", "onnx,pdf", "-o", str(tmp_path / "bad"))
    assert out.returncode == 2 and "--to onnx,pdf names no known format" in out.stderr


DIGITS = os.path.join(os.path.dirname(FIXTURE), "..", "digits")


@pytest.mark.parametrize("args, code, keys", [
    (["inspect", FIXTURE], 0, {"format_version", "batchnorm", "issues"}),
    (["inspect", os.path.join(DIGITS, "broken")], 1, {"format_version", "batchnorm", "issues"}),
    (["fold", FIXTURE, "-o", "OUT/f.ckpt"], 0, {"format_version", "folded", "files"}),
    (["to-onnx", FIXTURE, "-o", "OUT/m.onnx"], 0, {"format_version", "files", "verification"}),
    (["to-caffe", FIXTURE, "-o", "OUT/m"], 0, {"format_version", "files", "verification"}),
    (["export", FIXTURE, "--to", "onnx,keras", "-o", "OUT"], 0, {"format_version", "exports"}),
    (["recalibrate", os.path.join(DIGITS, "broken"), "--data", os.path.join(DIGITS, "calibration"), "--preprocess",
      "unit", "-o", "OUT/r.ckpt"], 0, {"format_version", "checkpoint", "data", "samples", "preprocessing", "layers"}),
    (["diagnose", os.path.join(DIGITS, "broken"), "--data", os.path.join(DIGITS, "calibration"), "--preprocess",
      "unit"], 1, {"format_version", "verdict", "command", "layers"}),
])
def test_json_is_one_document_on_stdout(args, code, keys, tmp_path, ckptkit):
    out = ckptkit(*[a.replace("OUT", str(tmp_path)) for a in args], "--json")
    assert out.returncode == code, out.stderr
    doc = json.loads(out.stdout)  # fails on anything else printed there
    assert keys <= set(doc), sorted(doc)
