"""`ckptkit inspect`: the tensors and BatchNorm units of a checkpoint, and what is wrong with them."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._tf import eager
from .batchnorm.units import check_health
from .checkpoint import Checkpoint
from .batchnorm.finder import find_fold_units
from .batchnorm.scan import scan_units

JSON_VERSION = 1


@eager
def inspect_checkpoint(path: str, *, meta: Optional[str] = None, arch: Optional[str] = None,
                       arch_args: Optional[dict] = None, builder=None, input_shape=None, use_meta: bool = True,
                       graph: bool = False) -> dict:
    """A JSON-ready description of a checkpoint and its BatchNorm units (layout in README, versioned).

    Args:
        path: checkpoint prefix, one of its files, or its folder.
        meta / arch (+ arch_args) / builder (+ input_shape): the graph to find BatchNorms in (default: the
            `.meta` beside it);
            use_meta=False finds them by slim's variable names instead.
        graph: also list the graph's candidate inputs and outputs with shapes (`info["graph"]`).
    Returns:
        dict: format_version, checkpoint, tensors, batchnorm (units, epsilon, the layer each follows,
        issues), issues, summary.
    Example:
        >>> [i["code"] for i in ckptkit.inspect_checkpoint("fixtures/digits/broken")["issues"]][:1]
        ['never_updated']
    """
    ckpt = Checkpoint(path)
    units = None
    meta_path = meta or (ckpt.meta_path if use_meta else None)
    if meta_path and not arch and builder is None and input_shape is None:
        units, units_from = scan_units(ckpt, meta_path), f"graph {meta_path}"  # slim's pattern: no TensorFlow
    if units is None:
        units, units_from = find_fold_units(ckpt, meta=meta, arch=arch, arch_args=arch_args, builder=builder,
                                            input_shape=input_shape, use_meta=use_meta)
    issues = []
    for unit in units:
        for issue in check_health(ckpt, unit):
            issues.append({"code": issue.code, "scope": unit.scope, "message": issue.message})
    io = None
    if graph and not arch and builder is None and use_meta and (meta or ckpt.meta_path):
        from .sources import graph_io

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
