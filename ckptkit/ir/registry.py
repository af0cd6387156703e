"""The op registry: what an IR op is (`OpDef`), the ops defined, and which targets can write a graph.

The ops themselves are plugins, one module per op (or op family) in `ckptkit/ops/`, found by listing that
package the first time an op is looked up (`load_all`: the one import that runs upward, by name, so that the
IR below never depends on any op). Each op module declares, for its op(s):
  * `define(NAME, Attrs, run=..., layout=...)`: the typed attributes (a dataclass), the TensorFlow
    executor `run(ctx, node, xs, params)` (reference runs, recalibration) and, for layers with a kernel,
    its weight layout (`ckptkit.ir.layout`), which tells folding where the output channel is;
  * `@OP.writer("onnx" | "keras" | "caffe")`: how a target writes one node, `fn(ctx, node, xs) -> output`
    (`ctx` is that target's builder in `converters/`); an optional `check(node, graph) -> reason | None`
    refuses attribute values the target cannot express;
  * `@register("TFOpType", ...)` (from `ckptkit.tf_import.walker`): the TF import handler(s).
A target that has no writer for an op, or whose check refuses a node, is reported for every such node
before anything is written (`require`).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Optional

from ckptkit.core.errors import CkptkitError

TARGETS = ("onnx", "keras", "caffe")  # targets whose ops each have a writer of their own
# targets written through TensorFlow (converters/tflite.py): an op's `run` is its writer there
TF_TARGETS = ("tflite", "savedmodel")
FORMATS = TARGETS + TF_TARGETS  # every target (converters.base.MODULES: one writer module each)
# where an op cannot be written, the target to suggest instead
FALLBACK = {"caffe": "onnx", "keras": "onnx", "onnx": "keras"}


@dataclass
class NoAttrs:
    """Attributes of an op that has none."""


WriteFn = Callable[[Any, Any, list], Any]
CheckFn = Callable[[Any, Any], Optional[str]]


@dataclass
class OpDef:
    name: str
    attrs: type = NoAttrs
    run: Optional[Callable] = None  # (ctx, node, xs, params) -> tf tensor
    layout: Optional[str] = None  # weight layout of params["weights"] for layers that absorb an affine
    doc: str = ""
    writers: dict[str, WriteFn] = field(default_factory=dict)
    checks: dict[str, CheckFn] = field(default_factory=dict)

    def writer(self, target: str, check: Optional[CheckFn] = None) -> Callable[[WriteFn], WriteFn]:
        """Register how `target` writes this op (once per target)."""
        if target not in TARGETS:
            raise ValueError(f"unknown target {target}")

        def deco(fn: WriteFn) -> WriteFn:
            if target in self.writers:
                raise RuntimeError(f"{target} writer for {self.name} registered twice")
            self.writers[target] = fn
            if check is not None:
                self.checks[target] = check
            return fn

        return deco

    def refuse(self, target: str, reason: str) -> None:
        """Say why `target` cannot write this op at all (named in the up-front refusal)."""
        self.checks[target] = lambda node, graph: reason

    def make_attrs(self, value: Any) -> Any:
        if isinstance(value, self.attrs):
            return value
        if value is None:
            value = {}
        if isinstance(value, dict):
            names = {f.name for f in fields(self.attrs)}
            unknown = set(value) - names
            if unknown:
                raise ValueError(f"{self.name} has no attribute(s) {', '.join(sorted(unknown))}")
            return self.attrs(**value)
        raise TypeError(f"attributes of {self.name} must be {self.attrs.__name__}, not {type(value).__name__}")


REGISTRY: dict[str, OpDef] = {}
OP_PACKAGE = "ckptkit.ops"  # the op modules, loaded as plugins
_loaded = False


def define(name: str, attrs: type = NoAttrs, *, run: Callable, layout: Optional[str] = None, doc: str = "") -> OpDef:
    """Declare an IR op (once)."""
    if name in REGISTRY:
        raise RuntimeError(f"IR op {name} defined twice")
    if not is_dataclass(attrs):
        raise TypeError(f"attributes of {name} must be a dataclass")
    op = OpDef(name, attrs, run, layout, doc)
    REGISTRY[name] = op
    return op


def load_all() -> dict[str, OpDef]:
    """Import every op module of `ckptkit.ops` (each registers itself)."""
    global _loaded
    if not _loaded:
        _loaded = True
        package = importlib.import_module(OP_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{OP_PACKAGE}.{info.name}")
    return REGISTRY


def get(name: str) -> OpDef:
    ops = load_all()
    if name not in ops:
        raise ValueError(f"unknown IR op {name}")
    return ops[name]


def unsupported(graph, target: str) -> list[str]:
    """'node (Op): why' for every node of `graph` that `target` cannot write."""
    out = []
    for node in graph.nodes:
        if node.op == "Input":
            continue
        op = get(node.op)
        check = op.checks.get(target)
        reason = check(node, graph) if check is not None else None
        if target not in op.writers and not reason:
            out.append(f"{node.name} ({node.op})")
        elif reason:
            out.append(f"{node.name} ({node.op}: {reason})")
    return out


def require(graph, target: str, label: Optional[str] = None) -> None:
    """Refuse, before any work, a graph with nodes `target` cannot express, naming all of them."""
    bad = unsupported(graph, target)
    if bad:
        shown = "; ".join(bad[:6]) + (f"; and {len(bad) - 6} more" if len(bad) > 6 else "")
        other = FALLBACK[target]
        raise CkptkitError(f"{label or target} cannot express {len(bad)} node(s) of this model: {shown}; export to "
                           f"{other} instead, or end the export before them (ckptkit export CKPT --outputs NAME …)")
