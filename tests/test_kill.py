"""kill -9 at random points of every writing command, over an older output: the output is whole or absent,
the input unchanged, and the next run succeeds and leaves no staging folder behind.

Each kill lands in the command's work, not in TensorFlow's import before it (seconds in which nothing is
written): the child says on stderr when its import is over (the command's phase lines), and is killed a random
part of the way through the work the same command took in this process.

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


def _args(command, src, out, data):
    extra, target, _ = COMMANDS[command]
    return [command, src, "-o", os.path.join(out, target), *[a.replace("DATA", data) for a in extra]]


def _start_and_kill(args, err_path, work, fraction):
    """Start `ckptkit ARGS`; once its stderr shows a phase after TensorFlow's import, wait `fraction` of `work`
    seconds, then kill -9. Returns the seconds waited after the import."""
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ckptkit.cli", *args], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        lines = [line for line in open(err_path, errors="replace").read().split("\n") if "] " in line]
        if any("import TensorFlow" not in line for line in lines):
            break
        time.sleep(0.01)
    time.sleep(work * fraction)
    proc.kill()
    proc.wait()
    assert proc.returncode in (0, -9), open(err_path).read()
    return work * fraction


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
    done = run_cli(*_args(command, src, ref, str(data)))  # the clean run: in this process, TensorFlow loaded
    work = time.monotonic() - start
    assert done.returncode == 0, done.stderr

    out = str(tmp_path / "out")
    rng = np.random.default_rng(SEED + sum(map(ord, command)))
    states = []
    for run in range(RUNS):
        old = _place_old(kind, out, src)
        fraction = float(rng.uniform(0.0, 1.1))  # now and then after the end: the new output, whole
        waited = _start_and_kill(_args(command, src, out, str(data)), tmp_path / "stderr", work, fraction)
        label = f"{command}, kill {run} {waited:.2f} s into {work:.2f} s of work"
        states.append(_state(kind, out, ref, old, label))
        assert _digest(src) == before, f"{label}: the input changed"

    old = _place_old(kind, out, src)
    done = run_cli(*_args(command, src, out, str(data)))  # the rerun (nothing to kill)
    assert done.returncode == 0, done.stderr
    assert _state(kind, out, ref, old, f"{command} rerun") == "new"
    assert not [f for f in os.listdir(out) if f.startswith(".ckptkit-")], "staging folders left after a rerun"
    assert _digest(src) == before
    print(f"{command}: states after the kills: {states}")
