"""ONNX is verified where users deploy it (issue 38): with OpenVINO installed (the test extra installs it), every
ONNX export is checked in onnxruntime and in OpenVINO (CPU, float32), and each is compared here with TensorFlow's
own inference graph, built independently."""
import numpy as np
import openvino as ov

import ckptkit
from ckptkit import testing as T

SHAPE = (32, 32, 3)


def test_every_onnx_export_is_verified_in_openvino_too(tmp_path):
    builder = T.mobilenet_v2_net
    prefix = T.save_model(builder, SHAPE, str(tmp_path / "ck" / "model.ckpt"))
    out = str(tmp_path / "m.onnx")
    result = ckptkit.export(ckptkit.load(prefix), "onnx", out)
    assert [c.runtime.split()[0] for c in result.comparisons] == ["onnxruntime", "openvino"]
    assert all(c.ok for c in result.comparisons)
    x = T.random_input(SHAPE, batch=3)
    expected = T.inference_output(builder, SHAPE, prefix, x)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled(x)[compiled.output(0)])
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
