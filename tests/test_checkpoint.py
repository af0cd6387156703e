"""Checkpoint resolution, lazy reading, atomic writing, and one-line errors on bad input."""
import os
import shutil

import numpy as np
import pytest

from ckptkit import CkptkitError
from ckptkit.read.checkpoint import Checkpoint, resolve_prefix, write_checkpoint
from conftest import FIXTURE


def test_prefix_file_and_folder_resolve_to_the_same_prefix():
    prefix = os.path.abspath(FIXTURE)
    for given in (prefix, prefix + ".index", prefix + ".data-00000-of-00001", prefix + ".meta", os.path.dirname(prefix)):
        assert os.path.abspath(resolve_prefix(given)) == prefix


def test_reads_tensors_lazily_with_shapes():
    ckpt = Checkpoint(FIXTURE)
    assert ckpt.version == 2
    assert ckpt.tensors["Conv/weights"].shape == (3, 3, 3, 8)
    assert ckpt.get("Conv/weights").shape == (3, 3, 3, 8)


def test_v1_checkpoint_is_read(tmp_path):
    from ckptkit.core.lazy_tf import tf, tf1

    g = tf().Graph()
    with g.as_default():
        v = tf1.get_variable("a/weights", initializer=np.arange(6, dtype=np.float32).reshape(2, 3))
        saver = tf1.train.Saver(write_version=tf1.train.SaverDef.V1)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            saver.save(sess, str(tmp_path / "old.ckpt"), write_meta_graph=False)
    ckpt = Checkpoint(str(tmp_path / "old.ckpt"))
    assert ckpt.version == 1
    np.testing.assert_array_equal(ckpt.get("a/weights"), np.arange(6).reshape(2, 3))


def test_missing_path_is_a_one_line_error(tmp_path):
    with pytest.raises(CkptkitError, match="no checkpoint at .*nothing"):
        Checkpoint(str(tmp_path / "nothing"))
    with pytest.raises(CkptkitError, match="no checkpoint in folder"):
        Checkpoint(str(tmp_path))


def _copy_fixture(tmp_path):
    dst = tmp_path / "c"
    shutil.copytree(os.path.dirname(FIXTURE), dst)
    return str(dst / "model.ckpt")


def test_garbage_index_names_the_file(tmp_path):
    prefix = _copy_fixture(tmp_path)
    with open(prefix + ".index", "wb") as f:
        f.write(b"this is not a table" * 10)
    with pytest.raises(CkptkitError, match=r"model\.ckpt\.index is damaged"):
        Checkpoint(prefix)


def test_truncated_data_shard_names_the_file(tmp_path):
    prefix = _copy_fixture(tmp_path)
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CkptkitError, match=r"data-00000-of-00001"):
        ckpt = Checkpoint(prefix)
        for name in ckpt.names:
            ckpt.get(name)


def test_corrupt_data_bytes_are_detected(tmp_path):
    prefix = _copy_fixture(tmp_path)
    data = prefix + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[200:260] = b"\xff" * 60
    open(data, "wb").write(bytes(raw))
    with pytest.raises(CkptkitError, match="damaged"):
        ckpt = Checkpoint(prefix)
        for name in ckpt.names:
            ckpt.get(name)


def test_write_streams_in_chunks_and_leaves_no_temporaries(tmp_path):
    tensors = [(f"t{i}", np.full((100,), i, np.float32)) for i in range(10)]
    files = write_checkpoint(str(tmp_path / "out.ckpt"), iter(tensors), chunk_bytes=800)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(f) for f in files] + ["checkpoint"])
    back = Checkpoint(str(tmp_path / "out.ckpt"))
    for name, value in tensors:
        np.testing.assert_array_equal(back.get(name), value)


def test_write_keeps_every_dtype_and_layout(tmp_path):
    """Zero-copy (DLPack) where possible, a plain conversion elsewhere: the values are the same."""
    frozen = np.arange(6, dtype=np.float32).reshape(2, 3)
    frozen.setflags(write=False)
    tensors = {"f16": np.linspace(-1, 1, 7).astype(np.float16), "f64": np.random.default_rng(0).normal(size=(3, 4)),
               "i64": np.arange(-3, 3, dtype=np.int64), "i32": np.array(7, np.int32), "bool": np.array([True, False]),
               "strided": np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2], "readonly": frozen,
               "empty": np.zeros((0, 3), np.float32), "str": np.array([b"a", b"bc"], dtype=object)}
    write_checkpoint(str(tmp_path / "out.ckpt"), iter(tensors.items()))
    back = Checkpoint(str(tmp_path / "out.ckpt"))
    for name, value in tensors.items():
        got = back.get(name)
        assert got.dtype == value.dtype and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value)


def test_failed_write_leaves_nothing(tmp_path):
    def broken():
        yield "a", np.zeros(3, np.float32)
        raise CkptkitError("boom")

    with pytest.raises(CkptkitError, match="boom"):
        write_checkpoint(str(tmp_path / "out.ckpt"), broken())
    assert os.listdir(tmp_path) == []


def test_input_is_never_overwritten():
    with pytest.raises(CkptkitError, match="is the input checkpoint"):
        write_checkpoint(FIXTURE, iter([("a", np.zeros(1))]), protect=[FIXTURE])


def test_moved_folder_with_absolute_state_file(tmp_path):
    prefix = _copy_fixture(tmp_path)
    folder = os.path.dirname(prefix)
    with open(os.path.join(folder, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "/old/machine/train/model.ckpt"\n')
    assert resolve_prefix(folder) == os.path.join(folder, "model.ckpt")
