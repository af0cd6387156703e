"""Recalibration across worker processes (tf.distribute.MultiWorkerMirroredStrategy via TF_CONFIG) on the
loopback address gives the statistics one process gives; only the chief writes. Each run is bounded: the
collective times out and the processes are killed if the cluster does not finish."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ckptkit.read.checkpoint import Checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKEN = os.path.join(ROOT, "fixtures", "digits", "broken")
IMAGES = os.path.join(ROOT, "fixtures", "digits", "calibration")
LIMIT = 240  # seconds for a whole cluster run

pytestmark = pytest.mark.slow  # every case starts worker processes



def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _recalibrate(args: list[str], env: dict | None = None, timeout: float = LIMIT) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ckptkit.cli", "recalibrate", BROKEN, *args, "-q"],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=LIMIT)
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the cluster did not finish within {LIMIT} s")
    return results


def _cluster(tmp_path, workers: int, data: list[str], chief: bool = False) -> list[tuple[int, str, str]]:
    """`workers` processes (plus a chief if asked), each writing to its own -o: only rank 0 may write."""
    ports = _ports(workers + chief)
    spec = {"worker": [f"localhost:{p}" for p in ports[chief:]]}
    if chief:
        spec["chief"] = [f"localhost:{ports[0]}"]
    tasks = ([("chief", 0)] if chief else []) + [("worker", i) for i in range(workers)]
    procs = [_recalibrate([*data, "-o", str(tmp_path / f"{kind}{i}" / "model.ckpt")],
                          {"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": kind, "index": i}}),
                           "CKPTKIT_COLLECTIVE_TIMEOUT": "120"})
             for kind, i in tasks]
    return _finish(procs)


def _statistics(prefix: str) -> dict[str, np.ndarray]:
    ckpt = Checkpoint(prefix)
    return {n: ckpt.get(n) for n in ckpt.names if "moving_" in n}


def _single(run_cli, tmp_path, data: list[str]) -> dict[str, np.ndarray]:
    """The same recalibration in one process (this one: no cluster, nothing process-wide to keep apart)."""
    run = run_cli("recalibrate", BROKEN, *data, "-q", "-o", tmp_path / "single" / "model.ckpt")
    assert run.returncode == 0, run.stderr
    return _statistics(str(tmp_path / "single" / "model.ckpt"))


def _same(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=rtol, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("mode", ["precise", "sequential"])
def test_two_workers_give_one_process_statistics(tmp_path, mode, run_cli):
    data = ["--data", IMAGES, "--preprocess", "unit", "--mode", mode, "--batch-size", "24"]
    expected = _single(run_cli, tmp_path, data)
    (code0, out0, err0), (code1, out1, err1) = _cluster(tmp_path, 2, data)
    assert code0 == 0 and code1 == 0, err0 + err1
    # the workers deal out whole batches of the one-process order: each batch's moments are the same
    # float32 numbers, merged in another order in float64
    _same(expected, _statistics(str(tmp_path / "worker0" / "model.ckpt")), rtol=1e-6)
    assert not (tmp_path / "worker1").exists(), "a non-chief worker wrote"
    assert "wrote nothing" in out1 and "500 samples" in out0 and "500 samples" in out1
    # 500 samples = 20 batches of 24 and one of 20: rank 0 gets batches 0, 2, ..., 20
    assert "used 260 of 260 image files" in out0 and "used 240 of 240 image files" in out1


def test_chief_and_workers_with_arrays(tmp_path, run_cli):
    """A `chief` task writes; three processes; .npy samples, one holding NaN: its worker skips it, which
    shifts the batches after it, so this runs in sequential mode (each BN measured on the fixed statistics
    of those above it: independent of how samples are batched)."""
    rng = np.random.default_rng(3)
    x = rng.random((70, 8, 8, 1), dtype=np.float32)  # the digits net takes 8x8x1
    x[5, 3, 3, 0] = np.nan
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "a.npy", x[:50])
    np.save(folder / "b.npy", x[50:])
    data = ["--data", str(folder), "--batch-size", "8", "--mode", "sequential"]
    expected = _single(run_cli, tmp_path, data)
    results = _cluster(tmp_path, 2, data, chief=True)
    assert all(code == 0 for code, _, _ in results), "".join(err for _, _, err in results)
    _same(expected, _statistics(str(tmp_path / "chief0" / "model.ckpt")), rtol=1e-6)
    assert not (tmp_path / "worker0").exists() and not (tmp_path / "worker1").exists()
    assert all("69 samples" in out for _, out, _ in results)


def test_more_workers_than_batches(tmp_path, run_cli):
    """A worker with an empty shard still joins the merge; the result is the one process's."""
    data = ["--data", IMAGES, "--preprocess", "unit", "--max-samples", "20", "--batch-size", "16"]
    expected = _single(run_cli, tmp_path, data)
    results = _cluster(tmp_path, 3, data)
    assert all(code == 0 for code, _, _ in results), "".join(err for _, _, err in results)
    assert "shard of --data" in results[2][2] and "is empty" in results[2][2]
    _same(expected, _statistics(str(tmp_path / "worker0" / "model.ckpt")), rtol=1e-6)


@pytest.mark.parametrize("config, message", [
    ("{not json", "TF_CONFIG is not a cluster description"),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 5}}',
     "task worker 5 is not in its cluster"),
    ('{"cluster": {"worker": ["localhost:1"], "ps": ["localhost:2"]}, "task": {"type": "worker", "index": 0}}',
     "lists ps tasks"),
])
@pytest.mark.fast
def test_bad_tf_config_is_one_line(tmp_path, config, message):
    (code, out, err), = _finish([_recalibrate(["--data", IMAGES, "--preprocess", "unit", "-o",
                                               str(tmp_path / "o" / "model.ckpt")], {"TF_CONFIG": config})])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
