"""Protobuf facts the writers share: the 2 GiB message limit (a .caffemodel, a single-file .onnx model), and
the wire encoding of a length-delimited field, with which the writers put large tensors into a file straight
from numpy instead of through a message (which would hold a copy, and a list of Python floats for Caffe).

Wire format: a field is varint(number << 3 | wire type) then, for wire type 2 (a message, bytes, a packed
repeated number), varint(payload length) and the payload. A message's fields may come in any order and a
message may arrive in parts, which parsers merge; so a writer may serialise the small fields with protobuf
and write each big payload itself."""
from __future__ import annotations

from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph

PROTOBUF_LIMIT = 2**31 - 1  # bytes: protobuf cannot serialise or parse a message this large
ROOM_FOR_GRAPH = 16 * 2**20  # bytes kept free for the graph and metadata beside the weights


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload_size: int) -> bytes:
    """The key and length of length-delimited field `number` (its payload follows)."""
    return varint(number << 3 | 2) + varint(payload_size)


def too_big(graph: Graph) -> bool:
    """Whether the weights are past what one protobuf message can hold beside the graph."""
    return graph.weight_bytes() > PROTOBUF_LIMIT - ROOM_FOR_GRAPH


def check_protobuf_size(graph: Graph, what: str, instead: str) -> None:
    """Refuse, before anything is written, weights that one protobuf message cannot hold."""
    if too_big(graph):
        raise CkptkitError(f"this model's weights are {graph.weight_bytes() / 2**30:.2f} GiB, and {what} is one "
                           f"protobuf message, which cannot reach 2 GiB: {instead}")
