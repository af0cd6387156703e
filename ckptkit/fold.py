"""Fold BatchNorm into the layers before it, at the checkpoint level (slim naming).

The output is what the same network built with `normalizer_fn=None` restores:
`S/weights` (or depthwise/pointwise weights) scaled per output channel,
`S/biases` = beta + (b - mean) * s with s = gamma / sqrt(var + eps), `S/BatchNorm/*`
removed, everything else copied unchanged. Tensors stream one at a time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from .batchnorm import BNUnit, check_health, find_units
from .checkpoint import Checkpoint, check_output_prefix, write_checkpoint
from .errors import CkptkitError

log = logging.getLogger("ckptkit")
SLIM_EPSILON = 1e-3


@dataclass
class FoldReport:
    output: str
    folded: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # scope -> why
    epsilon: dict[str, float] = field(default_factory=dict)
    epsilon_source: str = ""
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"output": self.output, "folded": self.folded, "kept": self.kept, "epsilon": self.epsilon,
                "epsilon_source": self.epsilon_source, "files": self.files}


def graph_epsilons(model) -> tuple[dict[str, float], dict[str, str]]:
    """Epsilon of every BN of a loaded model by variable scope, and the weights each BN really follows."""
    eps, follows = {}, {}
    graph = model.graph
    for node in graph:
        if node.op != "BatchNorm":
            continue
        src = node.sources.get("mean") or node.sources.get("variance") or node.sources.get("gamma") or node.sources.get("beta")
        if not src:
            continue
        scope = src.rpartition("/")[0]
        eps[scope] = float(node.attrs["epsilon"])
        prev = graph[node.inputs[0]]
        follows[scope] = prev.sources.get("weights", "") if prev.op in ("Conv", "DepthwiseConv", "Dense") else ""
    return eps, follows


def _fold_params(ckpt: Checkpoint, unit: BNUnit, eps: float) -> tuple[np.ndarray, np.ndarray]:
    var = ckpt.get(unit.moving_variance).astype(np.float64)
    mean = ckpt.get(unit.moving_mean).astype(np.float64)
    s = 1.0 / np.sqrt(var + eps)
    if unit.gamma:
        s = s * ckpt.get(unit.gamma).astype(np.float64)
    b = np.zeros_like(mean)
    if unit.layer.biases:
        b = ckpt.get(unit.layer.biases).astype(np.float64)
    t = (b - mean) * s
    if unit.beta:
        t = t + ckpt.get(unit.beta).astype(np.float64)
    return s, t


def _scaled(weights: np.ndarray, kind: str, s: np.ndarray) -> np.ndarray:
    """Weights times the per-output-channel scale, in place (the scale itself is float64-exact)."""
    w = weights if weights.flags.writeable else weights.copy()
    if kind == "depthwise":  # [kh,kw,C,M]: output channel c*M + m
        s = s.reshape(w.shape[2], w.shape[3])
    # else conv/pointwise HWIO and dense [in,out]: the last axis
    np.multiply(w, s.astype(w.dtype), out=w)
    return w


def fold_checkpoint(checkpoint: str, output: str, *, eps: Optional[float] = None, meta: Optional[str] = None,
                    arch: Optional[str] = None, arch_args: Optional[dict] = None, use_meta: bool = True) -> FoldReport:
    """Fold every BN unit that follows a conv/depthwise/pointwise/fc layer by slim naming; write `output`."""
    ckpt = Checkpoint(checkpoint)
    out = check_output_prefix(output, ckpt.prefix)
    report = FoldReport(out)
    units = find_units(ckpt)
    problems = []
    for unit in units:
        for issue in check_health(ckpt, unit):
            if issue.code in ("missing_statistics", "invalid_variance"):
                problems.append((issue.code, unit.scope))
    missing = [s for c, s in problems if c == "missing_statistics"]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CkptkitError(f"moving statistics of {', '.join(missing[:3])}{more} are missing: "
                           f"run ckptkit recalibrate {ckpt.prefix} --data DIR first")
    invalid = [s for c, s in problems if c == "invalid_variance"]
    if invalid:
        raise CkptkitError(f"moving_variance of {invalid[0]} is negative, NaN or inf: "
                           f"run ckptkit recalibrate {ckpt.prefix} --data DIR first")

    eps_map: dict[str, float] = {}
    follows: dict[str, str] = {}
    meta_path = meta or (ckpt.meta_path if use_meta and not arch else None)
    if arch or meta_path:
        from .sources import load

        try:
            # topology only: the weights are streamed from the checkpoint below, never held twice
            eps_map, follows = graph_epsilons(load(ckpt.prefix, arch=arch, meta=meta_path, arch_args=arch_args,
                                                   weights=False))
            report.epsilon_source = f"--arch {arch}" if arch else f"graph {meta_path}"
        except CkptkitError as err:
            if meta or arch:
                raise
            log.warning("could not read epsilon from %s (%s); falling back to --eps", meta_path, err)
    if not report.epsilon_source:
        if eps is None:
            log.warning("epsilon assumed to be slim's default %g (no graph given; resnet arg scopes use 1e-5): "
                        "pass --eps, --arch or --meta if it differs", SLIM_EPSILON)
            report.epsilon_source = "assumed slim default"
        else:
            report.epsilon_source = "--eps"
    default_eps = SLIM_EPSILON if eps is None else float(eps)

    fold_units: dict[str, BNUnit] = {}
    for unit in units:
        if unit.layer is None:
            report.kept[unit.scope] = "follows no conv/fc layer by slim naming"
        elif follows and follows.get(unit.scope, unit.layer.weights) not in (unit.layer.weights,):
            report.kept[unit.scope] = "the graph shows it does not directly follow " + unit.layer.weights
        else:
            fold_units[unit.layer.weights] = unit
            report.epsilon[unit.scope] = eps_map.get(unit.scope, default_eps)
    report.folded = [u.scope for u in fold_units.values()]
    removed = {v for u in fold_units.values() for v in u.variables}
    biases = {u.layer.biases for u in fold_units.values() if u.layer.biases}

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for name in ckpt.names:
            if name in removed or name in biases:
                continue
            unit = fold_units.get(name)
            if unit is None:
                yield name, ckpt.get(name)
                continue
            weights = ckpt.get(name)
            s, t = _fold_params(ckpt, unit, report.epsilon[unit.scope])
            yield name, _scaled(weights, unit.layer.kind, s)
            yield unit.layer.scope + "/biases", t.astype(weights.dtype)

    report.files = write_checkpoint(out, tensors(), protect=[ckpt.prefix])
    return report
