"""`ckptkit inspect`: the tensors and BatchNorm units of a checkpoint, and what is wrong with them."""
from __future__ import annotations

from .batchnorm import check_health, find_units
from .checkpoint import Checkpoint

JSON_VERSION = 1


def inspect_checkpoint(path: str) -> dict:
    """A JSON-ready description; its layout is documented in README.md (stable, versioned)."""
    ckpt = Checkpoint(path)
    units = find_units(ckpt)
    issues = []
    for unit in units:
        for issue in check_health(ckpt, unit):
            issues.append({"code": issue.code, "scope": unit.scope, "message": issue.message})
    return {
        "format_version": JSON_VERSION,
        "checkpoint": ckpt.prefix,
        "checkpoint_version": ckpt.version,
        "meta_graph": ckpt.meta_path,
        "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ckpt.tensors.values()],
        "batchnorm": [u.to_json() for u in units],
        "issues": issues,
        "summary": {
            "tensors": len(ckpt.tensors),
            "parameters": int(sum(int(__import__("numpy").prod(t.shape)) for t in ckpt.tensors.values())),
            "batchnorm_units": len(units),
            "foldable_by_naming": sum(1 for u in units if u.layer is not None),
            "issues": {code: sum(1 for i in issues if i["code"] == code)
                       for code in sorted({i["code"] for i in issues})},
        },
    }
