"""The `>>>` examples in the public functions' docstrings run, on the bundled fixtures, and print what they say."""
import doctest
import importlib
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ["ckptkit.topology.sources", "ckptkit.commands.inspect", "ckptkit.ir.passes", "ckptkit.commands.export", "ckptkit.commands.fold",
           "ckptkit.commands.diagnose", "ckptkit.commands.recalibrate", "ckptkit.run.verify"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder whose `fixtures` is the repository's (the examples' paths are relative) and `out/` is free."""
    folder = tmp_path_factory.mktemp("doctests")
    os.symlink(os.path.join(ROOT, "fixtures"), folder / "fixtures")
    return folder


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, workdir, monkeypatch):
    import ckptkit
    import ckptkit.converters.onnx

    monkeypatch.chdir(workdir)
    model = ckptkit.load("fixtures/mobilenet_v2_tiny")
    x = np.random.default_rng(0).normal(size=(2, *model.input_shape[1:])).astype(np.float32)
    if name == "ckptkit.run.verify":  # its example runs a written model
        ckptkit.export(model, "onnx", "m.onnx")
    globs = {"ckptkit": ckptkit, "np": np, "model": model, "x": x,
             "verify": ckptkit.verify}
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name, globs=globs) if t.examples]
    assert tests, f"{name} has no docstring example any more: remove it from MODULES"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {name} failed (printed above)"
