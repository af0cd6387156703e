"""The TF-free V2 checkpoint reader (ckptkit/read/bundle.py) against TensorFlow's own reader: every tensor bit for
bit, multi-shard bundles, every dtype checkpoints hold, and the same damaged files through both."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.read.bundle import Bundle, open_bundle
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.core.errors import CkptkitError

DIGITS = Checkpoint(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "digits",
                                 "broken")).prefix


def tf_read_all(prefix):
    """{name: array} read by TensorFlow's reader (raises what TF raises)."""
    reader = tf().train.load_checkpoint(prefix)
    return {n: np.asarray(reader.get_tensor(n)) for n in reader.get_variable_to_shape_map()}


def assert_same(prefix):
    expected = tf_read_all(prefix)
    bundle = Bundle(prefix)
    assert sorted(bundle.entries) == sorted(expected)
    for name, value in expected.items():
        got = bundle.read(name)
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name


def save_dtypes(prefix):
    """A checkpoint with every numeric dtype checkpoints hold, scalars, empty and odd-sized tensors."""
    rng = np.random.default_rng(0)
    values = {
        "f32": rng.normal(size=(3, 5)).astype(np.float32), "f64": rng.normal(size=(7,)),
        "f16": rng.normal(size=(2, 3)).astype(np.float16), "i32": np.arange(-5, 6, dtype=np.int32),
        "i64": np.array(123456789012, np.int64), "u8": np.arange(255, dtype=np.uint8)[:17], "i8": np.array([-3, 4], np.int8),
        "i16": np.array([[-300, 7]], np.int16), "u16": np.array([65535], np.uint16), "b": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32), "scope/with/slashes/weights": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
    }
    names = sorted(values)
    tf().raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                        tensors=[tf().constant(values[n]) for n in names])
    return values


def test_every_tensor_of_real_checkpoints_matches_tensorflow(store):
    for prefix in (DIGITS, store("mobilenet_v2"), store("resnet_v1_50")):
        assert_same(prefix)


@pytest.mark.fast
def test_every_dtype_matches_tensorflow(tmp_path):
    values = save_dtypes(str(tmp_path / "d"))
    assert_same(str(tmp_path / "d"))
    bundle = Bundle(str(tmp_path / "d"))
    for name, value in values.items():
        assert np.array_equal(bundle.read(name), value)


def test_multi_shard_bundle(tmp_path):
    rng = np.random.default_rng(1)
    parts = []
    for k in range(3):
        part = str(tmp_path / f"part{k}")
        names = [f"s{k}/t{i}" for i in range(4)]
        tf().raw_ops.SaveV2(prefix=part, tensor_names=names, shape_and_slices=[""] * 4,
                            tensors=[tf().constant(rng.normal(size=(i + 1, 3)).astype(np.float32)) for i in range(4)])
        parts.append(part)
    tf().raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=str(tmp_path / "merged"))
    assert Bundle(str(tmp_path / "merged")).num_shards == 3
    assert_same(str(tmp_path / "merged"))


def test_partitioned_variables_fall_back_to_tensorflow(tmp_path):
    g = tf().Graph()
    with g.as_default():
        v = tf1.get_variable("part", [8, 3], partitioner=tf1.fixed_size_partitioner(2))
        saver = tf1.train.Saver()
        with tf1.Session(graph=g) as sess:
            sess.run(tf1.global_variables_initializer())
            expected = sess.run(tf().concat(list(v), 0))
            saver.save(sess, str(tmp_path / "p" / "model.ckpt"), write_meta_graph=False)
    prefix = str(tmp_path / "p" / "model.ckpt")
    assert open_bundle(prefix) is None  # TensorFlow's reader handles slices
    assert np.array_equal(Checkpoint(prefix).get("part"), expected)


def _corrupt(src, dst, which, pos, mode):
    shutil.copytree(os.path.dirname(src), dst)
    base = os.path.join(dst, os.path.basename(src))
    path = base + ".index" if which == "index" else base + ".data-00000-of-00001"
    data = bytearray(open(path, "rb").read())
    at = int(pos * (len(data) - 1))
    if mode == "flip":
        data[at] ^= 0x10
    elif mode == "zero":
        data[at:at + 64] = bytes(len(data[at:at + 64]))
    else:  # truncate
        del data[at:]
    open(path, "wb").write(bytes(data))
    return base


@pytest.mark.parametrize("which", ["index", "data"])
@pytest.mark.parametrize("mode", ["flip", "zero", "truncate"])
@pytest.mark.parametrize("pos", [0.0, 0.13, 0.5, 0.77, 0.97, 1.0])
def test_damaged_files_through_both_readers(tmp_path, which, mode, pos):
    """Whatever a damaged file does to TensorFlow's reader, ours never returns different values: it refuses
    (one CkptkitError) where TF refuses, and where TF reads everything it reads the same or refuses too."""
    prefix = _corrupt(DIGITS, str(tmp_path / "c"), which, pos, mode)
    try:
        expected = tf_read_all(prefix)
    except Exception:  # TensorFlow refuses: so must we
        expected = None
    try:
        ckpt = Checkpoint(prefix)
        got = {n: ckpt.get(n) for n in ckpt.names}
    except CkptkitError as err:
        assert "\n" not in str(err)
        got = None
    if got is not None:
        assert expected is not None, "ours read a checkpoint TensorFlow refuses"
        assert sorted(got) == sorted(expected)
        for name in got:
            assert got[name].tobytes() == expected[name].tobytes(), name


@pytest.mark.fast
def test_reading_imports_no_tensorflow():
    code = ("import sys; from ckptkit.read.checkpoint import Checkpoint; c = Checkpoint(sys.argv[1]); "
            "[c.get(n) for n in c.names]; assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    out = subprocess.run([sys.executable, "-c", code, DIGITS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.fast
def test_views_are_read_only_and_equal_to_reads(tmp_path):
    """Checkpoint.get gives zero-copy views of the data file: the same bytes as a read, never writeable
    (nothing can write into a user's checkpoint through them), and read() still gives a writeable copy."""
    from ckptkit.core import pages

    values = save_dtypes(str(tmp_path / "d"))
    ckpt = Checkpoint(str(tmp_path / "d"))
    for name, value in values.items():
        view, copy = ckpt.get(name), ckpt.read(name)
        assert view.tobytes() == value.tobytes() == copy.tobytes(), name
        assert copy.flags.writeable
        if value.size:
            assert not view.flags.writeable, name
            with pytest.raises(ValueError):
                view[...] = 0
    big = ckpt.get("scope/with/slashes/weights")
    pages.release(big)  # pages given back are read again from the file, unchanged
    assert big.tobytes() == values["scope/with/slashes/weights"].tobytes()


@pytest.mark.fast
def test_a_view_checks_the_crc_of_its_bytes(tmp_path):
    """The first view of a tensor checks its crc32c, as a read does: a flipped byte is refused."""
    values = save_dtypes(str(tmp_path / "d"))
    prefix = str(tmp_path / "d")
    name = "scope/with/slashes/weights"
    entry = Bundle(prefix).entries[name]
    path = Bundle(prefix).shard_path(entry.shard)
    data = bytearray(open(path, "rb").read())
    data[entry.offset + 5] ^= 0x01
    open(path, "wb").write(bytes(data))
    ckpt = Checkpoint(prefix)
    with pytest.raises(CkptkitError, match="crc32c mismatch"):
        ckpt.get(name)
    assert ckpt.get("f32").tobytes() == values["f32"].tobytes()  # the others are still good
