"""`ckptkit inspect`: the tensors and BatchNorm units of a checkpoint, and what is wrong with them."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ckptkit.core.lazy_tf import eager
from ckptkit.batchnorm.units import check_health
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.batchnorm.finder import find_fold_units
from ckptkit.batchnorm.scan import scan_units
from ckptkit.core.options import Topology, topology_of

JSON_VERSION = 1


@eager
def inspect_checkpoint(path: str, *, use_meta: bool = True, graph: bool = False, topology: Optional[Topology] = None,
                       **options) -> dict:
    """A JSON-ready description of a checkpoint and its BatchNorm units (layout in README, versioned).

    Args:
        path: checkpoint prefix, one of its files, or its folder.
        topology: the graph to find BatchNorms in, as `ckptkit.core.options.Topology` (or its fields as
            keywords: meta, arch + arch_args, builder + input_shape; default: the `.meta` beside it);
            use_meta=False finds them by slim's variable names instead.
        graph: also list the graph's candidate inputs and outputs with shapes (`info["graph"]`).
    Returns:
        dict: format_version, checkpoint, tensors, batchnorm (units, epsilon, the layer each follows,
        issues), issues, summary.
    Example:
        >>> [i["code"] for i in ckptkit.inspect_checkpoint("fixtures/digits/broken")["issues"]][:1]
        ['never_updated']
    """
    topology = topology_of(options, topology)
    ckpt = Checkpoint(path)
    units = None
    meta = topology.meta
    meta_path = meta or (ckpt.meta_path if use_meta else None)
    if meta_path and not topology.arch and topology.builder is None and topology.input_shape is None:
        units, units_from = scan_units(ckpt, meta_path), f"graph {meta_path}"  # slim's pattern: no TensorFlow
    if units is None:
        units, units_from = find_fold_units(ckpt, topology, use_meta=use_meta)
    issues = []
    for unit in units:
        for issue in check_health(ckpt, unit):
            issues.append({"code": issue.code, "scope": unit.scope, "message": issue.message})
    io = None
    if graph and not topology.arch and topology.builder is None and use_meta and (meta or ckpt.meta_path):
        from ckptkit.topology.sources import graph_io

        io = graph_io(ckpt.prefix, meta)
    return {
        "format_version": JSON_VERSION,
        "graph": io,
        "checkpoint": ckpt.prefix,
        "checkpoint_version": ckpt.version,
        "meta_graph": ckpt.meta_path,
        "units_from": units_from,
        "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ckpt.tensors.values()],
        "batchnorm": [u.to_json() for u in units],
        "issues": issues,
        "summary": {
            "tensors": len(ckpt.tensors),
            "parameters": int(sum(int(np.prod(t.shape)) for t in ckpt.tensors.values())),
            "batchnorm_units": len(units),
            "foldable": sum(1 for u in units if u.layer is not None),
            "foldable_by_naming": sum(1 for u in units if u.layer is not None),  # format 1 name, kept
            "issues": {code: sum(1 for i in issues if i["code"] == code)
                       for code in sorted({i["code"] for i in issues})},
        },
    }
