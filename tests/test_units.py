"""TF-free unit tests of the weight layouts, padding geometry and folding math (numpy references)."""
import dataclasses

import numpy as np
import pytest

pytestmark = pytest.mark.fast  # TF-free: all of it is in the quick tier

from ckptkit.ir import registry
from ckptkit.ir import Graph, Node, same_pads
from ckptkit.ir.layout import in_scale_shape, out_channels, scale_outputs, to_oihw
from ckptkit.ir.passes import absorb, absorb_input_affine, fold_batchnorm

RNG = np.random.default_rng(0)


def conv_nhwc(x, w, stride=1):
    """Plain VALID convolution (TF semantics: correlation), x NHWC, w HWIO."""
    kh, kw, _, co = w.shape
    n, h, wd, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    y = np.zeros((n, oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            y[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, w)
    return y


def depthwise_nhwc(x, w):
    kh, kw, c, m = w.shape
    n, h, wd, _ = x.shape
    y = np.zeros((n, h - kh + 1, wd - kw + 1, c * m))
    for i in range(h - kh + 1):
        for j in range(wd - kw + 1):
            patch = x[:, i:i + kh, j:j + kw, :]
            y[:, i, j, :] = np.einsum("nhwc,hwcm->ncm", patch, w).reshape(n, -1)
    return y


@pytest.mark.parametrize("layout, shape", [("HWIO", (3, 3, 4, 5)), ("HWCM", (3, 3, 4, 2)), ("IO", (6, 5)),
                                           ("OI", (5, 6)), ("HWOI", (3, 3, 5, 4))])
def test_scale_outputs_scales_the_output_channel(layout, shape):
    w = RNG.normal(size=shape)
    s = RNG.uniform(0.5, 2, out_channels(shape, layout))
    got = scale_outputs(w, layout, s)
    # the reference: move the output axis last by the layout's meaning, scale, move back
    if layout == "HWCM":
        want = (w.reshape(3, 3, -1) * s).reshape(shape)
    elif layout == "OI":
        want = (w.T * s).T
    elif layout == "HWOI":
        want = (w.transpose(0, 1, 3, 2) * s).transpose(0, 1, 3, 2)
    else:
        want = w * s
    assert np.allclose(got, want)


def test_to_oihw_depthwise_output_channel_order_is_c_times_m_plus_m():
    w = RNG.normal(size=(3, 3, 4, 2))
    kernel, group = to_oihw(w, "HWCM")
    assert group == 4 and kernel.shape == (8, 1, 3, 3)
    assert np.array_equal(kernel[2 * 2 + 1, 0], w[:, :, 2, 1])


@pytest.mark.parametrize("size, k, s, d", [(8, 3, 2, 1), (9, 3, 2, 1), (7, 2, 1, 1), (10, 4, 2, 1), (9, 3, 1, 2)])
def test_same_pads_give_tf_output_size(size, k, s, d):
    before, after = same_pads(size, k, s, d)
    eff = (k - 1) * d + 1
    assert (size + before + after - eff) // s + 1 == -(-size // s)
    assert after - before in (0, 1)  # the odd pixel goes after


def _node(name, op, inputs, shape, **kw):
    return Node(name, op, inputs, shape, **kw)


def test_forward_fold_into_a_valid_conv_equals_the_affine_then_conv():
    x = RNG.normal(size=(2, 6, 6, 3))
    w = RNG.normal(size=(3, 3, 3, 4))
    s, t = RNG.uniform(0.5, 2, 3), RNG.normal(size=3)
    want = conv_nhwc(x * s + t, w)
    layer = _node("c", "Conv", ["x"], (None, 4, 4, 4), params={"weights": w.copy()})
    absorb_input_affine(layer, s, t)
    got = conv_nhwc(x, layer.params["weights"]) + layer.params["bias"]
    assert np.allclose(got, want)


def test_forward_fold_into_a_depthwise_conv():
    x = RNG.normal(size=(2, 5, 5, 3))
    w = RNG.normal(size=(3, 3, 3, 2))
    s, t = RNG.uniform(0.5, 2, 3), RNG.normal(size=3)
    want = depthwise_nhwc(x * s + t, w)
    layer = _node("d", "DepthwiseConv", ["x"], (None, 3, 3, 6), params={"weights": w.copy()})
    absorb_input_affine(layer, s, t)
    assert np.allclose(depthwise_nhwc(x, layer.params["weights"]) + layer.params["bias"], want)


def test_forward_fold_through_a_flatten_tiles_per_channel_vectors_in_hwc_order():
    x = RNG.normal(size=(2, 2, 3, 4))
    w = RNG.normal(size=(24, 5))
    s, t = RNG.uniform(0.5, 2, 4), RNG.normal(size=4)
    want = (x * s + t).reshape(2, -1) @ w
    layer = _node("fc", "Dense", ["flat"], (None, 5), params={"weights": w.copy()})
    absorb_input_affine(layer, s, t, repeat=6)
    assert np.allclose(x.reshape(2, -1) @ layer.params["weights"] + layer.params["bias"], want)


def test_backward_fold_into_a_transposed_conv_scales_axis_2():
    w = RNG.normal(size=(3, 3, 5, 4))  # [kh, kw, out, in]
    layer = _node("t", "ConvTranspose", ["x"], (None, 8, 8, 5), params={"weights": w.copy()})
    s, t = RNG.uniform(0.5, 2, 5), RNG.normal(size=5)
    absorb(layer, s, t)
    assert np.allclose(layer.params["weights"], w * s.reshape(1, 1, 5, 1))
    assert np.allclose(layer.params["bias"], t)


def test_fold_batchnorm_goes_backward_first_then_forward():
    g = Graph([
        _node("x", "Input", [], (None, 6, 6, 3)),
        _node("bn0", "BatchNorm", ["x"], (None, 6, 6, 3), attrs={"epsilon": 1e-3},
              params={"gamma": np.ones(3, np.float32), "beta": np.zeros(3, np.float32),
                      "mean": np.full(3, 0.5, np.float32), "variance": np.full(3, 4.0, np.float32)}),
        _node("c", "Conv", ["bn0"], (None, 4, 4, 2), params={"weights": RNG.normal(size=(3, 3, 3, 2)).astype(np.float32)}),
        _node("bn1", "BatchNorm", ["c"], (None, 4, 4, 2), attrs={"epsilon": 1e-3},
              params={"gamma": None, "beta": None, "mean": np.zeros(2, np.float32), "variance": np.ones(2, np.float32)}),
    ], ["x"], ["bn1"])
    folded = fold_batchnorm(g)
    assert folded.folded == {"bn1": "into c", "bn0": "forward into c"}
    assert [n.op for n in folded.nodes] == ["Input", "Conv"]


def test_every_op_declares_typed_attributes_and_an_executor():
    for name, op in registry.load_all().items():
        assert op.run is not None, name
        attrs = op.make_attrs({})
        assert isinstance(attrs, op.attrs), name
    with pytest.raises(ValueError, match="no attribute"):
        registry.get("Conv").make_attrs({"stride": (1, 1)})
    assert in_scale_shape((3, 3, 4, 5), "HWIO") == (4, 1)


@pytest.mark.parametrize("layout, shape", [("HWIO", (3, 3, 4, 5)), ("HWCM", (3, 3, 4, 2)), ("OI", (6, 7)),
                                           ("IO", (7, 6)), ("HWOI", (3, 3, 5, 4))])
def test_in_place_weight_scaling_slab_by_slab_equals_the_one_rounding(monkeypatch, layout, shape):
    from ckptkit.ir import layout as L

    rng = np.random.default_rng(0)
    w = rng.normal(size=shape).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, L.out_channels(shape, layout))
    want = (w.astype(np.float64) * scale.reshape(L.out_scale_shape(shape, layout))).astype(np.float32)
    monkeypatch.setattr(L, "CHUNK_BYTES", 8)  # one row of the first axis per step
    got = L.scale_outputs(w.copy(), layout, scale, inplace=True)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(L.scale_outputs(w, layout, scale), want)


@pytest.mark.parametrize("gamma, beta, bias", [(True, True, False), (False, False, False), (True, False, True),
                                               (False, True, True)])
def test_bn_affine_equals_the_normalisation_it_replaces(gamma, beta, bias):
    """x*s + t == (x + bias - mean) / sqrt(var + eps) * gamma + beta, absent gamma/beta being 1 and 0."""
    from ckptkit.core.bn_formula import affine

    c = 5
    mean, var = RNG.normal(size=c), RNG.uniform(0.1, 3.0, c)
    g = RNG.normal(size=c) if gamma else None
    b = RNG.normal(size=c) if beta else None
    layer_bias = RNG.normal(size=c) if bias else None
    s, t = affine(mean, var, 1e-3, g, b, bias=layer_bias)
    x = RNG.normal(size=(7, c))
    expected = (x + (layer_bias if bias else 0.0) - mean) / np.sqrt(var + 1e-3) * (g if gamma else 1.0) + (
        b if beta else 0.0)
    np.testing.assert_allclose(x * s + t, expected, rtol=1e-12, atol=1e-12)
    assert s.dtype == t.dtype == np.float64


def test_typed_options_take_keywords_over_them_and_refuse_unknown_ones():
    from ckptkit.core import options

    topology, sampling = options.split({"preprocess": "vgg", "arch": "resnet_v1_50", "batch_size": 8},
                                       options.Topology(meta="m.meta"), options.Sampling(batch_size=64, seed=3))
    assert (topology.meta, topology.arch) == ("m.meta", "resnet_v1_50")
    assert (sampling.preprocess, sampling.batch_size, sampling.seed) == ("vgg", 8, 3)
    with pytest.raises(TypeError, match="'preproces'"):
        options.split({"preproces": "vgg"})
    flat = options.as_options(topology, sampling)
    assert options.split(flat) == (topology, sampling)  # flat keywords and typed options say the same
    # the flag tables are read from the dataclasses: every field but the composite ones has its spelling
    assert [f.option for f in options.DATA] == [f.name for f in dataclasses.fields(options.Sampling)]
    assert {f.option for f in options.TOPOLOGY} == {f.name for f in dataclasses.fields(options.Topology)} - {
        "arch_args", "builder"}
