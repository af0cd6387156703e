"""Weights that live in the page cache, not in the process: read-only maps of checkpoint data, scratch maps.

A big model's weights are read, scaled, transposed and written once each, yet held by the IR for the whole
command. Held as anonymous memory they add the checkpoint's size to the process at every step (and a
second time while a runtime holds its own copy). Held as file-backed maps they cost resident memory only
while touched, and `release` hands the touched pages back (madvise DONTNEED: a clean page is simply
unmapped, and read again from the page cache if touched again; the file and its cache are untouched):

* `map_file(path)`: a read-only map of a checkpoint's data file; `view` gives a tensor over it, zero-copy.
  Read-only, so nothing can write into a user's checkpoint through it.
* `scratch(shape, dtype)`: a writeable array over an unlinked temporary file (its blocks allocated up
  front, so a full disk is an OSError here, not a SIGBUS later): where a fold puts the weights it makes.

`release(*arrays)` is safe on any array: one not in such a map is left alone.
"""
from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from typing import Optional

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    byte_bounds = np.byte_bounds

PAGE = mmap.PAGESIZE
SCRATCH_BYTES = 1 << 20  # smaller arrays are not worth a file
_MAPS: "weakref.WeakSet[Mapping]" = weakref.WeakSet()


class Mapping:
    """One mmap and the address range it occupies (so an array's pages can be found from its pointer)."""

    def __init__(self, m: mmap.mmap, size: int):
        self.mmap = m
        self.size = size
        self.bytes = np.frombuffer(m, np.uint8) if size else np.empty(0, np.uint8)
        self.address = self.bytes.ctypes.data
        _MAPS.add(self)

    def view(self, offset: int, shape: tuple, dtype) -> np.ndarray:
        """A zero-copy array of `shape`/`dtype` at `offset` (read-only when the map is)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.mmap, dtype, count=count, offset=offset).reshape(shape)

    def release(self, start: int = 0, length: Optional[int] = None) -> None:
        """Give back the resident pages of bytes [start, start + length) (whole pages only)."""
        end = self.size if length is None else min(self.size, start + length)
        first = start - start % PAGE
        if end > first:
            try:
                self.mmap.madvise(mmap.MADV_DONTNEED, first, end - first)
            except (ValueError, OSError):  # a closed map, or a kernel without madvise: nothing to give back
                pass


def map_file(path: str) -> Optional[Mapping]:
    """A read-only map of `path`, or None when it cannot be mapped (empty, or a filesystem without mmap)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None
            return Mapping(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size)
    except (OSError, ValueError):
        return None


def scratch(shape: tuple, dtype) -> np.ndarray:
    """A zeroed, writeable array; past SCRATCH_BYTES it lives in an unlinked temporary file (page cache)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < SCRATCH_BYTES:
        return np.zeros(shape, dtype)
    with tempfile.TemporaryFile(prefix="ckptkit-scratch-") as f:
        os.posix_fallocate(f.fileno(), 0, nbytes)  # ENOSPC now, as an OSError, rather than SIGBUS on a write
        m = mmap.mmap(f.fileno(), nbytes, access=mmap.ACCESS_WRITE)
    return Mapping(m, nbytes).view(0, shape, dtype)


def _owner(address: int) -> Optional[Mapping]:
    for m in list(_MAPS):
        if m.size and m.address <= address < m.address + m.size:
            return m
    return None


def release(*arrays) -> None:
    """Hand back the resident pages under each array that lives in a map made here (others: nothing)."""
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.size == 0:
            continue
        low, high = byte_bounds(a)
        owner = _owner(low)
        if owner is not None:
            owner.release(low - owner.address, high - low)


def release_all() -> None:
    """Hand back every resident page of every map made here."""
    for m in list(_MAPS):
        m.release()


def is_mapped(a: np.ndarray) -> bool:
    """True when `a` lives in a map made here (its memory is the page cache's)."""
    return isinstance(a, np.ndarray) and a.size > 0 and _owner(byte_bounds(a)[0]) is not None
