"""ckptkit.pages: weights held in the page cache. What matters is that giving pages back never changes a
value (a clean file page is read again; a scratch page was written to its file), and that only maps made
here are touched: an ordinary array, or an anonymous map whose pages would come back as zeros, is left alone."""
import mmap

import numpy as np
import pytest

from ckptkit import pages

pytestmark = pytest.mark.fast


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE / 2**20


def test_scratch_values_survive_release():
    a = pages.scratch((64, 1 << 16), np.float32)  # 16 MiB: a file-backed map
    assert pages.is_mapped(a) and a.flags.writeable and not a.any()
    a[:] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    before = _resident_mb()
    pages.release(a)
    assert _resident_mb() < before - 8  # the pages went back...
    assert np.array_equal(a.reshape(-1), np.arange(a.size, dtype=np.float32))  # ...and the values did not change


def test_small_scratch_is_an_ordinary_array():
    a = pages.scratch((4, 4), np.float64)
    assert not pages.is_mapped(a) and a.flags.writeable and not a.any()


def test_release_leaves_other_memory_alone():
    plain = np.arange(1 << 20, dtype=np.float32)
    anon = np.frombuffer(mmap.mmap(-1, 4 << 20), np.float32)
    anon[:] = 7
    pages.release(plain, anon, plain[::3], np.zeros(0))
    assert plain[-1] == (1 << 20) - 1 and np.all(anon == 7)
    assert not pages.is_mapped(plain) and not pages.is_mapped(anon)


def test_aligned_copy_is_aligned_equal_and_leaves_the_source(tmp_path):
    path = tmp_path / "data"
    src = np.random.default_rng(0).normal(size=(300, 1001)).astype(np.float32)
    path.write_bytes(b"\0" * 8 + src.tobytes())  # at offset 8: not 64-byte aligned, as checkpoint tensors are
    view = pages.map_file(str(path)).view(8, src.shape, np.float32)
    assert view.ctypes.data % pages.ALIGN
    for dtype in (np.float32, np.float64):
        out = pages.aligned_copy(view, dtype)
        assert out.ctypes.data % pages.ALIGN == 0 and out.flags.c_contiguous and out.dtype == dtype
        assert np.array_equal(out, src.astype(dtype))
    assert np.array_equal(view, src)


def test_maps_are_forgotten_with_their_arrays():
    a = pages.scratch((1 << 20,), np.float32)
    count = len(pages._MAPS)
    del a
    import gc

    gc.collect()
    assert len(pages._MAPS) == count - 1
