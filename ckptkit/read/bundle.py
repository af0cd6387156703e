"""Read TensorFlow V2 checkpoints (tensor bundles) without importing TensorFlow.

A V2 checkpoint is PREFIX.index, a LevelDB-format table mapping "" to a BundleHeaderProto and each
tensor name to a BundleEntryProto (dtype, shape, shard, offset, size, masked crc32c of the bytes), and
PREFIX.data-SSSSS-of-NNNNN shards holding the raw little-endian tensor bytes. Every block of the table
and every tensor read (or first viewed) is crc32c-checked, as TensorFlow's reader does. What this reader does not handle
(V1 checkpoints, compressed tables, partitioned or string tensors, big-endian bundles) raises
`Unsupported`, and the caller falls back to TensorFlow's reader.
"""
from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

import numpy as np

from ckptkit.core.errors import CkptkitError

_MAGIC = 0xDB4775248B80FB57  # LevelDB table magic, as TensorFlow's table writer uses it
_FOOTER = 48
_MASK_DELTA = 0xA282EAD8
# TensorFlow DataType -> numpy dtype name (the numeric types checkpoints hold)
_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 9: "int64", 10: "bool",
           17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}


class Unsupported(Exception):
    """A checkpoint feature this reader leaves to TensorFlow."""


@functools.lru_cache(maxsize=None)
def _messages():
    """BundleHeaderProto and BundleEntryProto (tensorflow/core/protobuf/tensor_bundle.proto)."""
    from ckptkit.core.proto import message_classes

    m = message_classes("ckptkit_bundle", {
        "TensorShapeProto": [("dim", 2, "Dim", "repeated"), ("unknown_rank", 3, "bool")],
        "Dim": [("size", 1, "int64"), ("name", 2, "string")],
        "VersionDef": [("producer", 1, "int32"), ("min_consumer", 2, "int32"), ("bad_consumers", 3, "int32", "repeated")],
        "BundleHeaderProto": [("num_shards", 1, "int32"), ("endianness", 2, "int32"),  # enum LITTLE=0, BIG=1
                              ("version", 3, "VersionDef")],
        "TensorSliceProto": [],  # only its presence matters: partitioned variables go to TensorFlow
        "BundleEntryProto": [("dtype", 1, "int32"), ("shape", 2, "TensorShapeProto"),  # dtype: enum DataType
                             ("shard_id", 3, "int32"), ("offset", 4, "int64"), ("size", 5, "int64"),
                             ("crc32c", 6, "fixed32"), ("slices", 7, "TensorSliceProto", "repeated")],
    })
    return m["BundleHeaderProto"], m["BundleEntryProto"]


def _crc32c(data, value: int = 0) -> int:
    """crc32c of any buffer, continuing from `value` (the `crc32c` package reads numpy arrays in place,
    hardware-accelerated)."""
    import crc32c

    return crc32c.crc32c(data, value)


CRC_CHUNK = 32 << 20  # a mapped tensor is checked this much at a time, each part's pages given back


def unmask(masked: int) -> int:
    """TensorFlow stores crc32c values masked: rot = masked - delta, crc = rotl(rot, 15)."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _block(data: bytes, offset: int, size: int, what: str) -> bytes:
    """A table block's contents, its trailer (compression type, masked crc32c of contents + type) checked."""
    end = offset + size + 5
    if offset < 0 or end > len(data):
        raise ValueError(f"{what} block lies outside the file")
    contents, kind = data[offset:offset + size], data[offset + size]
    (masked,) = struct.unpack_from("<I", data, offset + size + 1)
    if unmask(masked) != _crc32c(contents + bytes([kind])):
        raise ValueError(f"{what} block fails its crc32c check")
    if kind != 0:
        raise Unsupported(f"compressed table block (type {kind})")
    return contents


def _entries(block: bytes):
    """(key, value) of a table block: prefix-compressed keys, restart array at the end."""
    if len(block) < 4:
        raise ValueError("block too short")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise ValueError("bad restart count")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise ValueError("bad block entry")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int  # unmasked crc32c of the bytes


