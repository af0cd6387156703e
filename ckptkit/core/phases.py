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
# the CLI turns this on (not with -q): each outermost phase says on stderr that it starts, so a long command
# shows where it is (import, reference, each format written and verified) as it goes
ANNOUNCE = False
_depth = [0]
_announced: set = set()
SLOW = {"import TensorFlow"}  # announced whenever they start: seconds each
_start = [time.perf_counter()]
_totals: dict[str, float] = {}
_peaks: dict[str, float] = {}  # peak RSS (MB) of the process when the phase last ended
_stack: list[list] = []  # [name, start, time spent in nested phases]


def start_clock() -> None:
    """Announced phases say how long the command has run: from here."""
    _start[0] = time.perf_counter()
    _announced.clear()


def announce(name: str) -> None:
    """`ckptkit: [3.1 s] NAME` on stderr, once per name (the reference runs again for each format: not news)."""
    elapsed = time.perf_counter() - _start[0]
    # a quick command stays quiet: phases are said once it has run half a second, or when what starts is slow
    if ANNOUNCE and name not in _announced and (elapsed >= 0.5 or name in SLOW):
        import logging

        _announced.add(name)
        logging.getLogger("ckptkit").info("[%.1f s] %s", elapsed, name)


@contextmanager
def phase(name: str) -> Iterator[None]:
    if _depth[0] == 0:
        announce(name)
    _depth[0] += 1
    try:
        if not ENABLED:
            yield
            return
        with _timed(name):
            yield
    finally:
        _depth[0] -= 1


@contextmanager
def _timed(name: str) -> Iterator[None]:
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
