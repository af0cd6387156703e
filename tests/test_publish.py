"""Publication: every output set is whole or absent, crashes leave nothing that grows, full disks are one line."""
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from ckptkit.core import publish
from ckptkit.core.errors import CkptkitError
from conftest import FIXTURE


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _generation(folder, names):
    """{name: content} of the names present."""
    return {n: open(os.path.join(folder, n)).read() for n in names if os.path.exists(os.path.join(folder, n))}


def _publish_in_child(folder, names, die_after):
    """Fork a child that publishes a new set over the old one and dies (os._exit, like kill -9: no cleanup
    runs) after `die_after` file-system steps; returns its exit status."""
    pid = os.fork()
    if pid == 0:
        steps = [0]
        real_remove, real_replace = os.remove, os.replace

        def counted(fn):
            def step(*a):
                if steps[0] == die_after:
                    os._exit(9)
                steps[0] += 1
                return fn(*a)
            return step

        os.remove, os.replace = counted(real_remove), counted(real_replace)
        try:
            st = publish.Stage(folder).__enter__()
            staged = []
            for n in names:
                _write(st.path(n), "new")
                staged.append((st.path(n), os.path.join(folder, n)))
            st.publish(staged, replaces=[os.path.join(folder, "model.ckpt.data-00000-of-00002")])
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_a_crash_at_any_step_of_publication_never_shows_a_mix(tmp_path):
    """The key file (.index) present means every file beside it is of the same generation."""
    names = ["model.ckpt.index", "model.ckpt.data-00000-of-00001", "model.ckpt.ckptkit.json"]
    old = names + ["model.ckpt.data-00000-of-00002"]  # the old set had another shard count
    states = set()
    for die_after in range(12):
        folder = tmp_path / f"run{die_after}"
        folder.mkdir()
        for n in old:
            _write(folder / n, "old")
        _publish_in_child(str(folder), names, die_after)
        seen = _generation(str(folder), old)
        if names[0] in seen:
            generation = seen[names[0]]
            assert all(seen.get(n) == generation for n in names), (die_after, seen)
            if generation == "new":
                assert "model.ckpt.data-00000-of-00002" not in seen, "an old shard left beside the new index"
        states.add(seen.get(names[0], "absent"))
        stages = [p for p in os.listdir(folder) if p.startswith(publish.STAGE)]
        assert len(stages) <= 1
        publish.sweep(str(folder))  # what the next run does first: the dead child's staging folder goes
        assert not [p for p in os.listdir(folder) if p.startswith(publish.STAGE)]
    assert states == {"old", "absent", "new"}, "the crash points did not cover publication"


@pytest.mark.fast
def test_sweep_removes_only_staging_folders_of_dead_processes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = publish.socket.gethostname().replace("-", "_")
    mine = publish.make_stage(str(tmp_path))
    names = {
        "dead": f"{publish.STAGE}{host}-{dead.pid}.{publish._start_time(os.getpid())}-abc",
        "reused_pid": f"{publish.STAGE}{host}-{os.getpid()}.1-abc",  # our pid, another start time: dead
        "other_host": f"{publish.STAGE}elsewhere-{dead.pid}.5-abc",
    }
    for n in names.values():
        (tmp_path / n).mkdir()
        (tmp_path / n / "part").write_bytes(b"x" * 10)
    removed = {os.path.basename(p) for p in publish.sweep(str(tmp_path))}
    assert removed == {names["dead"], names["reused_pid"]}
    assert os.path.isdir(mine) and (tmp_path / names["other_host"]).is_dir()


def test_stage_removes_everything_on_error_and_without_publish(tmp_path):
    with pytest.raises(RuntimeError):
        with publish.Stage(str(tmp_path)) as st:
            _write(st.path("a.onnx"), "x")
            raise RuntimeError("boom")
    with publish.Stage(str(tmp_path)) as st:
        _write(st.path("a.onnx"), "x")
    assert os.listdir(tmp_path) == []


def test_disk_errors_become_one_line(tmp_path):
    with pytest.raises(CkptkitError, match="no space left writing the output"):
        with publish.Stage(str(tmp_path)):
            raise OSError(28, "No space left on device")
    assert os.listdir(tmp_path) == []


