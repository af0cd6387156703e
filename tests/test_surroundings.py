"""Security II (issue #34): what travels beside a graph, and what other local users can touch, is data too.

Each test builds the attack the way it was reproduced -- a model folder holding its own `converters/`, a `.meta`
whose constants fold into gigabytes, a loop that never ends, a GIF whose second frame is huge, a record that is
a FIFO or a link to /dev/zero, a lock folder another user made, escape sequences in a checkpoint's name -- and
asserts one clear line (or a verified export), no sentinel file, bounded memory and time, and no raw control
byte on stdout/stderr. The bombs run in a child process that reports its own peak memory.
"""
import io
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from ckptkit import testing as T

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(ROOT, "fixtures", "mobilenet_v2_tiny")
DIGITS = os.path.join(ROOT, "fixtures", "digits")
# the peak is VmHWM, this process image's own high-water mark: ru_maxrss would carry over, through exec, the RSS
# of the forked pytest worker (several GB late in a run)
# (said by an exit handler: the command's own exit, cli.entry, runs them and skips TensorFlow's teardown)
CKPTKIT = [sys.executable, "-c", "import atexit, sys; from ckptkit.cli import entry; atexit.register(lambda: print("
           "'PEAK_KB', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0], "
           "file=sys.stderr)); entry()"]
CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n\t"] + ["\x7f", "\x9b"]


def _child(args, env=None, cwd=None, timeout=300):
    """(exit code, stdout, stderr, peak RSS in MB) of `ckptkit ARGS` in a child process."""
    done = subprocess.run(CKPTKIT + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), cwd=cwd)
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KB ")]
    assert peak, done.stderr  # the child ended through main(), not killed
    err = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("PEAK_KB "))
    return done.returncode, done.stdout, err, int(peak[0].split()[1]) / 1024


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ckptkit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _no_control(text: str) -> None:
    bad = sorted({repr(c) for c in text if c in CONTROL})
    assert not bad, f"raw control characters {bad} reached the terminal: {text[-300:]!r}"


