"""LiteRT (issue 35): the BN-folded network converted by TensorFlow's LiteRT converter, verified in LiteRT's
interpreter, and compared here with TensorFlow's own inference graph of the same checkpoint, built
independently; ops LiteRT's builtins cannot express are refused by name."""
import os

import numpy as np
import pytest

import ckptkit
from ckptkit import cli
from ckptkit import testing as T
from ckptkit.core.errors import CkptkitError
from conftest import NETS

SHAPE = (32, 32, 3)


def _litert(path: str, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    got = []
    for i in range(0, len(x), inp["shape"][0]):
        interp.set_tensor(inp["index"], x[i:i + inp["shape"][0]])
        interp.invoke()
        got.append(np.array(interp.get_tensor(out["index"])))
    return np.concatenate(got)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_slim_mobilenet_exports_to_litert_and_matches_tensorflow(batch, tmp_path, capsys, store, reference):
    assert NETS["mobilenet_v2"][1] == SHAPE
    prefix = store("mobilenet_v2")  # saved as a training script saves it (the suite's shared one)
    out = str(tmp_path / "m.tflite")
    assert cli.main(["to-tflite", prefix, "-o", out, "--batch", str(batch)]) == 0, capsys.readouterr().err
    assert "verified against TensorFlow in ai-edge-litert" in capsys.readouterr().out
    x = T.random_input(SHAPE, batch=4)
    expected = reference("mobilenet_v2", prefix, x)
    got = _litert(out, x).reshape(expected.shape)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_an_op_litert_cannot_express_is_refused_by_name(monkeypatch, tmp_path, store):
    from ckptkit.ir import registry
    from ckptkit.core.lazy_tf import tf

    prefix = store("mobilenet_v2")
    relu6 = registry.get("Relu6")
    monkeypatch.setattr(relu6, "run", lambda ctx, node, xs, p: tf().math.bessel_i1e(xs[0]))  # no builtin
    with pytest.raises(CkptkitError, match=r"cannot express TensorFlow op\(s\) .*BesselI1e.*--allow-select-ops"):
        ckptkit.export(ckptkit.load(prefix), "tflite", str(tmp_path / "m.tflite"), check=False)
    assert not (tmp_path / "m.tflite").exists()


DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "digits")


@pytest.fixture(scope="module")
def healthy_digits(tmp_path_factory):
    from ckptkit.commands.recalibrate import recalibrate

    out = str(tmp_path_factory.mktemp("digits") / "model.ckpt")
    recalibrate(os.path.join(DIGITS, "broken"), os.path.join(DIGITS, "calibration"), out, preprocess="unit")
    return out


@pytest.mark.parametrize("io", ["float", "int8"])
def test_int8_from_the_recalibration_images_agrees_with_tensorflow_on_held_out_samples(io, healthy_digits, tmp_path,
                                                                                       capsys):
    """The images that fixed the statistics calibrate the int8 model (their recorded preprocessing, no flag);
    the report is the held-out agreement, and it is checked here against TensorFlow's own graph."""
    from ai_edge_litert.interpreter import Interpreter

    out = str(tmp_path / "q.tflite")
    rc = cli.main(["to-tflite", healthy_digits, "-o", out, "--quantize", "int8", "--io", io,
                   "--data", os.path.join(DIGITS, "test")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "held-out samples: top-1 agreement" in captured.out and "SQNR" in captured.out
    interp = Interpreter(model_path=out)
    interp.allocate_tensors()
    assert interp.get_input_details()[0]["dtype"] == (np.int8 if io == "int8" else np.float32)
    assert any(d["dtype"] == np.int8 for d in interp.get_tensor_details())  # quantized inside
    from ckptkit.converters.tflite import runner
    from ckptkit.read.data import dataset, preprocessing

    model = ckptkit.load(healthy_digits)
    samples = dataset(os.path.join(DIGITS, "calibration"), tuple(model.graph.input_shape[1:]), batch_size=64,
                      max_samples=64, preprocess=preprocessing("unit", channels=1))
    x = np.concatenate([np.asarray(b) for b in samples])
    expected = T.inference_output(T.digits_net, tuple(model.graph.input_shape[1:]), healthy_digits, x)
    agreement = np.mean(runner(out)(x).argmax(1) == expected.argmax(1))  # TF's own graph, not ckptkit's
    assert agreement >= 0.9, agreement


def test_int8_below_the_agreement_asked_for_is_refused_and_writes_nothing(healthy_digits, tmp_path, capsys):
    out = str(tmp_path / "q.tflite")
    rc = cli.main(["to-tflite", healthy_digits, "-o", out, "--quantize", "int8", "--min-agreement", "1.0",
                   "--data", os.path.join(DIGITS, "calibration"), "--max-samples", "40", "--io", "int8"])
    err = capsys.readouterr().err
    if rc == 0:  # 100 % on these samples: nothing to refuse; the threshold is then shown as met
        assert os.path.exists(out)
        return
    assert rc == 3 and "top-1 agreement" in err and not os.path.exists(out), err


def test_a_channel_that_dwarfs_its_layer_is_named(healthy_digits, tmp_path):
    """One channel whose folded scale is a hundred times its neighbours' (here its gamma; a moving variance far
    below epsilon does the same, up to 1/sqrt(eps)): the int8 report names the layer and the channel."""
    from ckptkit.read.checkpoint import Checkpoint, write_checkpoint

    ckpt = Checkpoint(healthy_digits)

    def tensors():
        for name in ckpt.names:
            value = ckpt.get(name)
            if name == "conv1/BatchNorm/gamma":
                value = value.copy()
                value[0] *= 100.0
            yield name, value

    prefix = str(tmp_path / "narrow" / "model.ckpt")
    os.makedirs(os.path.dirname(prefix))
    write_checkpoint(prefix, tensors())
    os.symlink(healthy_digits + ".meta", prefix + ".meta")
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("ckptkit").addHandler(handler)
    try:
        ckptkit.export(ckptkit.load(prefix), "tflite", str(tmp_path / "q.tflite"), quantize="int8",
                       data=os.path.join(DIGITS, "calibration"), preprocess="unit", check=False)
    finally:
        logging.getLogger("ckptkit").removeHandler(handler)
    assert any(m.startswith("int8: conv1") and "channel 0" in m for m in seen), seen


def test_int8_from_the_broken_digits_reaches_float_accuracy(healthy_digits, tmp_path):
    """The issue's chain: broken checkpoint -> recalibrate (fixture) -> int8 with the same images; accuracy on the
    held-out labelled digits within 1.5 points of the float model's, in LiteRT's interpreter."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_accuracy", os.path.join(DIGITS, "..", "demo_accuracy.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = str(tmp_path / "int8.tflite")
    ckptkit.export(ckptkit.load(healthy_digits), "tflite", out, quantize="int8",
                   data=os.path.join(DIGITS, "calibration"))
    float_accuracy = demo.checkpoint_accuracy(healthy_digits, os.path.join(DIGITS, "test"))
    int8_accuracy = demo.tflite_accuracy(out, os.path.join(DIGITS, "test"))
    assert float_accuracy > 0.9
    assert int8_accuracy >= float_accuracy - 0.015, (int8_accuracy, float_accuracy)
