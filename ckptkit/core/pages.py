"""Weights that live in the page cache, not in the process: read-only maps of checkpoint data, scratch maps.

A big model's weights are read, scaled, transposed and written once each, yet held by the IR for the whole
command. Held as anonymous memory they add the checkpoint's size to the process at every step (and a
second time while a runtime holds its own copy). Held as file-backed maps they cost resident memory only
while touched, and `release` hands the touched pages back (madvise DONTNEED: a clean page is simply
unmapped, and read again from the page cache if touched again; the file and its cache are untouched):

* `map_file(path)`: a read-only map of a checkpoint's data file; `view` gives a tensor over it, zero-copy.
  Read-only, so nothing can write into a user's checkpoint through it.
* `scratch(shape, dtype)`: a writeable array over an unlinked temporary file in TMPDIR (its blocks allocated
  up front, so a full disk is a CkptkitError here, not a SIGBUS later; gone with the process, even on
  kill -9): where a fold puts the weights it makes. (A TMPDIR on tmpfs holds them in memory again.)

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
_MAPS: dict[int, tuple["weakref.ref[mmap.mmap]", int]] = {}  # start address -> (the map, its size), while it lives


class Mapping:
    """One mmap and the address range it occupies (so an array's pages can be found from its pointer). The
    arrays viewing a map keep the mmap alive, and it stays findable as long as it lives."""

    def __init__(self, m: mmap.mmap, size: int):
        self.mmap = m
        self.size = size
        self.address = np.frombuffer(m, np.uint8).ctypes.data
        address = self.address
        _MAPS[address] = (weakref.ref(m, lambda _: _MAPS.pop(address, None)), size)

    def view(self, offset: int, shape: tuple, dtype) -> np.ndarray:
        """A zero-copy array of `shape`/`dtype` at `offset` (read-only when the map is)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.mmap, dtype, count=count, offset=offset).reshape(shape)

    def release(self, start: int = 0, length: Optional[int] = None) -> None:
        """Give back the resident pages of bytes [start, start + length)."""
        _advise(self.mmap, self.size, start, length)


def _advise(m: mmap.mmap, size: int, start: int = 0, length: Optional[int] = None) -> None:
    end = size if length is None else min(size, start + length)
    first = start - start % PAGE
    if end > first:
        try:
            m.madvise(mmap.MADV_DONTNEED, first, end - first)
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
    try:
        with tempfile.TemporaryFile(prefix="ckptkit-scratch-") as f:
            os.posix_fallocate(f.fileno(), 0, nbytes)  # a full disk fails here, not as SIGBUS on a write
            m = mmap.mmap(f.fileno(), nbytes, access=mmap.ACCESS_WRITE)
    except OSError as err:
        from ckptkit.core.errors import CkptkitError

        raise CkptkitError(f"no room for {nbytes / 2**20:.0f} MB of scratch space (folded weights) in "
                           f"{tempfile.gettempdir()} ({err.strerror}): free space there, or point TMPDIR at a "
                           "disk with room") from None
    return Mapping(m, nbytes).view(0, shape, dtype)


ALIGN = 64  # TensorFlow takes a fed array without copying it only when its data is 64-byte aligned
COPY_CHUNK = 32 << 20


def aligned_copy(a: np.ndarray, dtype=None) -> np.ndarray:
    """A C-contiguous, 64-byte-aligned copy of `a` (as `dtype`), made a chunk at a time with the source's
    mapped pages given back as it goes: what TensorFlow can be fed without a copy of its own."""
    dtype = np.dtype(dtype or a.dtype)
    nbytes = a.size * dtype.itemsize
    if nbytes >= SCRATCH_BYTES:  # its own anonymous map: page-aligned, and unmapped (not kept by malloc) when freed
        out = np.frombuffer(mmap.mmap(-1, nbytes), dtype, count=a.size).reshape(a.shape)
    else:
        raw = np.empty(nbytes + ALIGN, np.uint8)
        start = -raw.ctypes.data % ALIGN
        out = raw[start:start + nbytes].view(dtype).reshape(a.shape)
    if a.ndim == 0 or a.size == 0:
        out[...] = a
        return out
    rows = slab_rows(a.shape, dtype.itemsize, COPY_CHUNK)
    for i in range(0, a.shape[0], rows):
        out[i:i + rows] = a[i:i + rows]
        release(a[i:i + rows])
    return out


def slab_rows(shape: tuple, itemsize: int, budget: int) -> int:
    """How many rows of the first axis of an array of `shape` fit in `budget` bytes at `itemsize` each (at least 1):
    the step of every slab-wise loop over a big tensor."""
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else itemsize
    return max(1, budget // max(1, row))


WRITE_SLAB = 4 << 20  # small enough that a slab's reordering stays in the CPU's caches


def _c_order(part: np.ndarray, dtype) -> np.ndarray:
    """`part` as a C-contiguous array of `dtype`, read in its own memory order first (a transposed kernel's
    view read element by element jumps a page per element: 0.87 s for vgg's fc6, against 0.24 s this way)."""
    order = np.argsort([-abs(s) for s in part.strides], kind="stable")
    in_memory_order = np.ascontiguousarray(part.transpose(order))
    return np.ascontiguousarray(in_memory_order.transpose(np.argsort(order)), dtype)


def write_array(f, a: np.ndarray, dtype=None) -> int:
    """Write `a` as C-order bytes of `dtype` (default its own) to the binary file `f`; returns the bytes
    written. A view that needs reordering or a cast goes a slab of the first axis at a time (a transposed
    400 MB kernel is never copied whole), and the pages of a mapped source are given back after."""
    dtype = np.dtype(dtype or a.dtype)
    if a.dtype == dtype and a.flags.c_contiguous:
        f.write(memoryview(a.reshape(-1)).cast("B"))
    elif a.ndim == 0:
        f.write(np.asarray(a, dtype).tobytes())
    else:
        rows = slab_rows(a.shape, dtype.itemsize, WRITE_SLAB)
        for start in range(0, a.shape[0], rows):
            f.write(memoryview(_c_order(a[start:start + rows], dtype).reshape(-1)).cast("B"))
    release(a)
    return a.size * dtype.itemsize


def _owner(address: int) -> Optional[tuple[mmap.mmap, int, int]]:
    """(map, its start address, its size) of the live map holding `address`, if one was made here."""
    for start, (ref, size) in list(_MAPS.items()):
        if start <= address < start + size:
            m = ref()
            if m is not None:
                return m, start, size
    return None


def release(*arrays) -> None:
    """Hand back the resident pages under each array that lives in a map made here (others: nothing)."""
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.size == 0:
            continue
        low, high = byte_bounds(a)
        owner = _owner(low)
        if owner is not None:
            m, start, size = owner
            _advise(m, size, low - start, high - low)


def is_mapped(a: np.ndarray) -> bool:
    """True when `a` lives in a map made here (its memory is the page cache's)."""
    return isinstance(a, np.ndarray) and a.size > 0 and _owner(byte_bounds(a)[0]) is not None


def trim() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim; elsewhere nothing)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
