"""The BatchNorm unit model: units found from an imported graph or from checkpoint variables alone.

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


from ckptkit.ir import registry
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.ir.passes import absorbs
from ckptkit.core.bn_health import Issue, statistics_issues

BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")
# Scopes that hold gamma/beta but are not BatchNorm.
_NOT_BN = re.compile(r"(LayerNorm|layer_norm|GroupNorm|group_norm|InstanceNorm|instance_norm)", re.I)
_BN_NAME = re.compile(r"(batchnorm|batch_norm|batch_normalization|(^|[/_])bn\w*$)", re.I)


@dataclass(frozen=True)
class Layer:
    """The layer a BN unit follows, by slim naming."""

    kind: str  # conv | depthwise | pointwise | dense | conv_transpose
    weights: str
    biases: Optional[str]
    transposed: bool = False  # dense weights stored [out, in] (MatMul transpose_b)

    @property
    def layout(self) -> str:
        """The stored kernel's layout (ckptkit.ir.layout)."""
        if self.kind == "dense":
            return "OI" if self.transposed else "IO"
        return {"depthwise": "HWCM", "conv_transpose": "HWOI"}.get(self.kind, "HWIO")

    @property
    def scope(self) -> str:
        return self.weights.rsplit("/", 1)[0]


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
    epsilon: Optional[float] = None  # from the graph; None when found by names alone
    found_by: str = "names"  # names | graph
    kept_because: str = ""  # why it cannot be folded (layer is None or not alone)

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
            "epsilon": self.epsilon, "found_by": self.found_by,
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
    """The problems of one unit (see ckptkit.core.bn_health); sets `unit.issues` and returns them."""
    mean = ckpt.get(unit.moving_mean) if unit.moving_mean and unit.moving_mean in ckpt else None
    var = ckpt.get(unit.moving_variance) if unit.moving_variance and unit.moving_variance in ckpt else None
    unit.issues = statistics_issues(unit.scope, mean, var)
    return unit.issues


def scope_of(variables: list[Optional[str]], fallback: str) -> str:
    """The scope naming a unit: the parent of its first variable (gamma, beta, mean, variance in that order),
    else `fallback` (the BatchNorm's own name)."""
    return next((n.rpartition("/")[0] for n in variables if n), "") or fallback


def unit_scope(node) -> str:
    """The scope naming the unit of an IR BatchNorm node (scope_of its variables)."""
    return scope_of([node.sources.get(k) for k in ("gamma", "beta", "mean", "variance")], node.name)


def units_from_graph(ckpt: Checkpoint, graph) -> list[BNUnit]:
    """Every BatchNorm of an imported graph (ckptkit.ir.Graph) as a unit: its variables, epsilon and the
    layer it really follows, found by the same importer the exports use (hand-written BNs, EMA shadow
    statistics and tf.layers BNs included). A unit with no foldable layer says why in `kept_because`."""
    users = graph.consumers()
    units: list[BNUnit] = []
    position: dict[str, int] = {}
    for node in graph:
        if node.op != "BatchNorm":
            continue
        src = node.sources
        scope = unit_scope(node)
        present = lambda k: src.get(k) if src.get(k) in ckpt else None  # noqa: E731  (absent: missing)
        unit = BNUnit(scope=scope, gamma=src.get("gamma"), beta=src.get("beta"), moving_mean=present("mean"),
                      moving_variance=present("variance"), channels=int(node.shape[-1]),
                      epsilon=float(node.attrs.epsilon), found_by="graph")
        unit.layer, unit.kept_because = _graph_layer(ckpt, graph[node.inputs[0]], users, node)
        unit.extras = unit_extras(ckpt, unit.variables)
        units.append(unit)
        position.setdefault(scope, len(position))  # network order: the IR is topological
    return resolve_shared(units, position)


def resolve_shared(units: list[BNUnit], position: dict[str, int]) -> list[BNUnit]:
    """One unit per scope, in network order (`position` by scope); a layer normalised by two BNs, or one
    BN's variables on two layers, is not folded: folding would be ambiguous."""
    by_layer: dict[str, list[BNUnit]] = {}
    by_scope: dict[str, list[BNUnit]] = {}
    for u in units:
        by_scope.setdefault(u.scope, []).append(u)
        if u.layer:
            by_layer.setdefault(u.layer.weights, []).append(u)
    for group in list(by_layer.values()) + list(by_scope.values()):
        if len(group) > 1:
            for u in group:
                if u.layer:
                    u.kept_because = f"its variables or its layer {u.layer.weights} are shared by several BatchNorms"
                    u.layer = None
    merged: dict[str, BNUnit] = {}
    for u in units:  # a BN reached twice (shared weights) is one unit
        merged.setdefault(u.scope, u)
    return sorted(merged.values(), key=lambda u: (position.get(u.scope, len(position)), u.scope))


def _graph_layer(ckpt: Checkpoint, prev, users: dict, bn) -> tuple[Optional[Layer], str]:
    if not absorbs(prev):
        return None, f"follows {prev.op} {prev.name}, not a conv/depthwise/fully connected layer"
    if users[prev.name] != [bn.name]:
        others = [u for u in users[prev.name] if u != bn.name]
        return None, f"its layer {prev.name} also feeds {others[0]}"
    weights = prev.sources.get("weights")
    if not weights or weights not in ckpt:
        return None, f"the weights of {prev.name} are not a checkpoint variable"
    biases = prev.sources.get("bias")
    if prev.params.get("bias") is not None and not biases:
        return None, f"the bias of {prev.name} is not a single checkpoint variable"
    stored = tuple(ckpt.tensors[weights].shape)
    ir_shape = tuple(prev.params["weights"].shape)
    transposed = bool(getattr(prev.attrs, "weights_transposed", False))
    if (stored[::-1] if transposed else stored) != ir_shape:
        return None, f"the graph reshapes {weights} {stored} before using it"
    kind = {"HWIO": "conv", "HWCM": "depthwise", "IO": "dense", "HWOI": "conv_transpose"}[registry.get(prev.op).layout]
    if kind == "conv" and weights.endswith("pointwise_weights"):
        kind = "pointwise"
    return Layer(kind, weights, biases, transposed), ""


def unit_extras(ckpt: Checkpoint, variables: list[str]) -> list[str]:
    """Checkpoint tensors that belong to these variables: optimizer slots and moving averages
    (`V/Momentum`, `V/ExponentialMovingAverage`) and zero-debias state (`.../V/biased`, `local_step`)."""
    out = []
    for name in ckpt.names:
        if name in variables:
            continue
        if any(name.startswith(v + "/") or ("/" + v + "/") in name for v in variables):
            out.append(name)
    return out
