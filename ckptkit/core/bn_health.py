"""The one BatchNorm health gate: what is wrong with a unit's moving statistics, and who may go on.

Used by `inspect` (to report), `fold` and every export (to refuse before writing) and
`recalibrate` (to flag the old statistics and to check the new ones before writing them).

Codes:
  missing_statistics  moving mean/variance absent: nothing to fold or export; recalibrate
  never_updated       every mean exactly 0 and every variance exactly 1: update ops never ran
  invalid_variance    negative, NaN or inf variance, or a NaN/inf mean
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from ckptkit.core.errors import CkptkitError

log = logging.getLogger("ckptkit")


@dataclass(frozen=True)
class Issue:
    code: str  # missing_statistics | never_updated | invalid_variance
    message: str


class BadStatisticsError(CkptkitError):
    """BatchNorm statistics that would make a wrong model: refused before anything is written."""


def statistics_issues(scope: str, mean: Optional[np.ndarray], variance: Optional[np.ndarray]) -> list[Issue]:
    """The problems of one BN unit's moving statistics (None: absent)."""
    fix = "run ckptkit recalibrate --data DIR"
    if mean is None or variance is None:
        absent = [k for k, v in (("moving_mean", mean), ("moving_variance", variance)) if v is None]
        return [Issue("missing_statistics", f"{' and '.join(absent)} of {scope} missing: {fix}")]
    issues = []
    var = np.asarray(variance, np.float64)
    mean = np.asarray(mean, np.float64)
    bad = ~np.isfinite(var) | (var < 0)
    if bad.any():
        issues.append(Issue("invalid_variance", f"moving_variance of {scope} is negative, NaN or inf in "
                                                f"{int(bad.sum())} of {var.size} channels: {fix}"))
    if not np.isfinite(mean).all():
        issues.append(Issue("invalid_variance", f"moving_mean of {scope} is NaN or inf in "
                                                f"{int((~np.isfinite(mean)).sum())} of {mean.size} channels: {fix}"))
    elif not bad.any() and np.all(mean == 0) and np.all(var == 1):
        issues.append(Issue("never_updated", f"statistics of {scope} were never updated (mean 0, variance 1; "
                                             f"the update ops did not run in training): {fix}"))
    return issues


def gate(issues: Iterable[tuple[str, Issue]], *, allow_bad: bool = False, checkpoint: str = "CKPT",
         action: str = "writing") -> None:
    """Refuse (BadStatisticsError, naming the units and the fix) or, with allow_bad, warn.

    `issues`: (scope, Issue) pairs. Missing statistics are always refused: there is nothing to use."""
    by_code: dict[str, list[str]] = {}
    for scope, issue in issues:
        by_code.setdefault(issue.code, []).append(scope)
    if not by_code:
        return
    fix = f"run ckptkit recalibrate {checkpoint} --data DIR -o FIXED first"
    missing = by_code.pop("missing_statistics", [])
    if missing:
        raise BadStatisticsError(f"moving statistics of {_names(missing)} are missing: {fix}")
    what = {"never_updated": "were never updated (mean 0, variance 1)",
            "invalid_variance": "are negative, NaN or inf"}
    text = "; ".join(f"statistics of {_names(scopes)} {what.get(code, code)}" for code, scopes in by_code.items())
    if not allow_bad:
        raise BadStatisticsError(f"{text}: {fix} (or pass --allow-bad-statistics to go on with them)")
    log.warning("--allow-bad-statistics: %s %s; the result will not match a healthy model", action, text)


def _names(scopes: list[str]) -> str:
    more = f" and {len(scopes) - 3} more" if len(scopes) > 3 else ""
    return ", ".join(scopes[:3]) + more


FINITE_CHUNK = 8 << 20  # values checked at a time: a big tensor needs no boolean copy of its size


def _all_finite(value: np.ndarray) -> bool:
    """No NaN/inf in `value`, checked a chunk at a time, a mapped tensor's pages given back as it goes."""
    from ckptkit.core.pages import release

    if not value.flags.c_contiguous:
        return bool(np.isfinite(value).all())
    flat = value.reshape(-1)
    for start in range(0, flat.size, FINITE_CHUNK):
        part = flat[start:start + FINITE_CHUNK]
        finite = bool(np.isfinite(part).all())
        release(part)
        if not finite:
            return False
    return True


def check_finite(named: Iterable[tuple[str, np.ndarray]], what: str, fix: str) -> None:
    """Refuse non-finite numbers before they are written."""
    for name, value in named:
        value = np.asarray(value)
        if value.dtype.kind == "f" and not _all_finite(value):
            bad = int((~np.isfinite(value)).sum())
            raise CkptkitError(f"{what} {name} would hold {bad} NaN/inf value(s) of {value.size}: {fix}; "
                               "nothing was written")
