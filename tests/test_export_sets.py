"""Multi-format exports are one publication: all formats new or all old, never a mix, whether the run is
interrupted or another run writes into the same folder (two real processes each)."""
import glob
import os
import signal
import subprocess
import sys
import time

import onnx
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURE = os.path.join(ROOT, "fixtures", "mobilenet_v2_tiny", "model.ckpt")


def _export_argv(folder: str, size: int) -> list[str]:
    return [sys.executable, "-m", "ckptkit.cli", "export", FIXTURE, "--to", "onnx,keras,caffe", "-o", folder,
            "--builder", "ckptkit.testing:mobilenet_v2_net", "--input-shape", f"{size},{size},3"]


def _export(folder: str, size: int, wait: bool = True):
    proc = subprocess.Popen(_export_argv(folder, size), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=600)
        return proc.returncode, out, err
    return proc


def _sizes(folder: str) -> dict:
    """The input size each format in the folder was written for (None: the file is absent)."""
    out = {}
    names = {os.path.splitext(f)[0] for f in os.listdir(folder) if not f.startswith(".")}
    assert len(names) <= 1, names
    name = names.pop() if names else "absent"
    onnx_path = os.path.join(folder, name + ".onnx")
    out["onnx"] = onnx.load(onnx_path).graph.input[0].type.tensor_type.shape.dim[1].dim_value \
        if os.path.exists(onnx_path) else None
    proto = os.path.join(folder, name + ".prototxt")
    if os.path.exists(proto):
        text = open(proto).read()
        dims = [int(line.split(":")[1]) for line in text.splitlines() if line.strip().startswith("dim:")]
        out["caffe"] = dims[2]  # N, C, H, W
    else:
        out["caffe"] = None
    keras_path = os.path.join(folder, name + ".keras")
    out["keras"] = os.path.getmtime(keras_path) if os.path.exists(keras_path) else None
    return out


def _wait_for_stage(folder: str, pattern: str, proc, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = glob.glob(os.path.join(folder, ".ckptkit-*", pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the export ended before writing {pattern}: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail(f"no staged {pattern} after {timeout} s")


@pytest.mark.slow
def test_an_interrupted_export_replaces_nothing(tmp_path, run_cli):
    folder = str(tmp_path / "out")
    first = run_cli(*_export_argv(folder, 32)[3:])  # the older export: in this process (nothing to interrupt)
    assert first.returncode == 0, first.stderr
    old = _sizes(folder)
    assert old["onnx"] == old["caffe"] == 32
    proc = _export(folder, 40, wait=False)
    _wait_for_stage(folder, "*.keras", proc)  # ONNX written and verified, Keras on its way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: nothing was replaced" in err, err
    assert _sizes(folder) == old  # every format still the old one
    assert not glob.glob(os.path.join(folder, ".ckptkit-*"))


@pytest.mark.slow
def test_a_second_export_into_the_same_folder_is_refused_while_the_first_writes(tmp_path, run_cli):
    """The first export is a process of its own; the second runs in this one (another process all the same)."""
    folder = str(tmp_path / "out")
    first = _export(folder, 32, wait=False)
    _wait_for_stage(folder, "*.onnx", first)
    second = run_cli(*_export_argv(folder, 40)[3:])
    assert second.returncode == 2, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.startswith("ckptkit: error:")]
    assert len(lines) == 1 and "another ckptkit is writing into" in lines[0], second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    sizes = _sizes(folder)
    assert sizes["onnx"] == sizes["caffe"] == 32 and sizes["keras"] is not None
    third = run_cli(*_export_argv(folder, 40)[3:])  # once the first is done, the next replaces the whole set
    assert third.returncode == 0, third.stderr
    sizes = _sizes(folder)
    assert sizes["onnx"] == sizes["caffe"] == 40
