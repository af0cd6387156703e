"""Every registered IR op, on small TF graphs, in every target's real runtime against TensorFlow.

Each case is a TF graph (built by a function of the input); it is imported, and for each target either
exported and run in onnxruntime / Keras / OpenCV within the target's tolerance of TF's own output, or
refused up front (a one-line CkptkitError naming the node, nothing written) when the target cannot
express a node. `test_every_op_has_a_case_in_every_target_that_claims_it` fails when an op module
registers a writer no case exercises.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from ckptkit.ir import registry
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.core.errors import CkptkitError
from ckptkit.commands.export import export, writer_for
from ckptkit.ir.passes import fold_batchnorm
from ckptkit.topology.sources import load
from ckptkit.converters.caffe import mnn_misreads
from ckptkit.converters.caffe_consumers import CONSUMERS

INSTALLED = [c for c in CONSUMERS.values() if c.version() is not None]

import test_layers
from conftest import quick

TARGETS = {"onnx": ".onnx", "keras": ".keras", "caffe": ""}


def const(shape, seed, scale=0.5):
    return tf().constant(np.random.default_rng(seed).normal(0, scale, shape).astype(np.float32))


def positive(shape, seed):
    return tf().constant(np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32))


@dataclass
class Case:
    build: object
    shape: tuple = (8, 8, 3)
    fold: bool = True
    options: dict = field(default_factory=dict)


def conv(x, cout, k=1, seed=0, stride=1, padding="SAME"):
    return tf().nn.conv2d(x, const((k, k, int(x.shape[-1]), cout), seed), stride, padding)


def bn(x, seed=0):
    c = int(x.shape[-1])
    return tf1.nn.fused_batch_norm(x, positive((c,), seed), const((c,), seed + 1), const((c,), seed + 2),
                                   positive((c,), seed + 3), epsilon=1e-3, is_training=False)[0]


def conv_t(x, cout, k, s, padding, out_hw=None):
    _tf = tf()
    h, w = int(x.shape[1]), int(x.shape[2])
    if out_hw is None:
        out_hw = (h * s, w * s) if padding == "SAME" else ((h - 1) * s + max(k, s), (w - 1) * s + max(k, s))
    out = _tf.stack([_tf.shape(x)[0], out_hw[0], out_hw[1], cout])
    return _tf.nn.conv2d_transpose(x, const((k, k, cout, int(x.shape[-1])), k * 10 + s), out, s, padding)


def hard_sigmoid(x):
    return tf().nn.relu6(x + 3.0) * (1.0 / 6.0)


def resize(method, size, align=False, half=False):
    fn = tf1.image.resize_bilinear if method == "bilinear" else tf1.image.resize_nearest_neighbor
    return lambda x: fn(conv(x, 4), size, align_corners=align, half_pixel_centers=half)


CASES = {
    # activations
    "sigmoid": Case(lambda x: tf().sigmoid(conv(x, 4) * 3.0)),
    "tanh": Case(lambda x: tf().tanh(conv(x, 4) * 3.0)),
    "elu": Case(lambda x: tf().nn.elu(conv(x, 4) * 3.0)),
    "leaky_relu": Case(lambda x: tf().nn.leaky_relu(conv(x, 4) * 3.0, 0.1)),
    "softplus": Case(lambda x: tf().nn.softplus(conv(x, 4))),
    "softmax_channels": Case(lambda x: tf().nn.softmax(conv(x, 4))),
    # MobileNet v3: hard-swish and a squeeze-excite gate of hard-sigmoid
    "hard_swish": Case(lambda x: conv(x, 4) * hard_sigmoid(conv(x, 4))),
    "squeeze_excite": Case(lambda x: (lambda h: h * hard_sigmoid(conv(tf().nn.relu(
        conv(tf().reduce_mean(h, [1, 2], keepdims=True), 2, seed=1)), 6, seed=2)))(conv(x, 6, 3))),
    "affine_after_relu": Case(lambda x: tf().nn.relu(conv(x, 4)) * const((4,), 3) + const((4,), 4)),
    # binary ops of two computed tensors
    "add_sub": Case(lambda x: tf().nn.relu(conv(x, 4)) - conv(x, 4, 3, seed=1) + conv(x, 4, seed=2)),
    "maximum": Case(lambda x: tf().maximum(conv(x, 4), 0.2 * conv(x, 4))),  # TF1 leaky relu
    "minimum": Case(lambda x: tf().minimum(conv(x, 4), conv(x, 4, seed=1))),
    # normalisation
    "batchnorm_kept": Case(lambda x: tf().nn.relu(bn(tf().nn.relu(conv(x, 4)))), fold=False),
    "lrn": Case(lambda x: tf().nn.lrn(conv(x, 7, 3), 2, 1.0, 1e-2, 0.75)),
    # transposed convolutions (pix2pix / DCGAN / FCN decoders), with a BatchNorm folded into them
    "conv_transpose_same_k3_s2": Case(lambda x: conv_t(x, 5, 3, 2, "SAME")),
    "conv_transpose_same_k4_s2": Case(lambda x: conv_t(x, 5, 4, 2, "SAME")),
    "conv_transpose_valid_k3_s2": Case(lambda x: conv_t(x, 5, 3, 2, "VALID")),
    "conv_transpose_valid_k2_s2": Case(lambda x: conv_t(x, 5, 2, 2, "VALID")),
    "conv_transpose_k1_s2_padded": Case(lambda x: conv_t(x, 4, 1, 2, "VALID", out_hw=(int(x.shape[1]) * 2,) * 2),
                                        shape=(6, 6, 3)),
    "conv_transpose_bn_folded": Case(lambda x: tf().nn.relu(bn(conv_t(x, 5, 3, 2, "SAME")))),
    # resize (DeepLab / FPN)
    "bilinear_legacy_x2": Case(resize("bilinear", (16, 16))),
    "bilinear_align_corners": Case(resize("bilinear", (13, 11), align=True)),
    "bilinear_half_pixel": Case(resize("bilinear", (13, 20), half=True)),
    "bilinear_down": Case(resize("bilinear", (5, 3))),
    "nearest_legacy_x2": Case(resize("nearest", (16, 24))),
    "nearest_half_pixel": Case(resize("nearest", (13, 19), half=True)),
    "nearest_align_corners": Case(resize("nearest", (13, 11), align=True)),
    # shape ops
    "squeeze_expand_dims": Case(lambda x: conv(tf().expand_dims(tf().expand_dims(
        tf().nn.relu(tf().matmul(tf().squeeze(tf().reduce_mean(x, [1, 2], keepdims=True), [1, 2]), const((3, 5), 1))),
        1), 1), 4)),
    "strided_slice_crop": Case(lambda x: conv(x, 4)[:, 1:, 1:-2, :]),
    "strided_slice_stride": Case(lambda x: conv(x, 4)[:, ::2, 1::3, :]),
    "strided_slice_channels": Case(lambda x: conv(x, 6)[..., 1:4] + conv(x, 3, seed=1)),
    "slice": Case(lambda x: tf().slice(conv(x, 4), [0, 1, 2, 0], [-1, 5, 4, -1])),
    "split": Case(lambda x: (lambda parts: tf().concat([parts[2], parts[0] * parts[1]], 3))(
        tf().split(conv(x, 6), 3, axis=3))),
    "split_v": Case(lambda x: (lambda parts: conv(parts[1], 2) + parts[0])(tf().split(conv(x, 6), [2, 4], axis=3))),
    "nasnet_factorized_reduction": Case(lambda x: tf().nn.avg_pool2d(
        tf().pad(conv(x, 4), [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :], 1, 2, "VALID")),
    # BatchNorm before a layer folds forward into it (no padding to see the shift), else stays
    "bn_before_valid_conv": Case(lambda x: conv(bn(tf().nn.relu(conv(x, 4, 3))), 5, 3, padding="VALID")),
    "bn_before_flatten_dense": Case(lambda x: tf().matmul(tf().reshape(bn(tf().nn.relu(conv(x, 4, 3, stride=2))),
                                                                       [-1, 4 * 4 * 4]), const((64, 6), 5))),
    "bn_before_same_conv_stays": Case(lambda x: conv(bn(tf().nn.relu(conv(x, 4, 3))), 5, 3)),
    "channel_mean": Case(lambda x: conv(tf().concat([tf().reduce_mean(x, 3, keepdims=True), x], 3), 4)),
}


def ops_of(case: Case) -> set[str]:
    model = load(builder=case.build, input_shape=case.shape)
    graph = fold_batchnorm(model.graph) if case.fold else model.graph
    return {n.op for n in graph.nodes}


@pytest.mark.parametrize("target", quick(TARGETS))  # every op case in ONNX is in the quick tier
@pytest.mark.parametrize("name", list(CASES))
def test_case_in_the_target_runtime_matches_tf(tmp_path, name, target):
    case = CASES[name]
    model = load(builder=case.build, input_shape=case.shape)
    graph = fold_batchnorm(model.graph) if case.fold else model.graph
    refused = writer_for(target).unsupported(graph)
    out = str(tmp_path / f"m{TARGETS[target]}")
    if refused:
        with pytest.raises(CkptkitError, match="cannot express") as err:
            export(model, target, out, fold=case.fold)
        assert len(str(err.value).splitlines()) == 1
        assert refused[0].split(" (")[0] in str(err.value)
        assert not list(tmp_path.iterdir()), "a refused export left files behind"
        return
    options = dict(case.options)
    if target == "caffe" and not case.fold and mnn_misreads(graph, batchnorm_layers=True):
        with pytest.raises(CkptkitError, match="MNN misreads a Caffe BatchNorm layer") as err:
            export(model, target, out, fold=case.fold, **options)
        assert len(str(err.value).splitlines()) == 1 and not list(tmp_path.iterdir())
        options["caffe_runtime"] = "opencv"
    result = export(model, target, out, fold=case.fold, **options)
    assert result.comparisons and all(c.ok for c in result.comparisons), result.comparisons
    if target == "caffe":  # every installed consumer, each within its own tolerance
        assert len(result.comparisons) == (1 if options.get("caffe_runtime") else len(INSTALLED))
    else:
        assert result.comparison.max_rel < writer_for(target).tolerance


@pytest.mark.fast
def test_every_op_has_a_case_in_every_target_that_claims_it():
    covered: set[tuple[str, str]] = set()
    all_cases = [Case(fn, (9, 9, 3)) for fn in test_layers.CASES.values()] + list(CASES.values())
    for case in all_cases:
        model = load(builder=case.build, input_shape=case.shape)
        graph = fold_batchnorm(model.graph) if case.fold else model.graph
        for target in TARGETS:
            if not writer_for(target).unsupported(graph):
                covered |= {(n.op, target) for n in graph.nodes}
    missing = [f"{name} in {target}" for name, op in registry.load_all().items() if name != "Input"
               for target in op.writers if (name, target) not in covered]
    assert not missing, f"registered writers without a test case: {', '.join(missing)}"


@pytest.mark.parametrize("name, where", [("bn_before_valid_conv", "forward into Conv2D_1"),
                                         ("bn_before_flatten_dense", "forward into MatMul"),
                                         ("conv_transpose_bn_folded", "into conv2d_transpose")])
def test_fold_reports_where_each_batchnorm_went(name, where):
    case = CASES[name]
    graph = fold_batchnorm(load(builder=case.build, input_shape=case.shape).graph)
    assert graph.count("BatchNorm") == 0
    assert list(graph.folded.values()) == [where], graph.folded


def test_a_batchnorm_before_a_padded_conv_is_kept():
    case = CASES["bn_before_same_conv_stays"]
    graph = fold_batchnorm(load(builder=case.build, input_shape=case.shape).graph)
    assert graph.count("BatchNorm") == 1 and not graph.folded


def test_an_unsupported_target_names_every_node_at_once(tmp_path):
    def two_lrns(x):
        return tf().nn.lrn(tf().nn.lrn(conv(x, 4), 1), 2)

    model = load(builder=two_lrns, input_shape=(8, 8, 3))
    with pytest.raises(CkptkitError) as err:
        export(model, "keras", str(tmp_path / "m.keras"))
    message = str(err.value)
    assert "cannot express 2 node(s)" in message and message.count("(LRN") == 2 and "onnx" in message
    assert not list(tmp_path.iterdir())


def test_registering_a_writer_twice_is_an_error():
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.get("Relu").writer("onnx")(lambda *a: None)


@pytest.mark.fast
def test_the_documented_recipe_is_the_softplus_module():
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipe = re.search(r"```py\n(.*?)```", open(os.path.join(root, "docs", "architecture.md")).read(), re.S).group(1)
    assert recipe == open(os.path.join(root, "ckptkit", "ops", "softplus.py")).read()


@pytest.mark.fast
def test_the_op_table_lists_every_op_with_the_targets_that_write_it(capsys):
    """`python -m ckptkit.ops`: one row per registered op, a column per target, `yes*` where a check refuses
    some attribute values."""
    from ckptkit.ops.__main__ import main

    main()
    lines = capsys.readouterr().out.splitlines()[1:]
    rows = {line.split()[0]: line.split()[1:1 + len(registry.TARGETS)] for line in lines
            if line.strip() and not line.startswith("yes*")}
    ops = {name: op for name, op in registry.load_all().items() if name != "Input"}
    assert set(rows) == set(ops)
    for name, op in ops.items():
        want = [("yes*" if t in op.checks else "yes") if t in op.writers else "-" for t in registry.TARGETS]
        assert rows[name] == want, name
