"""ckptkit.core.pages: weights held in the page cache. What matters is that giving pages back never changes a
value (a clean file page is read again; a scratch page was written to its file), and that only maps made
here are touched: an ordinary array, or an anonymous map whose pages would come back as zeros, is left alone."""
import mmap
import os

import numpy as np
import pytest

from ckptkit.core import pages

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
    import gc

    a = pages.scratch((1 << 20,), np.float32)
    address = a.ctypes.data  # a scratch array starts its map
    assert address in pages._MAPS
    del a
    gc.collect()
    assert address not in pages._MAPS


def test_scratch_on_a_full_disk_is_one_clear_error(monkeypatch):
    """No room for the folded weights: a CkptkitError naming the size, the folder and the fix (a write into
    a sparse map on a full disk would be a SIGBUS instead)."""
    import errno
    import os

    from ckptkit.core.errors import CkptkitError

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CkptkitError, match=r"no room for 16 MB of scratch space .*TMPDIR"):
        pages.scratch((4 << 20,), np.float32)


@pytest.mark.parametrize("command", [["to-onnx"], ["to-caffe"]])
def test_a_full_scratch_disk_fails_the_export_in_one_line(command, run_cli, tmp_path, monkeypatch):
    """The folded weights go to TMPDIR: with no room there (a 4 kB tmpfs), an export stops with one line
    naming the size and the fix, and writes nothing."""
    import subprocess
    import tempfile

    from conftest import FIXTURE

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("mounting a small file system needs CAP_SYS_ADMIN here")
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(small))
        monkeypatch.setattr(pages, "SCRATCH_BYTES", 1024)  # the fixture's weights are small: scratch all of them
        out = tmp_path / "out"
        target = "model.onnx" if command[0] == "to-onnx" else "model.prototxt"
        run = run_cli(command[0], FIXTURE, "-o", out / target)
        assert run.returncode == 2, run.stderr
        last = run.stderr.strip().splitlines()[-1]
        assert "Traceback" not in run.stderr and "no room for" in last and "TMPDIR" in last, last
        assert not out.exists()
        assert not [f for f in os.listdir(small) if "scratch" in f or "mnn" in f], "a scratch file stayed behind"
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_write_array_writes_any_view_in_c_order(tmp_path):
    """Transposed, sliced, reversed and cast views come out as numpy's own C-order bytes of the view."""
    import io

    rng = np.random.default_rng(3)
    base = rng.normal(size=(3, 5, 7, 11)).astype(np.float32)
    views = [base, base.transpose(3, 2, 0, 1), base[:, ::2, ::-1], base.transpose(2, 3, 1, 0)[1:, :, ::3],
             base[0, 0], np.float32(2.5) * np.ones(()), base.astype(">f4").transpose(1, 0, 2, 3)]
    for v in views:
        for dtype in (None, "<f4", np.float64):
            buf = io.BytesIO()
            n = pages.write_array(buf, v, dtype)
            want = np.ascontiguousarray(v, dtype or v.dtype).tobytes()
            assert n == len(want) and buf.getvalue() == want, (v.shape, v.strides, dtype)
    monkey = pages.WRITE_SLAB
    try:
        pages.WRITE_SLAB = 64  # slabs of one row: the row boundaries too
        buf = io.BytesIO()
        pages.write_array(buf, views[1], "<f4")
        assert buf.getvalue() == np.ascontiguousarray(views[1]).tobytes()
    finally:
        pages.WRITE_SLAB = monkey


@pytest.mark.fast
@pytest.mark.parametrize("shape, itemsize, budget, rows", [
    ((100, 4, 4), 4, 1024, 16),  # 64-byte rows: 16 fit
    ((100, 4, 4), 8, 1000, 7),  # 128-byte rows: 7 fit, the rest of the budget unused
    ((10,), 4, 12, 3),  # a 1-D array: one element a row
    ((3, 1 << 20), 4, 1024, 1),  # a row past the budget: still one row a step
    ((0, 8), 4, 64, 2),  # an empty array: a step that covers nothing
])
def test_slab_rows_fit_the_budget(shape, itemsize, budget, rows):
    assert pages.slab_rows(shape, itemsize, budget) == rows
