"""Where an export departs from TensorFlow: the first IR node whose output differs beyond tolerance.

A failed verification knows only the final output. ckptkit has the IR, TensorFlow and the target side by side,
so it can say more: every node's output is computed by TensorFlow's kernels from the IR (`tf_exec.run_graph`) and
read from the target at the same node where the target's runtime exposes intermediate values (onnxruntime: any
value made a graph output; Keras: a layer's output; OpenCV: a layer's blob), on the worst verification sample.
Nodes are compared in the IR's topological order, so the first one beyond tolerance is where the target starts to
differ; what comes after inherits it. When ckptkit's own import already differs from the independent reference
at the output, the import is where it departs, and that is said instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

from ckptkit.ir import Graph

# (NHWC batch, IR node names) -> {node name: its value in the target, NHWC}, for the nodes the target exposes
Intermediates = Callable[[np.ndarray, list[str]], dict[str, np.ndarray]]


@dataclass
class Divergence:
    node: str  # IR node (its TF op name, as the importer keeps it)
    op: str  # IR op
    where: str  # "target" (the runtime departs from TF's kernels there) or "import" (ckptkit's IR departs)
    max_abs: float
    mean_abs: float
    max_rel: float  # of the node's largest |value|
    mean_rel: float
    cosine: float
    beyond: int  # elements whose difference exceeds tolerance x the node's largest |value|
    elements: int
    compared: int = 0  # nodes compared before it (all matched)

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        stats = (f"max abs error {self.max_abs:.3g}, mean abs {self.mean_abs:.3g}, max rel {self.max_rel:.3g}, "
                 f"mean rel {self.mean_rel:.3g}, cosine {self.cosine:.6f}, {self.beyond} of {self.elements} "
                 f"elements beyond tolerance")
        if self.where == "import":
            return (f"ckptkit's own import already differs from TensorFlow's graph at the output ({stats}): the "
                    "import, not the writer, departs")
        return f"first diverging node: {self.op} {self.node} ({stats}; the {self.compared} nodes before it match)"


def statistics(reference: np.ndarray, got: np.ndarray, tolerance: float) -> dict:
    """The error figures a practitioner reads, relative to the reference's largest |value|."""
    ref = np.asarray(reference, np.float64).ravel()
    out = np.asarray(got, np.float64).ravel()
    diff = np.abs(ref - out)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    scale = scale if scale > 0 else 1.0
    norm = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(np.dot(ref, out) / norm) if norm > 0 else (1.0 if not diff.any() else 0.0)
    finite = np.isfinite(out).all()
    return dict(max_abs=float(diff.max()) if diff.size and finite else float("inf"),
                mean_abs=float(diff.mean()) if diff.size and finite else float("inf"),
                max_rel=float(diff.max() / scale) if diff.size and finite else float("inf"),
                mean_rel=float(diff.mean() / scale) if diff.size and finite else float("inf"),
                cosine=cosine, beyond=int(np.sum(~(diff <= tolerance * scale))), elements=int(ref.size))


def worst_sample(reference: Callable, target: Callable, inputs: np.ndarray) -> np.ndarray:
    """The one verification sample on which the target is furthest from the reference (a batch of one)."""
    ref, got = np.asarray(reference(inputs)), np.asarray(target(inputs))
    errors = np.abs(ref.astype(np.float64) - got).reshape(len(inputs), -1).max(axis=1)
    errors[~np.isfinite(errors)] = np.inf
    return inputs[int(np.argmax(errors))][None]


def locate(graph: Graph, reference: Callable, target: Callable, intermediates: Optional[Intermediates],
           inputs: np.ndarray, tolerance: float) -> Optional[Divergence]:
    """The first node where the target departs (None when the target exposes no node that differs)."""
    from ckptkit.run.tf_exec import run_graph

    x = worst_sample(reference, target, inputs)
    names = [n.name for n in graph.nodes if n.op != "Input"]
    ours = {k: np.asarray(v) for k, v in run_graph(graph, x, fetch=names).items()}
    at_output = statistics(reference(x), ours[graph.outputs[0]], tolerance)
    if at_output["max_rel"] > tolerance:
        node = graph[graph.outputs[0]]
        return Divergence(node.name, node.op, "import", **at_output)
    if intermediates is None:
        return None
    theirs = intermediates(x, names)
    compared = 0
    for name in names:
        if name not in theirs or theirs[name].shape != ours[name].shape:
            continue
        figures = statistics(ours[name], theirs[name], tolerance)
        if figures["max_rel"] > tolerance:
            return Divergence(name, graph[name].op, "target", **figures, compared=compared)
        compared += 1
    return None
