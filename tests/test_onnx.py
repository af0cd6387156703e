"""ONNX export: onnxruntime reproduces TF's own inference output (built independently of ckptkit)."""
import os

import numpy as np
import onnx
import pytest

from ckptkit import CkptkitError, testing as T
from ckptkit.commands.export import export
from ckptkit.topology.sources import load
from conftest import ARCH, E2E, E2E_IDS, FIXTURE, NETS, quick, rel_error
from ckptkit.converters.onnx import runner

@pytest.mark.parametrize("name, fold", quick(E2E), ids=E2E_IDS)
def test_onnx_from_training_meta(store, loaded, reference, tmp_path, name, fold):
    prefix = store(name)
    model = loaded(name)  # the training-graph .meta beside the checkpoint
    path = str(tmp_path / "m.onnx")
    x = T.random_input(NETS[name][1], batch=3, seed=7)
    np.save(tmp_path / "x.npy", x)
    # onnxruntime and OpenVINO run the written file on x inside the export, held to the model's TensorFlow reference
    # (past 1e-4 the export fails); that reference is held here to TF's own inference graph of the checkpoint,
    # built by the network's code (independent of ckptkit's importer)
    result = export(model, "onnx", path, fold=fold, verify_data=str(tmp_path / "x.npy"))
    assert [c.runtime.split()[0] for c in result.comparisons] == ["onnxruntime", "openvino"]
    assert all(c.ok and c.max_rel < 1e-4 for c in result.comparisons)
    if fold and name not in ("resnet_v2_50", "variants"):
        assert result.graph.count("BatchNorm") == 0
    assert rel_error(reference(name, prefix, x), model.reference(x)) < 1e-5
    onnx.checker.check_model(onnx.load(path))


@pytest.mark.parametrize("name", list(ARCH))
def test_onnx_from_arch(store, reference, tmp_path, name):
    prefix = store(name)
    arch, kw = ARCH[name]
    model = load(prefix, arch=arch, input_shape=NETS[name][1], arch_args=kw)
    path = str(tmp_path / "m.onnx")
    export(model, "onnx", path)
    x = T.random_input(NETS[name][1], batch=2, seed=3)
    assert rel_error(reference(name, prefix, x), runner(path)(x)) < 1e-4


def test_onnx_nchw_and_dynamic_batch(store, loaded, reference, tmp_path):
    prefix = store("mobilenet_v2")
    path = str(tmp_path / "m.onnx")
    export(loaded("mobilenet_v2"), "onnx", path, nchw=True)
    x = T.random_input((32, 32, 3), batch=5)
    assert rel_error(reference("mobilenet_v2", prefix, x), runner(path, nchw=True)(x)) < 1e-4
    m = onnx.load(path)
    assert m.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    assert m.opset_import[0].version == 17


def test_missing_statistics_point_to_recalibrate(store, tmp_path):
    model = load(store("mobilenet_v2", trainable_only=True))
    with pytest.raises(CkptkitError, match="recalibrate"):
        export(model, "onnx", str(tmp_path / "m.onnx"))
    assert not list(tmp_path.iterdir())


def test_verification_failure_writes_nothing(store, tmp_path):
    model = load(store("mobilenet_v2"))
    model.reference = lambda x: np.zeros((x.shape[0], 10), np.float32) + 1.0
    from ckptkit import VerificationError

    with pytest.raises(VerificationError, match="does not match TensorFlow"):
        export(model, "onnx", str(tmp_path / "m.onnx"))
    assert not list(tmp_path.iterdir())


def test_inputs_and_outputs_keep_the_tensorflow_names(tmp_path):
    """As tf2onnx does: the ONNX input/output are the TF tensors asked for (a BiasAdd stays a BiasAdd)."""
    import onnx

    from ckptkit.topology.sources import load

    digits = os.path.join(os.path.dirname(FIXTURE), "..", "digits", "broken")
    for output, want in ((None, "logits/BiasAdd:0"), ("logits/BiasAdd", "logits/BiasAdd:0"),
                         ("fc1/Relu:0", "fc1/Relu:0")):
        model = load(digits, output_name=output)
        path = str(tmp_path / "m.onnx")
        export(model, "onnx", path, allow_bad_statistics=True)
        g = onnx.load(path).graph
        assert [i.name for i in g.input] == ["input:0"] and [o.name for o in g.output] == [want]
        assert g.name == "broken"
