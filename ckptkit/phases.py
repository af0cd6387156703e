"""Where a command's time goes: named phases, timed when CKPTKIT_PHASES is set (bench/run.py sets it).

`with phase("import to IR"): ...` adds the block's wall time to that phase (nested phases are counted
in their own line and subtracted from the enclosing one, so the lines add up to the total). At exit
one line per phase goes to stderr: `CKPTKIT_PHASE <seconds> <name>`, and the process's peak memory when
the phase last ended: `CKPTKIT_PEAK <MB> <name>` (the first phase whose peak jumps is where memory goes).
"""
from __future__ import annotations

import atexit
import os
import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

ENABLED = bool(os.environ.get("CKPTKIT_PHASES"))
_totals: dict[str, float] = {}
_peaks: dict[str, float] = {}  # peak RSS (MB) of the process when the phase last ended
_stack: list[list] = []  # [name, start, time spent in nested phases]


@contextmanager
def phase(name: str) -> Iterator[None]:
    if not ENABLED:
        yield
        return
    entry = [name, time.perf_counter(), 0.0]
    _stack.append(entry)
    try:
        yield
    finally:
        _stack.pop()
        spent = time.perf_counter() - entry[1]
        _totals[name] = _totals.get(name, 0.0) + spent - entry[2]
        _peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if _stack:
            _stack[-1][2] += spent


def _report() -> None:
    for name, seconds in _totals.items():
        print(f"CKPTKIT_PHASE {seconds:.3f} {name}", file=sys.stderr)
        print(f"CKPTKIT_PEAK {_peaks[name]:.0f} {name}", file=sys.stderr)


if ENABLED:
    atexit.register(_report)
