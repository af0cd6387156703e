"""SavedModel (issue 35): the BN-free inference network as a TF2 SavedModel, loaded back with
tf.saved_model.load and compared with TensorFlow's own inference graph of the checkpoint (built independently);
the folder is published whole, replaces only a SavedModel, and is named in its signature after the graph."""
import os

import numpy as np
import pytest

from ckptkit import cli
from ckptkit import testing as T
from ckptkit.core.lazy_tf import tf
from conftest import FIXTURE, NETS

SHAPE = (32, 32, 3)


def test_a_slim_net_as_a_saved_model_serves_tensorflows_inference_output(tmp_path, capsys, store, reference):
    assert NETS["mobilenet_v2"][1] == SHAPE
    prefix = store("mobilenet_v2")  # saved as a training script saves it (the suite's shared one)
    out = tmp_path / "served" / "1"
    assert cli.main(["to-savedmodel", prefix, "-o", str(out)]) == 0, capsys.readouterr().err
    assert "tf.saved_model.load, a fresh process" in capsys.readouterr().out
    x = T.random_input(SHAPE, batch=3)
    # served as TF Serving would (the export's own check already loaded it in a fresh process): the signature is
    # named after the graph's input and output, and gives TF's own inference output of the checkpoint
    serve = tf().saved_model.load(str(out)).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["input"] and "logits" in str(serve.structured_outputs)
    (got,) = serve(input=tf().constant(x)).values()
    expected = reference("mobilenet_v2", prefix, x)
    got = got.numpy().reshape(expected.shape)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    # a second export replaces the SavedModel whole (what is checked here is the replacing, not the model again);
    # a folder that is not one is refused, untouched
    assert cli.main(["to-savedmodel", prefix, "-o", str(out), "--no-verify"]) == 0
    assert (out / "saved_model.pb").is_file() and (out / "variables").is_dir()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert cli.main(["to-savedmodel", prefix, "-o", str(other)]) == 2
    assert "is not a SavedModel folder" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me" and os.listdir(other) == ["notes.txt"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ckptkit")]


@pytest.mark.parametrize("formats", ["onnx,savedmodel,tflite"])
def test_export_writes_the_tensorflow_targets_beside_the_others(formats, tmp_path, capsys, store):
    prefix = store("mobilenet_v2")
    assert cli.main(["export", prefix, "--to", formats, "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    names = sorted(os.listdir(tmp_path / "out"))
    assert len(names) == 3 and {os.path.splitext(n)[1] for n in names} == {".onnx", ".savedmodel", ".tflite"}, names
    assert os.path.isfile(tmp_path / "out" / [n for n in names if n.endswith(".savedmodel")][0] / "saved_model.pb")


@pytest.mark.fast
def test_every_saved_model_export_is_loaded_back_in_a_fresh_process(tmp_path):
    """The check of every SavedModel export (not --no-verify): tf.saved_model.load in a process of its own."""
    import ckptkit

    result = ckptkit.export(ckptkit.load(FIXTURE), "savedmodel", str(tmp_path / "served"))
    assert result.comparison.ok and "tf.saved_model.load, a fresh process" in result.comparison.runtime