# ---- 1. no code from the current folder ----------------------------------------------------------------------
def test_converters_is_not_a_top_level_package_of_the_installation(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import ckptkit.converters.onnx, importlib.util as u; "
                           "print(u.find_spec('converters'))"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None", f"`converters` installs as a top-level package: {done.stdout}"


@pytest.mark.slow
def test_a_folder_holding_converters_runs_none_of_its_code(tmp_path, run_cli):
    """A model repository with its own converters/ (and a PYTHONPATH pointing into it): to-caffe verified in MNN
    from inside it runs none of that code (`python -m converters.mnn_worker` ran it as the user)."""
    from ckptkit.converters.caffe_consumers import CONSUMERS

    if CONSUMERS["mnn"].version() is None:
        pytest.skip("MNN is not installed")
    repo = tmp_path / "repo"
    sentinel = tmp_path / "PWNED"
    (repo / "converters").mkdir(parents=True)
    payload = f"open({str(sentinel)!r}, 'w').write('ran')\n"
    for name in ("__init__.py", "mnn_worker.py"):
        (repo / "converters" / name).write_text(payload)
    (repo / "numpy.py").write_text(payload)  # what the worker imports first
    (repo / "MNN.py").write_text(payload)
    os.environ["PYTHONPATH"] = str(repo)
    try:
        got = run_cli("to-caffe", TINY, "-o", tmp_path / "out" / "m", "--caffe-runtime", "mnn", cwd=repo)
    finally:
        del os.environ["PYTHONPATH"]
    assert not sentinel.exists(), "code from the current folder ran during verification"
    assert got.returncode == 0, got.stderr
    assert "MNN" in got.stdout


# ---- 2. and 3. allocations a graph drives ----------------------------------------------------------------------
def _bomb_net(kind: str):
    def net_fn(inputs, is_training=False):
        from ckptkit.core.lazy_tf import tf, tf1
        from ckptkit.core.compat import slim

        s, _tf = slim(), tf()
        net = s.conv2d(inputs, 8, 3, scope="conv1", normalizer_fn=s.batch_norm,
                       normalizer_params=dict(is_training=is_training))
        net = _tf.reduce_mean(net, [1, 2])
        if kind == "split":  # Add(net, split(split(split(fill([8, 8]))))): rows patched to 2**28 below
            fill = _tf.fill(_tf.stack([_tf.constant(8, name="rows") * 1, 8]), 1.0, name="bigfill")
            part = _tf.split(_tf.split(_tf.split(fill, 2)[0], 2)[0], 2)[0]
            net = net + part
        elif kind == "range":  # a reshape whose shape TensorFlow's import-time inference folds from Range(0, N)
            r = _tf.range(0, _tf.constant(8, name="rows"), name="rng")
            net = _tf.reshape(net, _tf.stack([-1, _tf.reduce_sum(r) * 0 + 8]))
        elif kind == "cond_fill":  # a Fill of static shape inside a tf.cond branch (a function body)
            def big():
                with _tf.control_dependencies([_tf.reduce_max(_tf.fill([8, 8], 0.0, name="bigfill"))]):
                    return _tf.identity(net)
            net = _tf.cond(is_training, lambda: _tf.identity(net), big)
        elif kind == "endless":  # a while loop that never ends, on a control edge of the logits
            loop = _tf.while_loop(lambda i: i >= 0, lambda i: i + 1, [_tf.constant(0)])[0]
            with _tf.control_dependencies([loop]):
                net = _tf.identity(net)
        elif kind == "batch_fill":  # a fill sized by the batch at run time: 2 GiB per sample
            n = _tf.shape(inputs)[0] * (1 << 19)
            with _tf.control_dependencies([_tf.reduce_sum(_tf.fill(_tf.stack([n, 1024]), 1.0))]):
                net = _tf.identity(net)
        return s.fully_connected(net, 10, activation_fn=None, scope="logits")

    return net_fn


def _patched(prefix: str, rows: int) -> None:
    """Rewrite the `rows` constant of the saved .meta (the attacker's edit of a 159 kB file)."""
    from tensorflow.core.protobuf import meta_graph_pb2

    mgd = meta_graph_pb2.MetaGraphDef()
    with open(prefix + ".meta", "rb") as f:
        mgd.ParseFromString(f.read())
    bodies = [mgd.graph_def.node] + [fn.node_def for fn in mgd.graph_def.library.function]
    hits = 0
    for body in bodies:
        for node in body:
            if node.name.startswith("rows") and node.op == "Const":
                node.attr["value"].tensor.int_val[:] = [rows]
                hits += 1
            if node.name.startswith("bigfill") and node.op == "Const":  # the cond's static fill dims
                node.attr["value"].tensor.int_val[:] = [rows, 1 << 12]
                node.attr["value"].tensor.tensor_content = b""
                hits += 1
    assert hits, "nothing to patch"
    with open(prefix + ".meta", "wb") as f:
        f.write(mgd.SerializeToString())


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bombs")
    made = {}

    def make(kind: str, rows: int = 0):
        if kind not in made:
            prefix = T.save_model(_bomb_net(kind), (8, 8, 3), str(root / kind / "model.ckpt"))
            if rows:
                _patched(prefix, rows)
            made[kind] = prefix
        return made[kind]

    return make


@pytest.mark.slow
@pytest.mark.parametrize("kind,rows,command", [
    ("split", 1 << 28, "fold"), ("split", 1 << 28, "diagnose"), ("range", 1 << 30, "fold"),
    ("range", 1 << 30, "inspect"), ("cond_fill", 1 << 19, "to-onnx")])
def test_constant_bombs_are_refused_before_anything_is_made(bombs, kind, rows, command, tmp_path):
    prefix = bombs(kind, rows)
    args = {"fold": ["fold", prefix, "-o", tmp_path / "f" / "model.ckpt", "--allow-bad-statistics"],
            "diagnose": ["diagnose", prefix, "--data", os.path.join(DIGITS, "calibration"), "--preprocess", "unit"],
            "inspect": ["inspect", prefix, "--io"],
            "to-onnx": ["to-onnx", prefix, "-o", tmp_path / "m.onnx", "--allow-bad-statistics"]}[command]
    code, out, err, peak = _child(args)
    line = _one_error(err)
    assert code == 2 and "bound" in line, err
    assert peak < 2000, f"{command} peaked at {peak:.0f} MB on the {kind} bomb"
    assert not any(os.scandir(tmp_path))


@pytest.mark.slow
def test_an_endless_loop_is_stopped_by_the_run_time_limit(bombs, tmp_path):
    prefix = bombs("endless")
    code, out, err, _ = _child(["to-onnx", prefix, "-o", tmp_path / "m.onnx", "--allow-bad-statistics"],
                               env={"CKPTKIT_RUN_SECONDS": "3"}, timeout=240)
    line = _one_error(err)
    assert code == 2 and "did not finish one run within 3 s" in line and "while" in line, line
    assert not any(os.scandir(tmp_path))


def test_a_fill_sized_at_run_time_stops_at_the_memory_budget(monkeypatch):
    """A Fill whose size comes from the batch at run time (2 GiB a sample) on the output's data path: the gated
    run stops at its RLIMIT_DATA budget in one line; the process never holds the fill."""
    import resource

    from ckptkit.run import gateway
    from ckptkit.core.lazy_tf import tf, tf1
    from ckptkit.core.errors import CkptkitError

    _tf = tf()
    g = _tf.Graph()
    with g.as_default():
        x = tf1.placeholder(_tf.float32, [None, 4], name="input")
        big = _tf.fill(_tf.stack([_tf.shape(x)[0] * (1 << 19), 1024]), 1.0, name="batch_fill")
        tf1.identity(x + _tf.reduce_sum(big) * 0, name="out")
    monkeypatch.setattr(gateway, "RUN_MEMORY", 1 << 30)
    run = gateway.GatedRun(g, "input:0", "out:0", None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CkptkitError, match=r"run-time budget of 1.0 GiB: op batch_fill \(Fill\)"):
        run(np.ones((4, 4), np.float32))
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grew < 1500, f"the run grew the process by {grew:.0f} MB"


# ---- 4. images bounded on every frame --------------------------------------------------------------------------
def gif_bomb(path: str, side: int = 20000) -> None:
    """A two-frame GIF: the first 8x8, the second declaring side x side (the descriptor patched)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (8, 8), 1).save(buf, "GIF", save_all=True, append_images=[Image.new("P", (8, 8), 2)],
                                   duration=10, optimize=False)
    data = bytearray(buf.getvalue())
    last = [i for i in range(13, len(data) - 9) if data[i] == 0x2C and data[i - 1] == 0x00][-1]
    data[last + 5:last + 9] = struct.pack("<HH", side, side)
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_every_frame_of_an_image_is_bounded(tmp_path):
    from ckptkit.read.data import _usable_images, encoded_image_ok

    gif_bomb(str(tmp_path / "bomb.gif"))
    shutil.copy(os.path.join(DIGITS, "calibration", sorted(os.listdir(os.path.join(DIGITS, "calibration")))[0]),
                tmp_path / "fine.png")
    good, bad = _usable_images([str(tmp_path / "bomb.gif"), str(tmp_path / "fine.png")])
    assert good == [str(tmp_path / "fine.png")] and bad == [(str(tmp_path / "bomb.gif"), "too many pixels")]
    assert not encoded_image_ok((tmp_path / "bomb.gif").read_bytes())  # a TFRecord's image bytes
    assert encoded_image_ok((tmp_path / "fine.png").read_bytes())


@pytest.mark.slow
def test_diagnose_skips_a_gif_bomb_in_memory(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(DIGITS, "calibration"), data)
    gif_bomb(str(data / "bomb.gif"))
    code, out, err, peak = _child(["diagnose", os.path.join(DIGITS, "broken"), "--data", data, "--preprocess", "unit"])
    assert code in (0, 1) and "bomb.gif" in err and "pixels" in err, err
    assert peak < 2000, f"diagnose peaked at {peak:.0f} MB"


# ---- 5. files beside a checkpoint are checked before reading ---------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
@pytest.mark.parametrize("command", ["fold", "to-onnx"])
def test_a_record_that_is_not_a_regular_file_is_one_line(kind, command, tmp_path, run_cli):
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    record = model / "model.ckpt.ckptkit.json"
    if kind == "fifo":
        os.mkfifo(record)
    else:
        os.symlink("/dev/zero", record)
    out = tmp_path / "out"
    args = {"fold": ["fold", model, "-o", out / "model.ckpt"], "to-onnx": ["to-onnx", model, "-o", out / "m.onnx"]}
    got = run_cli(*args[command])
    line = _one_error(got.stderr)
    assert got.returncode == 2 and "record" in line and "not a regular file" in line, line
    assert not out.exists()


def test_bounded_reads_refuse_what_is_not_a_small_regular_file(tmp_path):
    from ckptkit.core.errors import CkptkitError
    from ckptkit.core.safe_io import read_bounded, read_optional

    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    assert read_bounded(str(big), "record", 4096) == b"x" * 2048
    with pytest.raises(CkptkitError, match="2048 bytes, over the 1024"):
        read_bounded(str(big), "record", 1024)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(CkptkitError, match="a FIFO"):
        read_bounded(str(tmp_path / "fifo"), "record", 1024)
    with pytest.raises(CkptkitError, match="character device"):
        read_bounded("/dev/zero", "record", 1024)
    assert read_optional(str(tmp_path / "absent"), "record") is None


# ---- 6. private lock and cache folders ------------------------------------------------------------------------
@pytest.fixture
def own_tmpdir(tmp_path, monkeypatch):
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    yield folder
    tempfile.tempdir = None


def test_a_lock_folder_made_by_another_user_is_refused(own_tmpdir, tmp_path, run_cli):
    locks = own_tmpdir / f"ckptkit-locks-{os.geteuid()}"
    locks.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(locks, 4242, 4242)
    else:
        os.chmod(locks, 0o777)
    got = run_cli("fold", TINY, "-o", tmp_path / "out" / "model.ckpt")
    line = _one_error(got.stderr)
    assert got.returncode == 2 and "lock folder" in line and "private folder of yours" in line, line
    assert not (tmp_path / "out").exists()


def test_a_symlink_planted_in_the_lock_folder_is_not_followed(own_tmpdir, tmp_path, run_cli):
    from ckptkit.core import publish

    target = tmp_path / "victim"
    out = tmp_path / "out"
    lock = publish._lock_path(os.path.realpath(out))
    os.symlink(target, lock)
    got = run_cli("fold", TINY, "-o", out / "model.ckpt")
    assert not target.exists(), "the lock followed a planted symlink"
    line = _one_error(got.stderr)
    assert got.returncode == 2 and "symbolic link" in line, line


def test_private_dir_checks_owner_mode_link_and_parents(tmp_path):
    from ckptkit.core.errors import CkptkitError
    from ckptkit.core.safe_io import private_dir

    made = private_dir(str(tmp_path / "mine"), "cache folder")
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    os.chmod(made, 0o755)
    with pytest.raises(CkptkitError, match="mode 755"):
        private_dir(made, "cache folder")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(CkptkitError, match="symbolic link"):
        private_dir(str(tmp_path / "link"), "cache folder")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # world-writable, not sticky: anyone could swap the folder inside
    with pytest.raises(CkptkitError, match="another user may write"):
        private_dir(str(shared / "cache"), "cache folder")


# ---- 7. nothing printed carries a control character ------------------------------------------------------------
NASTY = "m\x1b]0;title\x07\x1b[2K\rfix: touch PWNED\x1b[31m"


def test_names_with_escape_sequences_print_escaped(tmp_path, run_cli):
    model = tmp_path / NASTY
    shutil.copytree(os.path.join(DIGITS, "broken"), model)
    got = run_cli("inspect", model)
    assert got.returncode == 1, got.stderr
    _no_control(got.stdout + got.stderr)
    assert "\\x1b]0;title\\x07" in got.stdout
    got = run_cli("diagnose", model, "--data", os.path.join(DIGITS, "calibration"), "--preprocess", "unit", "-q")
    _no_control(got.stdout + got.stderr)
    fix = [line for line in got.stdout.splitlines() if line.startswith("fix:")]
    assert fix, got.stdout
    # the printed command, pasted into a shell, names the real folder
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {fix[0][len('fix: '):]}"], capture_output=True).stdout
    assert str(model).encode() in words.split(b"\n"), words
    got = run_cli("inspect", tmp_path / "missing\x1b[2J")
    _no_control(got.stderr)
    assert "\\x1b[2J" in got.stderr


def test_json_keeps_exact_values(tmp_path, run_cli):
    import json

    model = tmp_path / NASTY
    shutil.copytree(os.path.join(DIGITS, "broken"), model)
    got = run_cli("inspect", model, "--json")
    _no_control(got.stdout)
    assert json.loads(got.stdout)["checkpoint"].startswith(str(model))


def test_shell_words_round_trip_through_bash():
    from ckptkit.core.safe_io import shell_word

    for word in ["plain", "it's", NASTY, "tab\there", "new\nline", "\u202eevil", "back\\slash'\x1b"]:
        quoted = shell_word(word)
        _no_control(quoted)
        got = subprocess.run(["bash", "-c", f"printf '%s' {quoted}"], capture_output=True).stdout
        assert got == word.encode(), (word, quoted, got)
