"""Byte-level damage to every input file: one error line or the very same output, never a traceback or a hang.

CKPTKIT_FUZZ_CASES sets the number of cases (default 100), CKPTKIT_FUZZ_SEED the seed."""
import hashlib
import os
import shutil
import signal

import numpy as np
import pytest

from ckptkit import cli
from conftest import FIXTURE

CASES = int(os.environ.get("CKPTKIT_FUZZ_CASES", "100"))
SEED = int(os.environ.get("CKPTKIT_FUZZ_SEED", "0"))
FILES = ["model.ckpt.index", "model.ckpt.data-00000-of-00001", "model.ckpt.meta", "checkpoint"]
# A .meta has no checksum: damage that leaves a valid graph differing in a value ckptkit uses (a flipped
# epsilon byte) would be a different model by right. No case of the suite's seeds does that, so every
# success must equal the clean output; another seed that hits such a byte reports it here.
SAME_OUTPUT = set(FILES)


def _digest(folder):
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, n))}


def _damage(path, rng):
    data = bytearray(open(path, "rb").read())
    how = rng.choice(["flip", "flips", "truncate", "zero"])
    if how == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    elif how == "zero":
        start = int(rng.integers(0, len(data)))
        end = min(len(data), start + int(rng.integers(1, 64)))
        data[start:end] = bytes(end - start)
    else:
        for _ in range(1 if how == "flip" else int(rng.integers(2, 9))):
            i = int(rng.integers(0, len(data)))
            data[i] ^= 1 << int(rng.integers(0, 8))
    with open(path, "wb") as f:
        f.write(bytes(data))
    return how


def _fold(src, out, capsys):
    def hang(*_):
        raise TimeoutError(f"fold {src} did not finish in 120 s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    try:
        rc = cli.main(["-q", "fold", src, "-o", out])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, capsys.readouterr().err


@pytest.mark.slow
def test_damaged_inputs_fail_in_one_line_or_give_the_same_output(tmp_path, capsys):
    clean_out = str(tmp_path / "clean" / "model.ckpt")
    rc, err = _fold(os.path.dirname(FIXTURE), clean_out, capsys)
    assert rc == 0, err
    assert os.path.exists(clean_out + ".meta")
    clean = _digest(os.path.dirname(clean_out))
    rng = np.random.default_rng(SEED)
    outcomes = {"error": 0, "same": 0}
    for case in range(CASES):
        src = tmp_path / f"in{case}"
        shutil.copytree(os.path.dirname(FIXTURE), src)
        target = FILES[case % len(FILES)]
        how = _damage(str(src / target), rng)
        before = _digest(str(src))
        out = tmp_path / f"out{case}" / "model.ckpt"
        rc, err = _fold(str(src), str(out), capsys)
        label = f"case {case}: {how} {target}"
        assert "Traceback" not in err, f"{label}\n{err}"
        assert _digest(str(src)) == before, f"{label}: the input was modified"
        if rc == 0:
            got = _digest(str(out.parent))
            if "model.ckpt.meta" not in got and "no graph written beside the folded checkpoint" in err:
                # a graph that imports but cannot run: the checkpoint is the same, its BN-free graph is
                # left out with a warning (the next command then needs --meta/--arch)
                got["model.ckpt.meta"] = clean["model.ckpt.meta"]
            if target in SAME_OUTPUT:
                assert got == clean, f"{label}: succeeded with a different output"
            outcomes["same"] += 1
        else:
            assert rc == 2, f"{label}: exit {rc}\n{err}"
            lines = err.strip().splitlines()
            assert lines and lines[-1].startswith("ckptkit: error: "), f"{label}\n{err}"
            assert not (out.parent.exists() and os.listdir(out.parent)), \
                f"{label}: an output was left after the error"
            outcomes["error"] += 1
        shutil.rmtree(src)
        shutil.rmtree(out.parent, ignore_errors=True)
    assert outcomes["error"] > 0
