"""Fold BatchNorm into the layers before it, at the checkpoint level.

The output is what the same network built without its BatchNorms (slim: `normalizer_fn=None`)
restores: the layer's weights scaled per output channel, its biases (`S/biases`, created when
absent) = beta + (b - mean) * s with s = gamma / sqrt(var + eps), the BN's variables (and their
optimizer slots, moving averages and zero-debias state) removed, everything else copied unchanged.

Which BN follows which layer, and each BN's epsilon, come from the graph (the `.meta` beside the
checkpoint, `--meta`, `--arch` or a builder) through the same importer the exports use; only when
there is no usable graph do slim's variable names decide, and the epsilon is then `--eps` or
slim's default, with a warning. Tensors stream one at a time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

import numpy as np

from ckptkit.batchnorm.finder import find_fold_units
from ckptkit.batchnorm.units import BNUnit, check_health, unit_scope
from ckptkit.core.bn_formula import affine
from ckptkit.core.lazy_tf import eager, prefer_low_memory
from ckptkit.read.checkpoint import SIDECAR, Checkpoint, check_output_prefix, write_checkpoint
from ckptkit.core import validate
from ckptkit.core.errors import CkptkitError
from ckptkit.core.bn_health import check_finite, gate
from ckptkit.ir.layout import scale_outputs
from ckptkit.core.options import Topology, topology_of

log = logging.getLogger("ckptkit")
SLIM_EPSILON = 1e-3


@dataclass
class FoldReport:
    output: str
    folded: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # scope -> why
    epsilon: dict[str, float] = field(default_factory=dict)
    epsilon_source: str = ""
    units_from: str = ""  # "graph PATH" | "--arch NAME" | "builder" | "variable names"
    files: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # slots/averages of folded tensors
    graph: Optional[str] = None  # the BN-free .meta written beside the output, if any

    def to_json(self) -> dict:
        return {"output": self.output, "folded": self.folded, "kept": self.kept, "epsilon": self.epsilon,
                "epsilon_source": self.epsilon_source, "units_from": self.units_from, "files": self.files,
                "graph": self.graph,
                "dropped": self.dropped}


def check_epsilon(eps: Optional[float]) -> Optional[float]:
    if eps is None:
        return None
    return validate.positive_number("--eps", eps, "the BatchNorm epsilon the network was built with (slim 0.001, "
                                    "resnet arg scopes 1e-5)")


def _fold_params(ckpt: Checkpoint, unit: BNUnit, eps: float) -> tuple[np.ndarray, np.ndarray]:
    read = lambda name: ckpt.get(name) if name else None  # noqa: E731
    return affine(ckpt.get(unit.moving_mean), ckpt.get(unit.moving_variance), eps, read(unit.gamma), read(unit.beta),
                  bias=read(unit.layer.biases))


def _scaled(weights: np.ndarray, unit: BNUnit, s: np.ndarray) -> np.ndarray:
    """Weights times the per-output-channel scale, in place, rounded as the IR fold rounds."""
    return scale_outputs(weights, unit.layer.layout, s, inplace=True)


@eager
def fold_checkpoint(checkpoint: str, output: str, *, eps: Optional[float] = None, use_meta: bool = True,
                    topology: Optional[Topology] = None, allow_bad_statistics: bool = False, write_graph: bool = True,
                    **options) -> FoldReport:
    """Fold every BN unit that directly follows a conv/depthwise/fully connected layer; write `output`.

    Refuses (CkptkitError, nothing written) missing statistics, never-updated or invalid ones (unless
    `allow_bad_statistics`), an epsilon given twice (`eps` with a graph), and non-finite results.

    Args:
        checkpoint: the input (never modified).  output: the output checkpoint prefix.
        eps: BatchNorm epsilon when there is no graph (refused with one: the graph gives each BN's own).
        topology: the graph, as `ckptkit.core.options.Topology` (or its fields as keywords: meta, arch +
            arch_args, builder + input_shape, input_name; default: the `.meta` beside the checkpoint; a frozen
            graph has no variables to fold). use_meta=False pairs units with layers by slim's names.
            Its output_name: the output the BN-free graph ends at (default: every output the graph has).
        write_graph: also write the BN-free graph as OUTPUT.meta (verified by TensorFlow first).
    Returns:
        FoldReport: folded and kept units (with why), epsilon per unit and its source, files, graph.
    Example:
        >>> ckptkit.fold_checkpoint("fixtures/mobilenet_v2_tiny", "out/folded/model.ckpt").folded[:1]
        ['Conv/BatchNorm']
    """
    topology = topology_of(options, topology)
    if topology.frozen:
        raise CkptkitError(f"fold takes its graph from --meta, --arch or --builder, not a frozen graph "
                           f"({topology.frozen}): a frozen graph's variables are constants, so fold has no "
                           "BatchNorm variables to find in it")
    prefer_low_memory()  # TF runs here only to check the BN-free graph on a few samples
    ckpt = Checkpoint(checkpoint)
    out = check_output_prefix(output, ckpt.prefix)
    eps = check_epsilon(eps)
    report = FoldReport(out)
    units, report.units_from = find_fold_units(ckpt, topology, use_meta=use_meta, strict=eps is None)
    from_graph = report.units_from != "variable names"
    if from_graph and eps is not None:
        raise CkptkitError(f"--eps {eps:g} was given but the {report.units_from} gives every BatchNorm's epsilon: "
                           "drop --eps (or pass --no-meta to ignore the graph and fold by variable names)")
    gate([(u.scope, i) for u in units for i in check_health(ckpt, u)], allow_bad=allow_bad_statistics,
         checkpoint=ckpt.prefix, action="folding")

    if not from_graph and any(u.layer is not None and u.layer.kind == "conv" and
                              len(ckpt.tensors[u.layer.weights].shape) == 4 and
                              ckpt.tensors[u.layer.weights].shape[2] == ckpt.tensors[u.layer.weights].shape[3]
                              for u in units):
        # slim names conv2d and conv2d_transpose kernels alike; only the graph tells [kh,kw,in,out] from
        # [kh,kw,out,in], and with as many inputs as outputs the shapes cannot
        log.warning("without a graph every `S/weights` kernel is taken to be a convolution's [kh,kw,in,out]: if the "
                    "network has transposed convolutions, pass --meta, --arch or --builder")
    if from_graph:
        report.epsilon_source = report.units_from
    elif eps is not None:
        report.epsilon_source = "--eps"
    else:
        log.warning("epsilon of every BatchNorm assumed to be slim's default %g: there is no graph to read it "
                    "from, and resnet arg scopes use 1e-5; pass --eps, --arch or --meta to be sure", SLIM_EPSILON)
        report.epsilon_source = "assumed slim default"
    default_eps = SLIM_EPSILON if eps is None else eps

    fold_units: dict[str, BNUnit] = {}
    for unit in units:
        bias_name = (unit.layer.biases or unit.layer.scope + "/biases") if unit.layer else None
        if unit.layer is None:
            report.kept[unit.scope] = unit.kept_because or "follows no conv/fc layer by slim naming"
        elif not unit.layer.biases and bias_name in ckpt:
            report.kept[unit.scope] = f"{bias_name} exists but is not the bias of {unit.layer.weights}"
        else:
            fold_units[unit.layer.weights] = unit
            report.epsilon[unit.scope] = unit.epsilon if unit.epsilon is not None else default_eps
    report.folded = [u.scope for u in fold_units.values()]
    removed = {v for u in fold_units.values() for v in u.variables}
    biases = {u.layer.biases for u in fold_units.values() if u.layer.biases}
    # slots and moving averages of the folded weights/biases no longer describe them
    report.dropped = sorted(n for n in ckpt.names if n not in removed and any(
        n.startswith(v + "/") for u in fold_units.values() for v in (u.layer.weights, u.layer.biases) if v))
    if report.dropped:
        log.warning("dropped %d optimizer slot(s)/moving average(s) of folded tensors (e.g. %s): they describe "
                    "the unfolded weights", len(report.dropped), report.dropped[0])
    skip = removed | biases | set(report.dropped)

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for name in ckpt.names:
            if name in skip:
                continue
            unit = fold_units.get(name)
            if unit is None:
                yield name, ckpt.read(name)
                continue
            weights = ckpt.read(name)
            s, t = _fold_params(ckpt, unit, report.epsilon[unit.scope])
            bias_name = unit.layer.biases or unit.layer.scope + "/biases"
            check_finite([(bias_name, t), (name, s)], "folded", f"the statistics of {unit.scope} overflow; "
                                                                 "run ckptkit recalibrate first")
            yield name, _scaled(weights, unit, s)
            yield bias_name, t.astype(weights.dtype)

    graph_writer = _graph_writer(ckpt, fold_units, report, topology) if from_graph and write_graph else None

    def graph_file(staged: str) -> dict:
        content = graph_writer(staged) if graph_writer else None
        report.graph = out + ".meta" if content else None
        # the record of how the statistics were made (recalibrate's preprocessing) follows the folded weights:
        # the next recalibrate, diagnose or verification reads the same preprocessing; None removes an old one
        return {out + ".meta": content, out + SIDECAR: _read_sidecar(ckpt.prefix)}

    report.files = write_checkpoint(out, tensors(), protect=[ckpt.prefix], before_publish=graph_file)
    return report


def _read_sidecar(prefix: str) -> Optional[bytes]:
    from ckptkit.core.safe_io import read_optional

    return read_optional(prefix + SIDECAR, "record")


def _graph_writer(ckpt: Checkpoint, fold_units: dict, report: FoldReport, topology: Topology):
    """The BN-free graph maker (fold_graph.folded_meta) for this fold, or None (with a warning) when the graph
    cannot be loaded. A training graph with several outputs and no `output_name` (the logits and slim's
    `predictions`, say) is written with every one of them, as the original has them."""
    from ckptkit.commands.fold_graph import folded_meta
    from ckptkit.topology.sources import followed_outputs, load

    meta = topology.meta or (ckpt.meta_path if not topology.arch and topology.builder is None else None)
    try:
        outputs = followed_outputs(meta, topology.input_name) if meta and not topology.output_name else []
        if len(outputs) > 1:
            log.info("the graph has %d outputs (%s): the BN-free graph keeps them all", len(outputs),
                     ", ".join(outputs))
            models = [load(ckpt.prefix, weights=False, **replace(topology, output_name=name).load_args())
                      for name in outputs]
        else:
            models = [load(ckpt.prefix, weights=False, **topology.load_args())]
    except CkptkitError as err:
        log.warning("no graph written beside the folded checkpoint (%s)", str(err)[:200])
        return None
    scopes = set(report.folded)
    folded = {n.name for m in models for n in m.graph.nodes if n.op == "BatchNorm" and unit_scope(n) in scopes}
    bias_names = {w: u.layer.biases or u.layer.scope + "/biases" for w, u in fold_units.items()}
    dtypes = {name: t.dtype for name, t in ckpt.tensors.items()}
    dtypes.update({b: ckpt.tensors[w].dtype for w, b in bias_names.items() if w in ckpt.tensors})
    return folded_meta(models, folded, bias_names, dtypes)
