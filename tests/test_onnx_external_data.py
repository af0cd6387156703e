"""ONNX past protobuf's 2 GiB: NAME.onnx + NAME.onnx.data (ONNX external data), verified in onnxruntime
against TensorFlow, published together; Caffe (one protobuf) refuses in one line before any work.

The small cases lower the limit to the test net's size, which takes the same code path; the big case is a
slim net whose checkpoint is just over 2 GiB, built in the test and deleted after."""
import os
import shutil

import numpy as np
import onnx
import pytest

from ckptkit import testing as T
from ckptkit.commands.export import export
from ckptkit.topology.sources import load
from conftest import rel_error
from ckptkit.converters import protobuf_wire
from ckptkit.converters.onnx import runner
from big_net import BIG_INPUT, BIG_UNITS

BUILDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "big_net.py") + ":big_net"


@pytest.fixture
def small_limit(monkeypatch):
    """protobuf's limit lowered so that a small net's weights are past it."""
    monkeypatch.setattr(protobuf_wire, "PROTOBUF_LIMIT", protobuf_wire.ROOM_FOR_GRAPH + 100)


@pytest.mark.fast
def test_weights_past_one_protobuf_go_to_a_data_file_beside_the_model(store, reference, tmp_path, small_limit):
    prefix = store("mobilenet_v2")
    out = tmp_path / "out"
    result = export(load(prefix), "onnx", str(out / "m.onnx"))
    assert result.files == [str(out / "m.onnx"), str(out / "m.onnx.data")] and result.comparison.ok
    assert sorted(os.listdir(out)) == ["m.onnx", "m.onnx.data"]  # nothing staged is left
    model = onnx.load(str(out / "m.onnx"), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "every weight was inlined: the data file holds nothing"
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"m.onnx.data"}
    moved = tmp_path / "moved"  # the reference is relative: the pair moves together
    shutil.move(str(out), str(moved))
    onnx.checker.check_model(str(moved / "m.onnx"), full_check=True)
    x = T.random_input((32, 32, 3), batch=3, seed=5)
    assert rel_error(reference("mobilenet_v2", prefix, x), runner(str(moved / "m.onnx"))(x)) < 1e-4


def test_a_single_file_model_reads_the_same_in_onnx_and_onnxruntime(store, reference, tmp_path):
    """Below the limit one .onnx file, assembled from the spool: onnx.load sees every weight inline, and
    onnxruntime reproduces TF from it."""
    prefix = store("vgg16_bn")
    path = tmp_path / "m.onnx"
    assert export(load(prefix), "onnx", str(path)).files == [str(path)]
    assert os.listdir(tmp_path) == ["m.onnx"]
    model = onnx.load(str(path))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    x = T.random_input((32, 32, 3), batch=2, seed=9)
    assert rel_error(reference("vgg16_bn", prefix, x), runner(str(path))(x)) < 1e-4
    again = tmp_path / "again.onnx"  # onnx's own serialisation of what it read runs the same
    onnx.save(model, str(again))
    assert np.array_equal(runner(str(again))(x), runner(str(path))(x))


def test_caffe_refuses_weights_past_one_protobuf_in_one_line(store, tmp_path, small_limit):
    from ckptkit import CkptkitError

    with pytest.raises(CkptkitError, match=r"one protobuf message, which cannot reach 2 GiB: export to ONNX") as err:
        export(load(store("mobilenet_v2")), "caffe", str(tmp_path / "m"))
    assert len(str(err.value).splitlines()) == 1 and list(tmp_path.iterdir()) == []


def _write_big_checkpoint(prefix: str) -> int:
    """The net's variables, random, written one tensor at a time (no TF session holds 2 GiB); their bytes."""
    from ckptkit.read.checkpoint import write_checkpoint

    rng = np.random.default_rng(0)
    flat = int(np.prod(BIG_INPUT))
    shapes = {"conv/weights": (3, 3, 64, 64), "conv/BatchNorm/beta": (64,), "conv/BatchNorm/moving_mean": (64,),
              "conv/BatchNorm/moving_variance": (64,), "fc/weights": (flat, BIG_UNITS), "fc/biases": (BIG_UNITS,)}

    def tensors():
        for name, shape in shapes.items():
            if name.endswith("moving_variance"):
                value = rng.uniform(0.5, 2.0, shape).astype(np.float32)
            elif name == "fc/weights":  # random rows repeating every 4099 (a prime): a flatten in another
                # order or a transposition still changes the output, for a sixteenth of the random draws
                rows = rng.standard_normal((4099, shape[1]), dtype=np.float32) * np.float32(0.01)
                value = np.tile(rows, (-(-shape[0] // len(rows)), 1))[:shape[0]]
            else:
                value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
            yield name, value

    write_checkpoint(prefix, tensors())
    return sum(int(np.prod(s)) * 4 for s in shapes.values())


@pytest.mark.slow
def test_a_checkpoint_past_2_gib_exports_to_onnx_with_external_data_and_verifies(tmp_path, run_cli):
    need = 3 * 2.1 * 2**30  # checkpoint, .onnx.data, and room to stage
    if shutil.disk_usage(tmp_path).free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free disk in {tmp_path} for a checkpoint past 2 GiB and its export")
    prefix = str(tmp_path / "ckpt" / "model.ckpt")
    try:
        size = _write_big_checkpoint(prefix)
        assert size > protobuf_wire.PROTOBUF_LIMIT
        out = tmp_path / "onnx" / "big.onnx"
        shape = ",".join(map(str, BIG_INPUT))
        proc = run_cli("to-onnx", prefix, "--builder", BUILDER, "--input-shape", shape, "-o", out)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "verified against TensorFlow in onnxruntime" in proc.stdout
        assert sorted(os.listdir(out.parent)) == ["big.onnx", "big.onnx.data"]
        assert os.path.getsize(str(out)) < 2**20 and os.path.getsize(str(out) + ".data") >= size - 2**20
        caffe = run_cli("to-caffe", prefix, "--builder", BUILDER, "--input-shape", shape,
                        "-o", tmp_path / "caffe" / "big")
        assert caffe.returncode != 0 and "cannot reach 2 GiB" in caffe.stderr
        errors = [line for line in caffe.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and caffe.stderr.rstrip().endswith("Keras instead")
        assert not (tmp_path / "caffe").exists()
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
