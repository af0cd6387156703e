"""Keras export: keras.models.load_model (no custom objects) reproduces TF's own inference output."""
import json
import zipfile

import keras
import numpy as np
import pytest

from ckptkit import CkptkitError, testing as T
from ckptkit.commands.export import export
from ckptkit.topology.sources import load
from conftest import E2E, NETS, quick, rel_error


# the end-to-end matrix as .keras; the legacy .h5 container (the same layers in another file) on the networks whose
# layers differ most: every BN variant, and depthwise + residual
H5_NETS = ("mobilenet_v2", "variants")
CASES = [(name, fold, "keras") for name, fold in E2E] + [(name, fold, "h5") for name in H5_NETS for fold in (True, False)]


def saved_layers(path: str) -> list[dict]:
    """The layers (class_name, config) a .keras or .h5 file declares, read from the file without Keras."""
    if path.endswith(".h5"):
        import h5py

        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["model_config"])
    else:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    return config["config"]["layers"]


@pytest.mark.parametrize("name, fold, ext", quick(CASES))
def test_keras_matches_tf(store, loaded, reference, tmp_path, name, fold, ext):
    prefix = store(name)
    path = str(tmp_path / f"m.{ext}")
    x = T.random_input(NETS[name][1], batch=3, seed=11)
    np.save(tmp_path / "x.npy", x)
    # the export loads the written file with keras.models.load_model (no custom objects) and runs it on x, held to
    # the model's TensorFlow reference (past 1e-4 the export fails); that reference is held here to TF's own
    # inference graph of the checkpoint, built by the network's code (independent of ckptkit's importer)
    result = export(loaded(name), "keras", path, fold=fold, verify_data=str(tmp_path / "x.npy"))
    assert [c.runtime.split()[0] for c in result.comparisons] == ["keras"]
    assert all(c.ok and c.max_rel < 1e-4 for c in result.comparisons)
    assert rel_error(reference(name, prefix, x), loaded(name).reference(x)) < 1e-5
    layers = saved_layers(path)
    (first,) = [layer for layer in layers if layer["class_name"] == "InputLayer"]
    shape = first["config"].get("batch_shape") or first["config"].get("batch_input_shape")
    assert tuple(shape) == (None,) + NETS[name][1]
    if not fold:
        assert any(layer["class_name"] == "BatchNormalization" for layer in layers)


def test_unfolded_bn_layers_carry_statistics_and_epsilon(store, loaded, tmp_path):
    prefix = store("resnet_v1_50")
    path = str(tmp_path / "m.keras")
    export(loaded("resnet_v1_50"), "keras", path, fold=False)
    model = keras.models.load_model(path, compile=False)
    bn = model.get_layer("resnet_v1_50_conv1_BatchNorm")
    assert bn.epsilon == pytest.approx(1e-5)
    from ckptkit.read.checkpoint import Checkpoint

    ckpt = Checkpoint(prefix)
    gamma, beta, mean, var = bn.get_weights()
    np.testing.assert_array_equal(mean, ckpt.get("resnet_v1_50/conv1/BatchNorm/moving_mean"))
    np.testing.assert_array_equal(var, ckpt.get("resnet_v1_50/conv1/BatchNorm/moving_variance"))


def test_wrong_extension_is_refused(tmp_path):
    from conftest import FIXTURE

    with pytest.raises(CkptkitError, match=r"must end in \.keras"):
        export(load(FIXTURE), "keras", str(tmp_path / "m.onnx"))

