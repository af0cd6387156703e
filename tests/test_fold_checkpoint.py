"""`fold_checkpoint` output restored into the same network built without BN matches TF's BN inference."""
import pytest

from ckptkit import CkptkitError, testing as T
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.commands.fold import fold_checkpoint
from conftest import ARCH, NETS, rel_error


def no_bn_builder(name):
    if name in ARCH:
        arch, kw = ARCH[name]
        return T.arch_net(arch, batch_norm=False, **kw)
    builder = NETS[name][0]
    return lambda inputs, is_training=False: builder(inputs, is_training=is_training, batch_norm=False)


@pytest.mark.parametrize("name", ["variants", "handwritten", "mobilenet_v2", "vgg16_bn", "resnet_v1_50",
                                  "resnet_v2_50", "inception_v2", "inception_v3"])
@pytest.mark.slow
def test_fold_restores_into_network_without_bn(store, reference, tmp_path, name):
    prefix = store(name)
    shape = NETS[name][1]
    x = T.random_input(shape, batch=2)
    report = fold_checkpoint(prefix, str(tmp_path / "folded.ckpt"), write_graph=False)  # graph: tested below
    assert report.folded and report.epsilon_source.startswith("graph")
    got = T.inference_output(no_bn_builder(name), shape, str(tmp_path / "folded.ckpt"), x)
    assert rel_error(reference(name, prefix, x), got) < 1e-4
    if name == "resnet_v2_50":  # pre-activation BN follows an add: kept and listed
        assert any("preact" in k for k in report.kept)
    else:
        assert not report.kept
    assert not any(n.endswith(("moving_mean", "moving_variance", "moving_avg", "ExponentialMovingAverage"))
                   for n in Checkpoint(str(tmp_path / "folded.ckpt")).names
                   if not any(n.startswith(k + "/") for k in report.kept))


def test_fold_uses_graph_epsilon_for_resnet(store, tmp_path):
    report = fold_checkpoint(store("resnet_v1_50"), str(tmp_path / "f.ckpt"), use_meta=False, arch="resnet_v1_50")
    assert report.epsilon and all(e == pytest.approx(1e-5) for e in report.epsilon.values())  # float32 attr


def test_fold_without_graph_assumes_slim_eps_and_warns(store, tmp_path, caplog):
    report = fold_checkpoint(store("mobilenet_v2"), str(tmp_path / "f.ckpt"), use_meta=False)
    assert report.epsilon_source == "assumed slim default"
    assert "assumed to be slim's default" in caplog.text


def test_fold_by_names_keeps_units_without_a_layer_by_naming(store, tmp_path):
    report = fold_checkpoint(store("variants"), str(tmp_path / "f.ckpt"), use_meta=False, eps=1e-3)
    assert "layers_bn" in report.kept and report.units_from == "variable names"
    assert "dw/BatchNorm" in report.folded and "fc/BatchNorm" in report.folded


def test_graph_guided_fold_pairs_tf_layers_bn_with_its_biased_conv(store, tmp_path):
    """The graph shows layers_bn follows conv `biased` (weights + BiasAdd): folded into it, biases merged."""
    report = fold_checkpoint(store("variants"), str(tmp_path / "f.ckpt"))
    assert "layers_bn" in report.folded and not report.kept
    assert report.epsilon["layers_bn"] == pytest.approx(1e-4) and report.epsilon["fused/BatchNorm"] == pytest.approx(1e-3)


def test_fold_refuses_missing_statistics(store, tmp_path):
    with pytest.raises(CkptkitError, match="missing.*ckptkit recalibrate"):
        fold_checkpoint(store("mobilenet_v2", trainable_only=True), str(tmp_path / "f.ckpt"))
    assert not list(tmp_path.iterdir())


def test_fold_refuses_invalid_variance(store, tmp_path):
    with pytest.raises(CkptkitError, match="negative, NaN or inf"):
        fold_checkpoint(store("mobilenet_v2", stats="negative"), str(tmp_path / "f.ckpt"))


def test_fold_refuses_to_overwrite_input(store):
    prefix = store("mobilenet_v2")
    with pytest.raises(CkptkitError, match="is the input checkpoint"):
        fold_checkpoint(prefix, prefix)


def test_topology_only_load_reads_no_tensor(store, monkeypatch):
    """fold reads epsilons from the graph without loading the weights a second time."""
    from ckptkit.read.checkpoint import Checkpoint
    from ckptkit.topology.sources import load

    prefix = store("resnet_v1_50")

    def forbidden(self, name):
        raise AssertionError(f"read {name}")

    monkeypatch.setattr(Checkpoint, "get", forbidden)
    graph = load(prefix, weights=False).graph
    conv = graph["resnet_v1_50/conv1/Conv2D"]
    assert conv.params["weights"].shape == (7, 7, 3, 64) and not conv.params["weights"].any()
    assert graph.count("BatchNorm") > 0


@pytest.mark.parametrize("name", ["variants", "handwritten", "mobilenet_v2"])
def test_fold_writes_a_bn_free_graph_the_next_command_uses(store, reference, tmp_path, name):
    """The .meta beside the folded checkpoint: TensorFlow restores the folded checkpoint into it and gives
    the original network's inference output; `load` (what to-onnx uses) finds it without --meta."""
    import subprocess
    import sys

    from ckptkit.topology.sources import load

    prefix = store(name)
    shape = NETS[name][1]
    out = str(tmp_path / "folded" / "model.ckpt")
    report = fold_checkpoint(prefix, out)
    assert report.graph == out + ".meta" and out + ".meta" in report.files
    model = load(out)
    assert model.graph.count("BatchNorm") == 0 and "model.ckpt.meta" in model.source
    x = T.random_input(shape, batch=2)
    assert rel_error(reference(name, prefix, x), model.reference(x)) < 1e-4
    run = subprocess.run([sys.executable, "-m", "ckptkit.cli", "to-onnx", out, "-o", str(tmp_path / "m.onnx")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_fold_without_a_graph_writes_no_graph_and_removes_an_old_one(store, tmp_path):
    prefix = store("mobilenet_v2")
    out = tmp_path / "model.ckpt"
    (tmp_path / "model.ckpt.meta").write_bytes(b"an older output's graph")
    report = fold_checkpoint(prefix, str(out), use_meta=False)
    assert report.graph is None and not (tmp_path / "model.ckpt.meta").exists()


@pytest.mark.parametrize("name", ["mobilenet_v2", "vgg16_bn"])
def test_checkpoint_fold_and_ir_fold_give_the_same_weight_bits(store, tmp_path, name):
    """One weight-scaling function (float64 product, one rounding) behind both folds: the folded checkpoint's
    kernels are the IR fold's kernels, bit for bit (two roundings used to differ in the last bit)."""
    import numpy as np

    from ckptkit.ir.passes import fold_batchnorm
    from ckptkit.topology.sources import load

    prefix = store(name)
    fold_checkpoint(prefix, str(tmp_path / "folded.ckpt"), write_graph=False)
    folded = Checkpoint(str(tmp_path / "folded.ckpt"))
    model = load(prefix)
    sources = {n.name: n.sources.get("weights") for n in model.graph if "weights" in n.sources}
    compared = 0
    for node in fold_batchnorm(model.graph):
        source = sources.get(node.name)
        ours = node.params.get("weights")
        if source and ours is not None and not np.array_equal(ours, model.graph[node.name].params["weights"]):
            assert np.array_equal(ours, folded.get(source)), source  # a layer a BatchNorm was folded into
            compared += 1
    assert compared >= 3
