"""One validation layer for option values, shared by the command line and the library: each check names
the option, the value and the fix in one CkptkitError line (sample-level checks live in data.py)."""
from __future__ import annotations

import math
from typing import Iterable, Optional

from ckptkit.core.errors import CkptkitError

# how messages name an option: as the command line's flag (`--batch-size 1`, set by ckptkit.cli) or as the
# library keyword the caller passed (`batch_size=1`)
CLI = False


def named(flag: str, value) -> str:
    """`--batch-size 1` on the command line, `batch_size=1` in library use."""
    return f"{flag} {value}" if CLI else f"{flag.lstrip('-').replace('-', '_')}={value!r}"


def count(flag: str, value: Optional[int], minimum: int = 1, why: str = "", optional: bool = False) -> Optional[int]:
    """An integer of at least `minimum` (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fix = f"give {minimum} or more" + (", or leave it out" if optional else "")
        raise CkptkitError(f"{named(flag, value)} is too small{': ' + why if why else ''}: {fix}")
    return value


def positive_number(flag: str, value: Optional[float], what: str, optional: bool = True) -> Optional[float]:
    """A finite number above zero: NaN, inf, zero and negatives are refused."""
    if value is None and optional:
        return None
    try:
        ok = value is not None and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CkptkitError(f"{named(flag, value)} is not a positive finite number: give {what}")
    return float(value)


def choice(flag: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise CkptkitError(f"{named(flag, value)} is unknown: choose one of {', '.join(choices)}")
    return value
