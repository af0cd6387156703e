"""ONNX is verified where users deploy it (issue 38): with OpenVINO installed (the test extra installs it), every
ONNX export is checked in onnxruntime and in OpenVINO (CPU, float32), and each is compared here with TensorFlow's
own inference graph, built independently."""
import numpy as np
import openvino as ov

import ckptkit
from ckptkit import testing as T
from conftest import NETS


def test_every_onnx_export_is_verified_in_openvino_too(store, loaded, reference, tmp_path):
    prefix = store("mobilenet_v2")
    out = str(tmp_path / "m.onnx")
    result = ckptkit.export(loaded("mobilenet_v2"), "onnx", out)
    assert [c.runtime.split()[0] for c in result.comparisons] == ["onnxruntime", "openvino"]
    assert all(c.ok for c in result.comparisons)
    x = T.random_input(NETS["mobilenet_v2"][1], batch=3)
    expected = reference("mobilenet_v2", prefix, x)  # TF's own inference graph of the checkpoint
    core = ov.Core()
    compiled = core.compile_model(core.read_model(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled(x)[compiled.output(0)])
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
