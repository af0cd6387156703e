"""Protobuf's 2 GiB message limit, which a .caffemodel and a single-file .onnx model must stay under."""
from __future__ import annotations

from ckptkit.errors import CkptkitError
from ckptkit.ir import Graph

PROTOBUF_LIMIT = 2**31 - 1  # bytes: protobuf cannot serialise or parse a message this large
ROOM_FOR_GRAPH = 16 * 2**20  # bytes kept free for the graph and metadata beside the weights


def weight_bytes(graph: Graph) -> int:
    return sum(int(v.nbytes) for node in graph for v in node.params.values() if v is not None)


def too_big(graph: Graph) -> bool:
    """Whether the weights are past what one protobuf message can hold beside the graph."""
    return weight_bytes(graph) > PROTOBUF_LIMIT - ROOM_FOR_GRAPH


def check_protobuf_size(graph: Graph, what: str, instead: str) -> None:
    """Refuse, before anything is written, weights that one protobuf message cannot hold."""
    if too_big(graph):
        raise CkptkitError(f"this model's weights are {weight_bytes(graph) / 2**30:.2f} GiB, and {what} is one "
                           f"protobuf message, which cannot reach 2 GiB: {instead}")
