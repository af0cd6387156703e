"""Writing an ONNX model whose weights never sit in memory twice.

`onnx.helper` builds a ModelProto holding a copy of every weight and `onnx.save` serialises it into
one more, so a model costs three times its weights in memory and protobuf refuses anything past
2 GiB. Here each weight goes to a spool file the moment a writer creates it (`TensorSpool.add`), the
model is built with those weights as external-data references into the spool (so onnx.checker checks
the real structure without loading a byte of data), and then either

- the spool *is* the data file (`NAME.onnx` + `NAME.onnx.data`, ONNX's external data, past 2 GiB), or
- one `.onnx` file is assembled from the skeleton and the spool, each tensor copied file to file.

The single file is standard protobuf: a message may arrive in parts (the parts merge), so the model is
written as [its fields before `graph`] [graph: nodes..., every initializer, inputs...] [fields after],
in field-number order, each initializer a TensorProto [dims, data_type, name][raw_data], with lengths
computed up front. onnx.load, onnxruntime and Netron read it as if onnx.save had written it.
"""
from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

from ckptkit.converters.protobuf_wire import field

ALIGN = 4096  # external tensors start on a page, so a runtime may map them
INLINE_BYTES = 1024  # smaller constants stay inside the model (as onnx's own external-data writer does)

# protobuf field numbers of the fields spliced here
MODEL_GRAPH = 7  # ModelProto.graph
GRAPH_INITIALIZER = 5  # GraphProto.initializer
TENSOR_RAW_DATA = 9  # TensorProto.raw_data


class TensorSpool:
    """Weights appended to one file as the model is built; each becomes an external-data TensorProto."""

    def __init__(self, path: str):
        self.path = path
        self.file: BinaryIO = open(path, "wb")
        self.size = 0
        self.spooled: list = []  # (TensorProto with external_data, offset, length)

    def add(self, name: str, value: np.ndarray, dtype=None):
        """The TensorProto of `value` (as `dtype`, default its own): inline when small, else its bytes appended
        to the spool (`pages.write_array`: a transposed or cast view is never copied whole)."""
        from onnx import TensorProto, helper, numpy_helper

        from ckptkit.core import pages

        value = np.asarray(value)
        dtype = np.dtype(dtype or value.dtype).newbyteorder("<")  # ONNX raw data is little-endian
        if value.nbytes < INLINE_BYTES or value.dtype == object:
            return numpy_helper.from_array(np.ascontiguousarray(value, dtype.newbyteorder("=")), name)
        pad = -self.size % ALIGN
        self.file.write(b"\0" * pad)
        offset = self.size + pad
        nbytes = pages.write_array(self.file, value, dtype)
        self.size = offset + nbytes
        tensor = TensorProto()
        tensor.name = name
        tensor.dims.extend(value.shape)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(dtype.newbyteorder("="))
        tensor.data_location = TensorProto.EXTERNAL
        for key, v in (("location", os.path.basename(self.path)), ("offset", str(offset)),
                       ("length", str(nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, v
        self.spooled.append((tensor, offset, nbytes))
        return tensor

    def close(self) -> None:
        self.file.close()


def _external(tensor) -> tuple[int, int]:
    info = {e.key: e.value for e in tensor.external_data}
    return int(info["offset"]), int(info["length"])


def assemble(model, spool_path: str, out_path: str) -> int:
    """Write `model` (its big initializers external references into `spool_path`) as one self-contained
    .onnx file at `out_path`, copying each tensor file to file; returns the file's size in bytes."""
    from onnx import GraphProto, ModelProto, TensorProto

    graph = model.graph
    external = [t for t in graph.initializer if t.data_location == TensorProto.EXTERNAL]
    records = []  # (bytes before the tensor's data, offset in the spool, length)
    for t in external:
        header = TensorProto()
        header.CopyFrom(t)
        header.ClearField("external_data")
        header.ClearField("data_location")
        offset, length = _external(t)
        head = header.SerializeToString() + field(TENSOR_RAW_DATA, length)
        records.append((field(GRAPH_INITIALIZER, len(head) + length) + head, offset, length))

    def part(message, cls, keep) -> bytes:
        """The serialised fields of `message` whose numbers `keep` accepts (a message arrives in parts)."""
        piece = cls()
        piece.CopyFrom(message)
        for f, _ in message.ListFields():
            if not keep(f.number):
                piece.ClearField(f.name)
        return piece.SerializeToString()

    inline = GraphProto()
    inline.CopyFrom(graph)
    del inline.initializer[:]
    inline.initializer.extend(t for t in graph.initializer if t.data_location != TensorProto.EXTERNAL)
    graph_head = part(inline, GraphProto, lambda n: n <= 5)  # node, name, inline initializers
    graph_tail = part(inline, GraphProto, lambda n: n > 5)  # doc_string, input, output, value_info, ...
    graph_size = len(graph_head) + sum(len(h) + n for h, _, n in records) + len(graph_tail)
    model_head = part(model, ModelProto, lambda n: n < 7)
    model_tail = part(model, ModelProto, lambda n: n > 7)
    with open(out_path, "wb") as out, open(spool_path, "rb") as spool:
        out.write(model_head + field(MODEL_GRAPH, graph_size) + graph_head)
        for head, offset, length in records:
            out.write(head)
            out.flush()
            _copy(spool, out, offset, length)
        out.write(graph_tail + model_tail)
        return out.tell()


def _copy(src: BinaryIO, dst: BinaryIO, offset: int, length: int) -> None:
    """Bytes [offset, offset + length) of src appended to dst, in the kernel where it can."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src.fileno(), dst.fileno(), length - done, offset + done)
            if n == 0:
                raise OSError("copy_file_range copied nothing")
            done += n
        dst.seek(0, os.SEEK_END)
        return
    except (AttributeError, OSError) as err:
        if getattr(err, "errno", None) == 28:  # ENOSPC: the caller's Stage reports a full disk
            raise
    src.seek(offset + done)
    dst.seek(0, os.SEEK_END)
    remaining = length - done
    while remaining:
        chunk = src.read(min(remaining, 64 * 2**20))
        if not chunk:
            raise OSError(f"{src.name} ended early")
        dst.write(chunk)
        remaining -= len(chunk)

