"""BatchNorm units found from checkpoint variables alone, and their health.

A unit is a variable scope holding BatchNorm variables: slim's `S/BatchNorm/...`
or tf.layers/Keras `NAME/...` with `gamma`, `beta`, `moving_mean`,
`moving_variance` (any of gamma/beta may be absent; statistics may be missing).
Slim naming also tells which layer a unit follows: `S/BatchNorm` normalises
the output of the layer whose weights are `S/weights`, `S/depthwise_weights`
or `S/pointwise_weights`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .checkpoint import Checkpoint

BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")
# Scopes that hold gamma/beta but are not BatchNorm.
_NOT_BN = re.compile(r"(LayerNorm|layer_norm|GroupNorm|group_norm|InstanceNorm|instance_norm)", re.I)
_BN_NAME = re.compile(r"(batchnorm|batch_norm|batch_normalization|(^|[/_])bn\w*$)", re.I)


@dataclass(frozen=True)
class Layer:
    """The layer a BN unit follows, by slim naming."""

    kind: str  # conv | depthwise | pointwise | dense
    weights: str
    biases: Optional[str]

    @property
    def scope(self) -> str:
        return self.weights.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Issue:
    code: str  # missing_statistics | never_updated | invalid_variance
    message: str


@dataclass
class BNUnit:
    scope: str
    gamma: Optional[str] = None
    beta: Optional[str] = None
    moving_mean: Optional[str] = None
    moving_variance: Optional[str] = None
    extras: list[str] = field(default_factory=list)  # zero-debias and optimizer slots
    channels: int = 0
    layer: Optional[Layer] = None
    issues: list[Issue] = field(default_factory=list)

    @property
    def debias(self) -> list[str]:
        return [e for e in self.extras if "/moving_mean/biased" in e or "/moving_mean/local_step" in e]

    @property
    def variables(self) -> list[str]:
        return [v for v in (self.gamma, self.beta, self.moving_mean, self.moving_variance) if v] + self.extras

    @property
    def has_statistics(self) -> bool:
        return bool(self.moving_mean and self.moving_variance)

    def to_json(self) -> dict:
        return {
            "scope": self.scope,
            "channels": self.channels,
            "gamma": self.gamma, "beta": self.beta,
            "moving_mean": self.moving_mean, "moving_variance": self.moving_variance,
            "zero_debias": self.debias,
            "follows": None if self.layer is None else {"kind": self.layer.kind, "weights": self.layer.weights,
                                                        "biases": self.layer.biases},
            "issues": [{"code": i.code, "message": i.message} for i in self.issues],
        }


def find_units(ckpt: Checkpoint) -> list[BNUnit]:
    """Every BatchNorm unit in the checkpoint, in name order, paired with its layer by slim naming."""
    scopes: dict[str, dict[str, str]] = {}
    for name in ckpt.names:
        scope, _, leaf = name.rpartition("/")
        if leaf in BN_PARAMS and scope and "/moving_mean/" not in name:
            scopes.setdefault(scope, {})[leaf] = name
    units = []
    for scope, params in sorted(scopes.items()):
        has_stats = "moving_mean" in params or "moving_variance" in params
        if _NOT_BN.search(scope):
            continue
        if not has_stats and not _BN_NAME.search(scope.rsplit("/", 1)[-1]):
            continue
        unit = BNUnit(scope=scope, **{k: v for k, v in params.items()})
        # Everything else under the scope: zero-debias variables (under a doubled scope) and optimizer slots.
        unit.extras = [n for n in ckpt.names if n.startswith(scope + "/") and n not in params.values()]
        unit.channels = _channels(ckpt, unit)
        unit.layer = _paired_layer(ckpt, scope, unit.channels)
        units.append(unit)
    return units


def _channels(ckpt: Checkpoint, unit: BNUnit) -> int:
    for name in (unit.moving_mean, unit.moving_variance, unit.beta, unit.gamma):
        if name:
            shape = ckpt.tensors[name].shape
            return int(shape[-1]) if shape else 1
    return 0


def _paired_layer(ckpt: Checkpoint, scope: str, channels: int) -> Optional[Layer]:
    parent, _, leaf = scope.rpartition("/")
    if leaf != "BatchNorm" or not parent:
        return None
    biases = parent + "/biases" if parent + "/biases" in ckpt else None
    candidates = [("pointwise", parent + "/pointwise_weights"), ("depthwise", parent + "/depthwise_weights"),
                  ("conv", parent + "/weights")]
    for kind, name in candidates:
        if name not in ckpt:
            continue
        shape = ckpt.tensors[name].shape
        if kind == "conv" and len(shape) == 2:
            kind = "dense"
        out = shape[2] * shape[3] if kind == "depthwise" else shape[-1]
        if out != channels:
            return None
        return Layer(kind, name, biases)
    return None


def check_health(ckpt: Checkpoint, unit: BNUnit) -> list[Issue]:
    """The problems of one unit; sets `unit.issues` and returns them."""
    issues: list[Issue] = []
    if not unit.has_statistics:
        absent = [p for p in ("moving_mean", "moving_variance") if getattr(unit, p) is None]
        issues.append(Issue("missing_statistics",
                            f"{' and '.join(absent)} of {unit.scope} missing: run ckptkit recalibrate --data DIR"))
    else:
        mean = ckpt.get(unit.moving_mean)
        var = ckpt.get(unit.moving_variance)
        bad = ~np.isfinite(var) | (var < 0)
        if bad.any():
            issues.append(Issue("invalid_variance",
                                f"moving_variance of {unit.scope} is negative, NaN or inf in {int(bad.sum())} of "
                                f"{var.size} channels: run ckptkit recalibrate --data DIR"))
        if not np.isfinite(mean).all():
            issues.append(Issue("invalid_variance",
                                f"moving_mean of {unit.scope} is NaN or inf in {int((~np.isfinite(mean)).sum())} of "
                                f"{mean.size} channels: run ckptkit recalibrate --data DIR"))
        elif np.all(mean == 0) and np.all(var == 1):
            issues.append(Issue("never_updated",
                                f"statistics of {unit.scope} were never updated (mean 0, variance 1): "
                                "run ckptkit recalibrate --data DIR"))
    unit.issues = issues
    return issues
