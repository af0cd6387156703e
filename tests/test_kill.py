"""kill -9 at random points of every writing command, over an older output: the output is whole or absent,
the input unchanged, and the next run succeeds and leaves no staging folder behind.

CKPTKIT_KILL_RUNS sets the kills per command (default 3), CKPTKIT_KILL_SEED the seed."""
import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from conftest import FIXTURE

RUNS = int(os.environ.get("CKPTKIT_KILL_RUNS", "3"))
SEED = int(os.environ.get("CKPTKIT_KILL_SEED", "0"))
COMMANDS = {  # name -> (arguments after CKPT, output given to -o, files a reader opens)
    "fold": ([], "model.ckpt", "checkpoint"),
    "recalibrate": (["--data", "DATA"], "model.ckpt", "checkpoint"),
    "to-onnx": ([], "model.onnx", "single"),
    "to-keras": ([], "model.keras", "keras"),
    "to-caffe": ([], "model.prototxt", "caffe"),
}


def _digest(folder):
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, n))}


def _argv(command, src, out, data):
    extra, target, _ = COMMANDS[command]
    return [sys.executable, "-m", "ckptkit.cli", "-q", command, src, "-o", os.path.join(out, target),
            *[a.replace("DATA", data) for a in extra]]


def _checkpoint_tensors(prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


OLD = {  # an older output the killed run replaces: arbitrary files whose digests say "old"
    "checkpoint": {"model.ckpt.index": "model.ckpt.index", "model.ckpt.data-00000-of-00001":
                   "model.ckpt.data-00000-of-00001"},  # the input's own files: a real, different checkpoint
    "caffe": {"model.prototxt": b"name: 'old'\n", "model.caffemodel": b"old weights"},
    "keras": {"model.keras": b"old keras"},
    "single": {"model.onnx": b"old onnx"},
}
KEY = {"checkpoint": "model.ckpt.index", "caffe": "model.prototxt", "keras": "model.keras", "single": "model.onnx"}


def _place_old(kind, out, src):
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if not f.startswith(".ckptkit-"):  # a killed run's staging folder stays for the next run to sweep
            os.remove(os.path.join(out, f))
    for name, content in OLD[kind].items():
        if isinstance(content, str):
            shutil.copy(os.path.join(src, content), os.path.join(out, name))
        else:
            with open(os.path.join(out, name), "wb") as f:
                f.write(content)
    return {n: _digest(out)[n] for n in OLD[kind]}


def _state(kind, out, ref, old, label):
    """'absent', 'old' or 'new'; fails on a mix of generations or a damaged file."""
    digest = _digest(out)
    if KEY[kind] not in digest:
        return "absent"
    if all(digest.get(n) == d for n, d in old.items()):
        return "old"
    assert digest[KEY[kind]] != old[KEY[kind]], f"{label}: the old key file beside new files"
    if kind == "checkpoint":
        got, want = _checkpoint_tensors(os.path.join(out, "model.ckpt")), _checkpoint_tensors(os.path.join(ref, "model.ckpt"))
        assert got.keys() == want.keys(), label
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{label}: {name}")
        sidecar = "model.ckpt.ckptkit.json"
        assert digest.get(sidecar) == _digest(ref).get(sidecar), f"{label}: {sidecar}"
    elif kind == "keras":
        with zipfile.ZipFile(os.path.join(out, "model.keras")) as z, \
                zipfile.ZipFile(os.path.join(ref, "model.keras")) as r:
            assert z.testzip() is None and sorted(z.namelist()) == sorted(r.namelist()), label
    else:
        for name in OLD[kind]:
            assert digest.get(name) == _digest(ref)[name], f"{label}: {name} differs from a clean run's"
    return "new"


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_kill_9_leaves_a_whole_output_or_none(command, tmp_path, run_cli):
    src = str(tmp_path / "in")
    shutil.copytree(os.path.dirname(FIXTURE), src)
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "x.npy", np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32))
    before = _digest(src)
    kind = COMMANDS[command][2]

    ref = str(tmp_path / "ref")
    start = time.monotonic()
    done = subprocess.run(_argv(command, src, ref, str(data)), capture_output=True, text=True)
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr

    out = str(tmp_path / "out")
    rng = np.random.default_rng(SEED + sum(map(ord, command)))
    states = []
    for run in range(RUNS):
        old = _place_old(kind, out, src)
        proc = subprocess.Popen(_argv(command, src, out, str(data)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        delay = took * float(rng.uniform(0.4, 1.0))
        time.sleep(delay)
        proc.kill()
        proc.wait()
        label = f"{command}, kill {run} after {delay:.2f} s of {took:.2f} s"
        states.append(_state(kind, out, ref, old, label))
        assert _digest(src) == before, f"{label}: the input changed"

    old = _place_old(kind, out, src)
    done = run_cli(*_argv(command, src, out, str(data))[3:])  # the rerun: in this process (nothing to kill)
    assert done.returncode == 0, done.stderr
    assert _state(kind, out, ref, old, f"{command} rerun") == "new"
    assert not [f for f in os.listdir(out) if f.startswith(".ckptkit-")], "staging folders left after a rerun"
    assert _digest(src) == before
    print(f"{command}: states after the kills: {states}")
