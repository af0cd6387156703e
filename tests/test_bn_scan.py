"""The TF-free `.meta` scan `inspect` uses must find exactly what the importer finds, or decline.

Each training graph is read both ways: `scan_units` (protobuf alone) and `find_fold_units` (TensorFlow
and ckptkit's importer). Where the scan answers, every unit (variables, channels, epsilon, the layer it
follows or why it is kept) is the same; where it cannot be sure it must return None, never a guess.
"""
import os
import subprocess
import sys

import pytest

from ckptkit import testing as T
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.batchnorm.finder import find_fold_units
from ckptkit.batchnorm.scan import scan_units

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "fixtures", "digits", "broken")

# conftest nets the scan must answer for, and those it must decline (non-fused or hand-written BNs)
ANSWERED = ["resnet_v1_50", "resnet_v2_50", "resnet_v1_50_os16", "inception_v2", "mobilenet_v2", "vgg16_bn"]
DECLINED = ["variants", "handwritten"]


def _signature(units) -> list:
    """What a user sees of each unit, independent of order (the scan lists units in graph order)."""
    return sorted(str((u.to_json(), u.kept_because, u.layer and u.layer.transposed)) for u in units)


def _assert_same(prefix: str) -> list:
    ckpt = Checkpoint(prefix)
    fast = scan_units(ckpt, ckpt.meta_path)
    assert fast is not None, "the scan declined a slim graph"
    slow, source = find_fold_units(ckpt)
    assert source.startswith("graph ")
    assert _signature(fast) == _signature(slow)
    return fast


@pytest.mark.parametrize("name", ANSWERED)
def test_scan_finds_what_the_importer_finds(store, name):
    units = _assert_same(store(name))
    assert all(u.found_by == "graph" and u.epsilon is not None for u in units)
    if name == "resnet_v2_50":  # pre-activation BNs follow an Add or a pool: kept, with the reason
        assert any(u.layer is None and u.kept_because.startswith("follows Add ") for u in units)


@pytest.mark.parametrize("stats, trainable_only", [("reset", False), ("random", True)])
def test_scan_on_broken_checkpoints(store, stats, trainable_only):
    units = _assert_same(store("mobilenet_v2", stats=stats, trainable_only=trainable_only))
    if trainable_only:  # statistics missing from the checkpoint: absent, as the importer says
        assert all(u.moving_mean is None and u.moving_variance is None for u in units)


@pytest.mark.parametrize("name", ["mobilenet_v3", "nasnet", "deeplab"])
def test_scan_on_zoo_patterns(shared_checkpoint, name):
    from test_zoo_patterns import NETS as ZOO

    builder, shape, _ = ZOO[name]
    _assert_same(shared_checkpoint(f"zoo-{name}", builder, shape))


@pytest.mark.parametrize("name", DECLINED)
def test_scan_declines_what_it_does_not_know(store, name):
    ckpt = Checkpoint(store(name))
    assert scan_units(ckpt, ckpt.meta_path) is None


@pytest.mark.fast
def test_scan_declines_a_damaged_graph(tmp_path):
    ckpt = Checkpoint(DIGITS)
    meta = tmp_path / "model.ckpt.meta"
    meta.write_bytes(open(ckpt.meta_path, "rb").read()[:5000])
    assert scan_units(ckpt, str(meta)) is None


@pytest.mark.fast
def test_inspect_with_its_meta_imports_no_tensorflow():
    code = ("import sys, ckptkit\n"
            f"info = ckptkit.inspect_checkpoint({DIGITS!r})\n"
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
            "print(info['units_from'], info['summary']['foldable'], [i['code'] for i in info['issues']][:1])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["graph", os.path.join(DIGITS, "model.ckpt.meta")]
    assert out.stdout.split()[2] == "3" and "never_updated" in out.stdout


def test_scan_reads_a_graph_fed_by_tf_data(tmp_path):
    """slim's train scripts feed images from a tf.data iterator or a queue, not a placeholder."""
    from ckptkit.testing import save_tf_data_net

    units = _assert_same(save_tf_data_net(str(tmp_path / "model.ckpt")))
    assert sorted(u.scope for u in units) == ["conv1/BatchNorm", "conv2/BatchNorm"]
