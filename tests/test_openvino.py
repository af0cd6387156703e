"""ONNX is verified where users deploy it (issue 38): with OpenVINO installed (the test extra installs it), every
ONNX export is checked in onnxruntime and in OpenVINO (CPU, float32), and each is compared here with TensorFlow's
own inference graph, built independently."""
import importlib.util
import subprocess
import sys

import numpy as np
import openvino as ov
import pytest

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


@pytest.mark.fast
def test_verifying_in_openvino_sends_no_telemetry():
    """OpenVINO's import starts a forked sender of usage telemetry when openvino_telemetry is installed (it is,
    as OpenVINO's dependency): ckptkit's import of it leaves that package out, so OpenVINO takes its stub."""
    code = ("import sys; from ckptkit.converters.onnx import openvino_runner\n"
            "try:\n    openvino_runner('missing.onnx')\nexcept Exception:\n    pass\n"
            "print('openvino' in sys.modules, 'openvino_telemetry' in sys.modules)")
    assert importlib.util.find_spec("openvino_telemetry") is not None  # else this test proves nothing
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "False"], done.stderr[-2000:]
