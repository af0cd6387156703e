"""A user's graph is data: no ckptkit command runs an op outside the allowlist (ckptkit/run/gateway.py).

Each hostile net is a small slim CNN saved as a training script saves it, with one side effect that the
logits depend on only through a control edge (cut: exit 0, export still verified) or through data (refused:
exit 2, one line). Every command runs on each; the side effect's file must never appear. The py_func's
Python function stays registered in this process (a strong reference below), so an unguarded run would
execute it: the test can fail.
"""
import os
import signal
import struct
import zlib

import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.core.compat import slim

SHAPE = (16, 16, 3)
_KEEP_ALIVE = []  # py_func callbacks: TensorFlow's registry holds them weakly

# kind -> what the output's dependency on the side effect is
KINDS = {
    "write": "control", "cond_write": "control", "print_file": "control", "save_v2": "control",
    "read_file": "control", "while_write": "control", "matching_files": "control", "py_func": "control",
    "huge_fill": "bomb", "py_func_data": "data", "huge_fill_data": "data",
}
# "bomb": a 512 GiB Fill of constant shape on a control edge. TensorFlow would size it while importing the
# graph, so every command that imports the graph refuses it before import (const_eval.check_graph_def); inspect
# reads the graph without TensorFlow and runs nothing.


def _writer(target: str):
    """A py_func body that writes `target` (kept alive: TensorFlow's registry holds it weakly)."""
    def write(a):
        with open(target, "w") as f:
            f.write("pwned")
        return a

    _KEEP_ALIVE.append(write)
    return write


def hostile_net(kind: str, target: str):
    def side_effect(_tf, net):
        if kind in ("write", "cond_write"):
            return _tf.io.write_file(target, "pwned")
        if kind == "print_file":
            return _tf.print("pwned", _tf.reduce_sum(net), output_stream="file://" + target)
        if kind == "save_v2":
            return _tf.raw_ops.SaveV2(prefix=target, tensor_names=["x"], shape_and_slices=[""],
                                      tensors=[_tf.reduce_sum(net)])
        if kind == "read_file":
            return _tf.io.read_file(os.path.abspath(__file__))
        if kind == "matching_files":
            return _tf.io.matching_files(os.path.join(os.path.dirname(target), "*"))
        if kind == "huge_fill":
            return _tf.reduce_max(_tf.fill([1 << 17, 1 << 17, 8], 0.0))
        if kind == "py_func":
            return tf1.py_func(_writer(target), [_tf.reduce_sum(net)], _tf.float32)
        if kind == "while_write":
            def body(i):
                with _tf.control_dependencies([_tf.io.write_file(target, "pwned")]):
                    return i + 1
            return _tf.while_loop(lambda i: i < 1, body, [_tf.constant(0)])[0]
        raise AssertionError(kind)

    def net_fn(inputs, is_training=False):
        s, _tf = slim(), tf()
        bn = dict(normalizer_fn=s.batch_norm, normalizer_params=dict(is_training=is_training, scale=True))
        net = s.conv2d(inputs, 8, 3, stride=2, scope="conv1", **bn)
        if kind == "cond_write":  # the write inside the inference branch of a tf.cond (a function body)
            def writing_branch():
                with _tf.control_dependencies([side_effect(_tf, net)]):
                    return _tf.identity(net)
            net = _tf.cond(is_training, lambda: _tf.identity(net), writing_branch)
        elif kind == "py_func_data":
            shape = net.shape
            net = tf1.py_func(_writer(target), [net], _tf.float32)
            net.set_shape(shape)
        elif kind == "huge_fill_data":
            net = net + _tf.fill([1 << 17, 1 << 17, 8], 0.0)[0, :8, :8][None]
        else:
            with _tf.control_dependencies([side_effect(_tf, net)]):
                net = _tf.identity(net)
        net = s.conv2d(net, 8, 3, scope="conv2", **bn)
        net = s.flatten(net)
        return s.fully_connected(net, 10, activation_fn=None, scope="logits")

    return net_fn


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    data.mkdir()
    np.save(data / "x.npy", np.random.default_rng(0).uniform(-1, 1, (24, *SHAPE)).astype(np.float32))
    made = {}

    def make(kind: str):
        if kind not in made:
            sink = root / f"sink-{kind}"
            sink.mkdir()
            target = str(sink / "pwned")
            prefix = T.save_model(hostile_net(kind, target), SHAPE, str(root / kind / "model.ckpt"))
            assert not os.listdir(sink), "building the net ran its side effect"
            made[kind] = (prefix, sink)
        return made[kind]

    make.data = str(data)
    make.root = root
    return make


