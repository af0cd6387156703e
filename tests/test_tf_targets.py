"""The targets written through TensorFlow on every test network (issue 35): LiteRT float in LiteRT's interpreter and
the SavedModel loaded with tf.saved_model.load, each against TensorFlow's own inference output of the checkpoint
(the `reference` fixture, independent of ckptkit's importer)."""
import numpy as np
import pytest

from ckptkit import testing as T
from ckptkit.export import export
from ckptkit.sources import load
from conftest import NETS, quick, rel_error


@pytest.mark.parametrize("name", quick(NETS))
def test_litert_float_matches_tf(store, reference, tmp_path, name):
    from ai_edge_litert.interpreter import Interpreter

    prefix = store(name)
    path = str(tmp_path / "m.tflite")
    result = export(load(prefix), "tflite", path, batch=2)
    assert result.comparison.ok and "ai-edge-litert" in result.comparison.runtime
    interp = Interpreter(model_path=path)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert list(inp["shape"]) == [2, *NETS[name][1]]
    x = T.random_input(NETS[name][1], batch=2, seed=11)
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    assert rel_error(reference(name, prefix, x), np.array(interp.get_tensor(out["index"]))) < 1e-4


@pytest.mark.parametrize("name", quick(NETS))
def test_saved_model_matches_tf(store, reference, tmp_path, name):
    from ckptkit._tf import tf

    prefix = store(name)
    path = str(tmp_path / "served")
    export(load(prefix), "savedmodel", path, check=False)  # verified here instead (test_savedmodel.py: the check)
    serve = tf().saved_model.load(path).signatures["serving_default"]
    (key,) = serve.structured_input_signature[1]
    x = T.random_input(NETS[name][1], batch=3, seed=11)
    (got,) = serve(**{key: tf().constant(x)}).values()
    assert rel_error(reference(name, prefix, x), got.numpy()) < 1e-4