def _limited_file_size(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def _full_disk_run(command: list[str], out, limit: int):
    target = {"fold": "model.ckpt", "to-onnx": "model.onnx", "to-caffe": "model.prototxt"}.get(command[0], command[-1])
    args = command[:-1] if command[0] == "to-keras" else command
    return subprocess.run([sys.executable, "-m", "ckptkit.cli", args[0], FIXTURE, "-o", str(out / target), *args[1:]],
                          capture_output=True, text=True, preexec_fn=_limited_file_size(limit) if limit else None)


def _assert_one_line_and_nothing_left(run, out):
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ckptkit: error: no space left writing") and "nothing was written" in last, last
    assert not out.exists(), "the folder made for the output stays after a failure"


FULL_DISK_COMMANDS = [["fold"], ["to-onnx", "--no-verify"], ["to-caffe", "--no-verify"],
                      ["to-keras", "--no-verify", "model.keras"], ["to-keras", "--no-verify", "model.h5"]]


@pytest.mark.parametrize("command", FULL_DISK_COMMANDS, ids=lambda c: c[-1] if c[0] == "to-keras" else c[0])
def test_a_full_disk_is_one_line_and_leaves_nothing(command, tmp_path):
    """A file-size limit makes every write past 4 kB fail as a full disk would (EFBIG from the kernel): each
    export refuses before writing (its weights alone are past the limit), fold when its write fails."""
    out = tmp_path / "out"
    run = _full_disk_run(command, out, 4096)
    _assert_one_line_and_nothing_left(run, out)
    if command[0] != "fold":  # refused by the up-front check, which names the limit
        assert "file-size limit of 4 kB (ulimit -f)" in run.stderr, run.stderr


MID_WRITE = [["to-keras", "--no-verify", "model.h5"], ["to-keras", "--no-verify", "model.keras"],
             ["to-onnx", "--no-verify"]]


@pytest.mark.parametrize("command", MID_WRITE, ids=lambda c: c[-1] if c[0] == "to-keras" else c[0])
def test_a_disk_that_fills_mid_write_is_one_line(command, tmp_path, run_cli):
    """A limit at half the file's size: past the up-front check (the weights fit), failing while the file is
    written. HDF5 writing straight to such a file crashed the process (SIGSEGV, h5py issue #914); the .h5 is made
    in memory and written by Python, so this is one line too."""
    args = command[:-1] if command[0] == "to-keras" else command
    whole = run_cli(args[0], FIXTURE, "-o", tmp_path / "whole" / (command[-1] if command[0] == "to-keras" else
                                                                   "model.onnx"), *args[1:])  # no limit: in here
    assert whole.returncode == 0, whole.stderr
    name = command[-1] if command[0] == "to-keras" else "model.onnx"
    out = tmp_path / "out"
    _assert_one_line_and_nothing_left(_full_disk_run(command, out, os.path.getsize(tmp_path / "whole" / name) // 2),
                                      out)


@pytest.mark.fast
def test_space_is_checked_before_writing(tmp_path):
    total = shutil.disk_usage(tmp_path).total  # more than the file system holds, reserved blocks and all
    with pytest.raises(CkptkitError, match=r"no space left writing the x export in /shown: it needs about .* MB, .* "
                                           r"are free; .*nothing was written"):
        publish.check_space(str(tmp_path), total + 2**30, 1, "the x export", shown="/shown")
    publish.check_space(str(tmp_path), 1, 1, "the x export")  # fits: nothing raised


def _mount_read_only(path):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=32m", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a read-only file system needs CAP_SYS_ADMIN here")
    return path


@pytest.mark.parametrize("command", [["fold"], ["to-onnx"], ["recalibrate", "--data", "DATA"]])
def test_a_read_only_file_system_is_refused_before_any_work(command, tmp_path, run_cli):
    import numpy as np

    ro = _mount_read_only(tmp_path / "ro")
    try:
        (tmp_path / "data").mkdir()
        np.save(tmp_path / "data" / "x.npy", np.zeros((4, 32, 32, 3), np.float32))
        args = [a.replace("DATA", str(tmp_path / "data")) for a in command]
        target = "model.onnx" if command[0] == "to-onnx" else "model.ckpt"
        for dst in (ro / target, ro / "new" / target):
            run = run_cli(args[0], FIXTURE, "-o", dst, *args[1:])
            assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
            last = run.stderr.strip().splitlines()[-1]
            assert last.startswith("ckptkit: error: output folder") and "choose another -o" in last, last
    finally:
        subprocess.run(["umount", str(ro)])


def test_a_checkpoint_on_a_read_only_file_system_is_read(tmp_path, run_cli):
    """Only reading the input: a checkpoint on a read-only mount folds and exports."""
    import shutil

    ro = _mount_read_only(tmp_path / "ro")
    try:
        subprocess.run(["mount", "-o", "remount,rw", str(ro)], check=True)
        shutil.copytree(os.path.dirname(FIXTURE), ro / "in")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        for command, target in (("fold", "model.ckpt"), ("to-onnx", "model.onnx")):
            run = run_cli(command, ro / "in", "-o", tmp_path / "out" / target)
            assert run.returncode == 0, run.stderr
    finally:
        subprocess.run(["umount", str(ro)])


@pytest.mark.fast
def test_a_child_forked_while_a_lock_is_held_does_not_keep_it(tmp_path):
    """A library's helper forked from this process while an export held its folder's lock (OpenVINO's telemetry
    sender did, from a thread) may outlive the export: the next export into the folder must not be refused."""
    folder = str(tmp_path / "out")
    os.makedirs(folder)
    publish._lock(folder)
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child says it runs (fork's handlers are done), then lives on until EOF on the pipe
        os.close(w)
        os.write(ready_w, b"1")
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    try:
        publish._unlock(folder)
        publish._lock(folder)  # "another ckptkit is writing" while the child shared the first lock's file
        publish._unlock(folder)
    finally:
        os.close(w)
        os.waitpid(pid, 0)