def _commands(prefix: str, data: str, out: str) -> dict:
    return {
        "inspect": ["inspect", prefix],
        "diagnose": ["diagnose", prefix, "--data", data],
        "recalibrate": ["recalibrate", prefix, "--data", data, "-o", f"{out}/recal/model.ckpt"],
        "fold": ["fold", prefix, "-o", f"{out}/fold/model.ckpt"],
        "export": ["export", prefix, "--to", "onnx,keras,caffe", "-o", f"{out}/export"],
        "to-onnx": ["to-onnx", prefix, "-o", f"{out}/m.onnx"],
        "to-keras": ["to-keras", prefix, "-o", f"{out}/m.keras"],
        "to-caffe": ["to-caffe", prefix, "-o", f"{out}/caffe/m"],
    }


def _run(argv, capsys):
    from ckptkit import cli

    def hang(*_):
        raise TimeoutError(f"ckptkit {' '.join(argv)} hung")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(240)
    try:
        rc = cli.main(["-q", *argv])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, capsys.readouterr().err


COMMANDS = ["inspect", "diagnose", "recalibrate", "fold", "export", "to-onnx", "to-keras", "to-caffe"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_command_runs_a_side_effect_of_the_graph(hostile, kind, command, tmp_path, capsys):
    prefix, sink = hostile(kind)
    before = {p: os.path.getmtime(p) for p in _files(os.path.dirname(prefix))}
    argv = _commands(prefix, hostile.data, str(tmp_path))[command]
    rc, err = _run(argv, capsys)
    assert not os.listdir(sink), f"{command} ran the graph's {kind}: {os.listdir(sink)}"
    assert {p: os.path.getmtime(p) for p in _files(os.path.dirname(prefix))} == before  # input untouched
    assert "Traceback" not in err
    writes = command not in ("inspect", "diagnose")
    if rc == 2:
        errors = [line for line in err.splitlines() if line.startswith("ckptkit: error:")]
        assert len(errors) == 1, err
        assert not writes or not any(os.scandir(tmp_path)), "a refused command left output behind"
    else:
        assert rc in ((0, 1) if not writes else (0,)), err
    if KINDS[kind] == "data" and command in ("fold", "export", "to-onnx", "to-keras", "to-caffe"):
        assert rc == 2, f"{command} accepted a graph whose output needs {kind}: {err}"
    if KINDS[kind] == "bomb" and command != "inspect":
        assert rc == 2 and "bound" in err, err
    if KINDS[kind] == "control" and command in ("export", "to-onnx", "to-keras", "to-caffe"):
        assert rc == 0, err  # the side effect is cut, the export still verified against the rest
        assert "not run:" in err, err


def _files(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


def test_the_side_effects_would_run_without_the_gateway(hostile, tmp_path):
    """The hostile graphs are live: TensorFlow run directly on one writes its file (so the test above can fail)."""
    prefix, sink = hostile("write")
    g = tf().Graph()
    with g.as_default():
        saver = tf1.train.import_meta_graph(prefix + ".meta")
        with tf1.Session(graph=g) as sess:
            saver.restore(sess, prefix)
            out = g.get_tensor_by_name("logits/BiasAdd:0")
            sess.run(out, {g.get_tensor_by_name("input:0"): np.zeros((1, *SHAPE), np.float32),
                           g.get_tensor_by_name("is_training:0"): False})
    assert os.listdir(sink) == ["pwned"]
    os.remove(os.path.join(sink, "pwned"))


def test_data_dependency_is_refused_naming_op_type_and_consumer(hostile, tmp_path, capsys):
    """The importer refuses a PyFunc first; the gateway refuses it on its own too, in one line."""
    from ckptkit.read.checkpoint import Checkpoint
    from ckptkit.core.errors import CkptkitError
    from ckptkit.run.gateway import GatedRun

    prefix, _ = hostile("py_func_data")
    g = tf().Graph()
    with g.as_default():
        tf1.train.import_meta_graph(prefix + ".meta")
    with pytest.raises(CkptkitError) as info:
        GatedRun(g, "input:0", "logits/BiasAdd:0", Checkpoint(prefix))
    msg = str(info.value)
    assert "PyFunc" in msg and "never runs it" in msg and "read by" in msg, msg
    assert "\n" not in msg


def test_allowlist_covers_the_importer_and_holds_no_side_effect():
    from tensorflow.python.framework import op_def_registry

    from ckptkit.run import allowlist

    from ckptkit.ir import registry
    from ckptkit.tf_import import walker

    registry.load_all()
    imported = set(walker.HANDLERS) | walker.PASS_THROUGH | walker.VARIABLE_OPS | walker.READ_OPS
    assert imported - allowlist.ALLOWED == set()
    stateful = {op for op in allowlist.ALLOWED if op_def_registry.get(op) is None or op_def_registry.get(op).is_stateful}
    assert stateful <= allowlist.STATEFUL_ALLOWED, stateful - allowlist.STATEFUL_ALLOWED
    for forbidden in ("WriteFile", "ReadFile", "PrintV2", "Print", "SaveV2", "Save", "RestoreV2", "PyFunc",
                      "EagerPyFunc", "MatchingFiles", "MergeV2Checkpoints", "DeleteFile", "CreateSummaryFileWriter",
                      "WriteSummary", "IteratorGetNext", "QueueDequeueV2", "TFRecordReaderV2", "Assign",
                      "AssignVariableOp", "RecursiveCreateDir", "ImmutableConst"):
        assert forbidden not in allowlist.ALLOWED


def test_checkpoint_index_declaring_more_than_the_file_holds_is_refused_before_allocating(store, tmp_path,
                                                                                             monkeypatch):
    import dataclasses
    import shutil

    from ckptkit.read import bundle
    from ckptkit.core.errors import CkptkitError

    src = store("mobilenet_v2")
    folder = tmp_path / "ck"
    shutil.copytree(os.path.dirname(src), folder)
    b = bundle.Bundle(str(folder / "model.ckpt"))
    name = next(n for n, e in b.entries.items() if e.shape)
    e = b.entries[name]
    huge = (1 << 20, 1 << 20, 64)  # 256 TiB of float32, declared consistently with its size
    b.entries[name] = dataclasses.replace(e, shape=huge, size=(1 << 46) * 4)

    def no_allocation(*a, **k):
        raise AssertionError("allocated before checking the data file")

    monkeypatch.setattr(bundle.np, "empty", no_allocation)
    with pytest.raises(CkptkitError, match="declares"):
        b.read(name)
    # truncated data file: refused before allocating too
    b.entries[name] = e
    data = b.shard_path(e.shard)
    with open(data, "r+b") as f:
        f.truncate(e.offset + e.size // 2)
    with pytest.raises(CkptkitError, match="declares"):
        b.read(name)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_an_image_declaring_too_many_pixels_is_skipped_with_its_name(tmp_path, caplog):
    from PIL import Image

    from ckptkit.read import data

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(40000, 40000))  # 1.6 G pixels declared in a 100-byte file
    fine = tmp_path / "fine.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(fine)
    good, bad = data._usable_images([str(bomb), str(fine)])
    assert good == [str(fine)]
    assert bad and bad[0][0] == str(bomb)
    assert any(str(bomb) in r.getMessage() and "pixels" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_side_effects_in_a_model_zoo_network_are_cut(tmp_path, capsys):
    """resnet_v1_50 (tf_slim.nets) with a file write and a tf.print to a file on its input path."""
    sink = tmp_path / "sink"
    sink.mkdir()
    base = T.arch_net("resnet_v1_50")

    def build(inputs, is_training=False):
        _tf = tf()
        effects = [_tf.io.write_file(str(sink / "written"), "pwned"),
                   _tf.print("pwned", output_stream="file://" + str(sink / "printed"))]
        with _tf.control_dependencies(effects):
            inputs = _tf.identity(inputs)
        return base(inputs, is_training=is_training)

    prefix = T.save_model(build, (64, 64, 3), str(tmp_path / "resnet" / "model.ckpt"), training="literal")
    for argv in (["to-onnx", prefix, "-o", str(tmp_path / "m.onnx")], ["fold", prefix, "-o", str(tmp_path / "f/m")]):
        rc, err = _run(argv, capsys)
        assert rc == 0, err
        assert "not run: WriteFile" in err and "not run: PrintV2" in err, err
        assert not os.listdir(sink)
    assert os.path.exists(tmp_path / "m.onnx") and os.path.exists(tmp_path / "f" / "m.meta")
