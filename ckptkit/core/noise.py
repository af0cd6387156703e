"""Training-only randomness in a TensorFlow graph: which tensors are dropout masks or noise.

One rule for the importer (`tf_import`) and the verification reference's training-to-inference rewrite
(`inference_graph`): a tensor made by a random op from constants, settings (a scalar keep_prob placeholder)
and the data's *shape* only is noise; a tensor whose values depend on the input, a variable or a pipeline
carries data (a residual branch holding a dropout somewhere is data). Both are tested against inference
graphs built independently (tests/test_reference.py).
"""
from __future__ import annotations

from typing import Callable

DATA_SOURCES = {"Placeholder", "PlaceholderWithDefault", "IteratorGetNext", "IteratorGetNextSync", "QueueDequeueV2",
                "QueueDequeueManyV2", "QueueDequeueUpToV2", "VariableV2", "Variable", "VarHandleOp"}
SHAPE_ONLY = ("Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike")  # read a tensor's shape, not values
RANDOM_PREFIXES = ("Random", "StatelessRandom", "TruncatedNormal")


def is_data_source(op) -> bool:
    """Where data enters: inputs, pipelines, variables; a scalar placeholder (keep_prob) is a setting."""
    if op.type in ("Placeholder", "PlaceholderWithDefault"):
        return op.outputs[0].shape.rank != 0
    return op.type in DATA_SOURCES


def provenance(tensor, resolve: Callable = lambda t: t, is_input: Callable = lambda t: False,
               limit: int = 64) -> tuple[bool, bool]:
    """(carries data, holds a random op) for a tf.Tensor; `resolve` follows aliases (function-graph inputs to
    outer tensors), `is_input` names the network input. Past `limit` ops: data (the safe answer)."""
    stack, seen, random = [resolve(tensor)], set(), False
    while stack:
        t = stack.pop()
        if t.op.name in seen:
            continue
        seen.add(t.op.name)
        if len(seen) > limit or is_input(t) or is_data_source(t.op):
            return True, random
        random = random or t.op.type.startswith(RANDOM_PREFIXES)
        if t.op.type not in SHAPE_ONLY:
            stack.extend(resolve(i) for i in t.op.inputs)
    return False, random


def is_noise(tensor, **how) -> bool:
    data, random = provenance(tensor, **how)
    return random and not data


def is_setting(tensor, **how) -> bool:
    """A value fixed for the run (constants, a scalar keep_prob placeholder): no data, no randomness."""
    return provenance(tensor, **how) == (False, False)
