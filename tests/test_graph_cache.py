"""--arch graphs cached on disk between commands (ckptkit.topology.graph_cache): a cached graph is the graph the build
makes (same IR, same TensorFlow output), a damaged entry is built again, and a cache that cannot be used
changes nothing but the time."""
import os

import numpy as np
import pytest

import ckptkit
from ckptkit import testing as T
from ckptkit.topology import graph_cache
from ckptkit.topology import sources
from conftest import NETS

SHAPE = (64, 64, 3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    sources._BUILT.clear()  # this process's in-memory copy of the last build
    yield tmp_path / "cache" / "graphs"
    sources._BUILT.clear()


@pytest.fixture
def resnet(store):
    """resnet_v1_50 at 64x64, 10 classes: the suite's shared checkpoint (conftest.NETS)."""
    assert NETS["resnet_v1_50"][1] == SHAPE
    return store("resnet_v1_50")


def _load(prefix, **kw):
    sources._BUILT.clear()
    return ckptkit.load(prefix, arch="resnet_v1_50", input_shape="64,64,3", **kw)


def _entries(cache):
    return [cache / f for f in os.listdir(cache) if f.endswith(".meta")]


def _summary(model):
    return [(n.name, n.op, tuple(n.shape), sorted(n.params), dict(n.sources)) for n in model.graph.nodes]


def test_a_cached_graph_is_the_built_graph(resnet, cache):
    x = T.random_input(SHAPE, batch=3)
    built = _load(resnet)
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and files[0].endswith(".meta") and files[1] == files[0] + ".sha256"
    cached = _load(resnet)
    assert _summary(cached) == _summary(built)
    for a, b in zip(built.graph.nodes, cached.graph.nodes):
        for k in a.params:
            assert np.array_equal(a.params[k], b.params[k]), (a.name, k)
    assert np.array_equal(cached.reference(x), built.reference(x))
    out = ckptkit.export(cached, "onnx", str(cache.parent.parent / "m.onnx"))
    assert out.comparison.ok


def test_other_arguments_are_other_entries(resnet, cache):
    _load(resnet)
    _load(resnet, arch_args={"output_stride": 16})
    sources._BUILT.clear()
    ckptkit.load(resnet, arch="resnet_v1_50", input_shape="96,96,3")
    assert len(_entries(cache)) == 3


def test_a_damaged_entry_is_built_again_and_replaced(resnet, cache):
    built = _load(resnet)
    (path,) = _entries(cache)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    again = _load(resnet)
    assert _summary(again) == _summary(built)
    assert path.read_bytes() == good


def test_a_cache_that_cannot_be_used_changes_nothing(resnet, cache, monkeypatch, tmp_path):
    built = _summary(_load(resnet))
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", "")  # turned off
    assert graph_cache.folder() is None and _summary(_load(resnet)) == built
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", str(blocked))  # cannot be made
    assert _summary(_load(resnet)) == built
    assert blocked.read_text() == "not a folder"


def test_a_rewritten_entry_is_not_trusted(resnet, cache, caplog):
    """An entry replaced by another valid graph (here: the one built at another input size, as an attacker's
    edited graph would be) no longer matches its digest: it is built again, and the export is of the real net."""
    built = _load(resnet)
    (path,) = _entries(cache)
    sources._BUILT.clear()
    ckptkit.load(resnet, arch="resnet_v1_50", input_shape="96,96,3")
    (other,) = [p for p in _entries(cache) if p != path]
    path.write_bytes(other.read_bytes())  # valid, parseable, and not this key's graph
    with caplog.at_level("WARNING", logger="ckptkit"):
        again = _load(resnet)
    assert "does not match its digest" in caplog.text
    assert _summary(again) == _summary(built)
    x = T.random_input(SHAPE, batch=2)
    assert np.array_equal(again.reference(x), built.reference(x))


def test_a_shared_cache_folder_is_not_used(resnet, tmp_path, monkeypatch, caplog):
    shared = tmp_path / "shared"
    (shared / "graphs").mkdir(parents=True)
    os.chmod(shared / "graphs", 0o777)  # another user could write entries here
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", str(shared))
    sources._BUILT.clear()
    with caplog.at_level("WARNING", logger="ckptkit"):
        _load(resnet)
    assert "not using the --arch graph cache" in caplog.text and "open to other users" in caplog.text
    assert os.listdir(shared / "graphs") == []