class Bundle:
    """The tensor index of a V2 checkpoint, read and checked without TensorFlow; tensors read on request."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._maps: dict = {}  # shard -> pages.Mapping (None: not mappable)
        self._checked: set[str] = set()  # tensors whose crc32c a view has checked
        from ckptkit.core.safe_io import MAX_GRAPH_BYTES, read_bounded

        data = read_bounded(prefix + ".index", "checkpoint index", MAX_GRAPH_BYTES)
        try:
            self.entries, self.num_shards = self._parse(data)
        except (ValueError, struct.error) as err:
            raise CkptkitError(f"checkpoint {prefix}.index is damaged or not a TensorFlow checkpoint ({err}): "
                               "re-copy or re-save it") from None
        except Exception as err:  # protobuf's DecodeError and friends
            if isinstance(err, Unsupported):
                raise
            raise CkptkitError(f"checkpoint {prefix}.index is damaged or not a TensorFlow checkpoint "
                               f"({type(err).__name__}): re-copy or re-save it") from None

    def _parse(self, data: bytes) -> tuple[dict[str, Entry], int]:
        if len(data) < _FOOTER:
            raise ValueError("file too short for a table footer")
        footer = data[-_FOOTER:]
        (magic,) = struct.unpack_from("<Q", footer, 40)
        if magic != _MAGIC:
            raise ValueError("not a table (bad magic number)")
        _, pos = _varint(footer, 0)  # metaindex handle: unused
        _, pos = _varint(footer, pos)
        index_offset, pos = _varint(footer, pos)
        index_size, pos = _varint(footer, pos)
        Header, EntryProto = _messages()
        entries: dict[str, Entry] = {}
        num_shards = None
        for _, handle in _entries(_block(data, index_offset, index_size, "index")):
            offset, p = _varint(handle, 0)
            size, _ = _varint(handle, p)
            for key, value in _entries(_block(data, offset, size, "data")):
                if key == b"":
                    header = Header.FromString(value)
                    if header.endianness != 0:
                        raise Unsupported("big-endian bundle")
                    num_shards = header.num_shards
                    continue
                try:
                    name = key.decode("utf-8")
                except UnicodeDecodeError:  # the binary keys of a partitioned variable's slices
                    raise Unsupported("partitioned variables") from None
                e = EntryProto.FromString(value)
                if len(e.slices):
                    raise Unsupported(f"partitioned variable {name}")
                if e.dtype not in _DTYPES:
                    raise Unsupported(f"tensor {name} of TensorFlow dtype {e.dtype}")
                shape = tuple(int(d.size) for d in e.shape.dim)
                entries[name] = Entry(name, _DTYPES[e.dtype], shape, e.shard_id, e.offset, e.size, unmask(e.crc32c))
        if num_shards is None:
            raise ValueError("no bundle header")
        return dict(sorted(entries.items())), num_shards

    def shard_path(self, shard: int) -> str:
        return f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}"

    def _located(self, name: str) -> tuple[Entry, str, np.dtype]:
        """The entry, its data file and dtype, after checking the file holds what the index declares."""
        e = self.entries[name]
        path = self.shard_path(e.shard)
        dtype = np.dtype(e.dtype).newbyteorder("<")
        nbytes = int(np.prod(e.shape, dtype=object)) * dtype.itemsize  # exact: no int64 overflow on hostile shapes
        if e.size != nbytes or min(e.shape, default=0) < 0:
            raise CkptkitError(f"tensor {name} cannot be read from {path} (its index gives {e.size} bytes for "
                               f"{e.dtype}{list(e.shape)}): the checkpoint is damaged; re-copy or re-save it")
        from ckptkit.core.safe_io import check_regular

        # the data file must be a regular file holding what the index declares before anything is allocated
        available = check_regular(path, "checkpoint data file").st_size - e.offset
        if e.offset < 0 or e.size > available:
            raise CkptkitError(f"tensor {name} cannot be read from {path} (its index declares {e.size} bytes at "
                               f"offset {e.offset}; the file holds {max(available, 0)} from there): the checkpoint "
                               "is damaged or truncated; re-copy or re-save it")
        return e, path, dtype

    def _check_crc(self, name: str, path: str, data: np.ndarray) -> None:
        from ckptkit.core.pages import release

        raw = data.reshape(-1).view(np.uint8)
        crc = 0
        for start in range(0, raw.size, CRC_CHUNK):
            part = raw[start:start + CRC_CHUNK]
            crc = _crc32c(part, crc)
            release(part)
        if crc != self.entries[name].crc:
            raise CkptkitError(f"tensor {name} cannot be read from {path} (crc32c mismatch): the data file is "
                               "damaged; re-copy or re-save it")

    def read(self, name: str) -> np.ndarray:
        """The tensor's values (a new, writeable array), its bytes crc32c-checked."""
        e, path, dtype = self._located(name)
        out = np.empty(e.shape, dtype)
        try:
            with open(path, "rb") as f:
                f.seek(e.offset)
                got = f.readinto(memoryview(out.reshape(-1)).cast("B")) if out.size else 0
        except OSError as err:
            raise CkptkitError(f"tensor {name} cannot be read from {path} ({err.strerror}): re-copy the checkpoint") \
                from None
        if got != e.size:
            raise CkptkitError(f"tensor {name} cannot be read from {path} (the file ends early): the data file is "
                               "damaged; re-copy or re-save it")
        self._check_crc(name, path, out)
        return out

    def view(self, name: str) -> np.ndarray:
        """The tensor as a read-only, zero-copy view of its data file (ckptkit.core.pages), crc32c-checked the first
        time; its pages are the page cache's, given back after the check. A file that cannot be mapped is read."""
        from ckptkit.core import pages

        e, path, dtype = self._located(name)
        if e.shard not in self._maps:
            self._maps[e.shard] = pages.map_file(path)
        mapping = self._maps[e.shard]
        if mapping is None or e.size == 0 or e.offset + e.size > mapping.size:
            return self.read(name)
        out = mapping.view(e.offset, e.shape, dtype)
        if name not in self._checked:
            self._check_crc(name, path, out)
            self._checked.add(name)
        return out

    def release(self) -> None:
        """Give back the resident pages of every data file mapped so far."""
        for mapping in self._maps.values():
            if mapping is not None:
                mapping.release()


def open_bundle(prefix: str):
    """A Bundle for a V2 checkpoint this reader handles, else None (TensorFlow's reader is used instead)."""
    if not os.path.isfile(prefix + ".index"):
        return None
    try:
        return Bundle(prefix)
    except Unsupported:
        return None
