"""Layer 2, the IR: one intermediate representation every reader produces and every target consumes.

`graph` (nodes, the graph, SAME-padding arithmetic), `registry` (what an op is, which targets write it; the op
modules themselves are plugins in `ckptkit/ops/`, loaded by name on first use), `layout` (weight layouts: where a
kernel's output channel is) and `passes` (IR -> IR: clean-up after import, BatchNorm folding).

May import: core. The graph's names are handed on here: `from ckptkit.ir import Graph, Node`.
"""
from ckptkit.ir.graph import Graph, Node, UniqueNames, padding_mode, same_pads, shorten

__all__ = ["Graph", "Node", "UniqueNames", "padding_mode", "same_pads", "shorten"]
