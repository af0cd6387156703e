"""Slim-era pipelines start with `tf.compat.v1.disable_v2_behavior()`: every library call and a --builder
module doing it behave as in eager mode (a fresh process each: the switch is process-wide)."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURE = os.path.join(ROOT, "fixtures", "mobilenet_v2_tiny", "model.ckpt")
DIGITS = os.path.join(ROOT, "fixtures", "digits")


def _python(code: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def test_every_library_call_works_after_disable_v2_behavior(tmp_path):
    got = _python(f"""
        import tensorflow as tf
        tf.compat.v1.disable_v2_behavior()
        import ckptkit
        out = {str(tmp_path)!r}
        model = ckptkit.load({FIXTURE!r})
        results = ckptkit.export_many(model, ["onnx", "keras", "caffe"], out + "/all")
        assert [r.comparison.ok for r in results] == [True, True, True]
        ckptkit.export(model, "keras", out + "/m.h5")
        ckptkit.fold_checkpoint({FIXTURE!r}, out + "/folded/model.ckpt")
        broken = {DIGITS + "/broken"!r}
        d = ckptkit.diagnose(broken, {DIGITS + "/calibration"!r}, preprocess="unit", max_samples=64)
        assert d.verdict == "never updated", d.verdict
        r = ckptkit.recalibrate(broken, {DIGITS + "/calibration"!r}, out + "/recal/model.ckpt", preprocess="unit",
                                max_samples=64)
        assert r.statistics
        assert ckptkit.inspect_checkpoint(broken)["batchnorm"]
        assert not tf.executing_eagerly()  # the user's choice is left as it was
        print("all ok")
    """, str(tmp_path))
    assert got.returncode == 0 and "all ok" in got.stdout, got.stderr[-3000:]


@pytest.mark.slow
def test_a_builder_module_that_disables_v2_behavior(tmp_path):
    module = tmp_path / "tf1_net.py"
    module.write_text(textwrap.dedent("""
        import tensorflow as tf
        tf.compat.v1.disable_v2_behavior()
        from ckptkit.testing import mobilenet_v2_net

        def build(inputs):
            return mobilenet_v2_net(inputs, is_training=False)
    """))
    got = subprocess.run([sys.executable, "-m", "ckptkit.cli", "-q", "export", FIXTURE, "--to", "keras,onnx,caffe",
                          "--builder", "tf1_net.py:build", "--input-shape", "32,32,3", "-o", str(tmp_path / "out")],
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
    assert got.returncode == 0, got.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["model.caffemodel", "model.keras", "model.onnx", "model.prototxt"]
    assert all(f"{fmt} verified against TensorFlow" in got.stdout for fmt in ("keras", "onnx", "caffe")), got.stdout


@pytest.mark.fast
def test_graph_building_gives_tensor_equality_back():
    """ckptkit builds its graphs with identity equality (lazy_tf.graph_building) and leaves the process's TF2
    setting as it found it, after an error too; inside, variables of the graph hash as they do in graph mode."""
    from ckptkit.core.lazy_tf import graph_building, tf, tf1

    _tf = tf()
    assert _tf.Tensor._USE_EQUALITY  # TF2's default in this process
    with pytest.raises(RuntimeError), graph_building():
        g = _tf.Graph()
        with g.as_default():
            v = tf1.get_variable("v", [2])
            assert not _tf.Tensor._USE_EQUALITY and v in {v} and v == v
        raise RuntimeError
    assert _tf.Tensor._USE_EQUALITY
    with pytest.raises(TypeError):  # an eager variable outside: unhashable, as TF2 has it
        hash(_tf.Variable([1.0]))
