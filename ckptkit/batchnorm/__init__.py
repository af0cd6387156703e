"""BatchNorm, the product's core idea, in one place.

  formula  the inference formula, numpy (`affine`: s, t in float64) and TensorFlow (`normalize`) forms, and an IR
           node's gamma/beta defaults and (s, t) (`gamma_beta`, `node_affine`). numpy/TF only: below the IR.
  health   the one statistics gate: missing, never updated, invalid; who may go on (`gate`). numpy only.
  units    the unit model (`BNUnit`: its variables, channels, epsilon, the layer it follows, its issues), made
           from an imported graph's BatchNorm nodes (`units_from_graph`: the importer in ops/batch_norm.py is
           what finds BNs) or, with no graph, from variable names (`find_units`).
  scan     the TF-free fast path over a `.meta` (protobuf only), held equal to the importer's units by
           tests/test_bn_scan.py; anything it does not recognise declines to the importer.

The weight scaling both folds use is `ckptkit.layout.scale_outputs` (one rounding). The names below are
importable from the package; each loads its module on first use, so `formula` and `health` stay importable from
the layers under the IR without a cycle.
"""
from __future__ import annotations

import importlib

_HOME = {
    "affine": "formula", "normalize": "formula", "gamma_beta": "formula", "node_affine": "formula",
    "Issue": "health", "BadStatisticsError": "health", "statistics_issues": "health", "gate": "health",
    "check_finite": "health",
    "BNUnit": "units", "Layer": "units", "find_units": "units", "units_from_graph": "units",
    "check_health": "units",
    "scan_units": "scan",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'ckptkit.batchnorm' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
