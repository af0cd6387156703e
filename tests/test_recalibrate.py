"""Recalibration on a small slim CNN really trained on scikit-learn's digits."""
import json
import os

import numpy as np
import pytest

from ckptkit import CkptkitError
from ckptkit.core.lazy_tf import tf, tf1
from ckptkit.read.checkpoint import Checkpoint
from ckptkit import testing as T
from ckptkit.commands.recalibrate import recalibrate
from ckptkit.topology.sources import load


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    x, y = T.digits_data()
    train, test = slice(0, 1400), slice(1400, None)
    paths = {}
    _tf = tf()
    g = _tf.Graph()
    with g.as_default():
        _tf.random.set_seed(0)
        inp = tf1.placeholder(_tf.float32, [None, 8, 8, 1], name="input")
        lab = tf1.placeholder(_tf.int64, [None], name="labels")
        is_training = tf1.placeholder_with_default(True, [], name="is_training")
        logits = T.digits_net(inp, is_training)
        loss = tf1.losses.sparse_softmax_cross_entropy(lab, logits)
        with _tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            step = tf1.train.AdamOptimizer(0.01).minimize(loss)
        saver = tf1.train.Saver()
        weights_only = tf1.train.Saver(tf1.trainable_variables())
        stats = [v for v in tf1.global_variables() if "moving_" in v.op.name]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            rng = np.random.default_rng(1)
            for i in range(300):
                idx = rng.integers(0, 1400, 64)
                sess.run(step, {inp: x[train][idx], lab: y[train][idx]})
                if i == 5:
                    early = sess.run(stats)
            paths["healthy"] = saver.save(sess, str(root / "healthy" / "model.ckpt"))
            paths["missing"] = weights_only.save(sess, str(root / "missing" / "model.ckpt"))
            for v in stats:
                v.load(np.zeros(v.shape) if v.op.name.endswith("mean") else np.ones(v.shape), sess)
            paths["reset"] = saver.save(sess, str(root / "reset" / "model.ckpt"))
            for v, value in zip(stats, early):
                v.load(value, sess)
            paths["stale"] = saver.save(sess, str(root / "stale" / "model.ckpt"))
    os.makedirs(root / "npy")
    np.save(root / "npy" / "train.npy", x[train])
    from PIL import Image

    os.makedirs(root / "images" / "sub")
    for i in range(600):
        Image.fromarray(np.round(x[train][i, :, :, 0] * 255).astype(np.uint8)).save(root / "images" / "sub" / f"{i}.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    return dict(paths=paths, root=root, x_test=x[test], y_test=y[test])


def accuracy(prefix, meta, digits):
    model = load(prefix, meta=meta)
    return float(np.mean(model.reference(digits["x_test"]).argmax(-1) == digits["y_test"]))


@pytest.mark.parametrize("case", ["missing", "reset", "stale"])
@pytest.mark.parametrize("source", ["npy", "images"])
def test_recalibration_restores_accuracy(digits, tmp_path, case, source):
    meta = digits["paths"]["healthy"] + ".meta"
    good = accuracy(digits["paths"]["healthy"], meta, digits)
    assert good > 0.9
    broken = digits["paths"][case]
    if case != "missing":
        assert accuracy(broken, meta, digits) < good - 0.05  # the damage is real
    kw = dict(preprocess="unit") if source == "images" else {}
    out = str(tmp_path / "fixed.ckpt")
    result = recalibrate(broken, str(digits["root"] / source), out, meta=meta, batch_size=64, **kw)
    assert result.samples == (1400 if source == "npy" else 600)
    assert accuracy(out, meta, digits) >= good - 0.01
    ckpt_in, ckpt_out = Checkpoint(broken), Checkpoint(out)
    for name in ckpt_in.names:  # everything but the statistics is bit-identical
        if "moving_" not in name:
            np.testing.assert_array_equal(ckpt_in.get(name), ckpt_out.get(name))
    assert sum("moving_mean" in n for n in ckpt_out.names) == 3


def test_healthy_checkpoint_barely_moves(digits, tmp_path):
    meta = digits["paths"]["healthy"] + ".meta"
    out = str(tmp_path / "fixed.ckpt")
    recalibrate(digits["paths"]["healthy"], str(digits["root"] / "npy"), out, meta=meta, batch_size=64,
                report_path=str(tmp_path / "r.json"), plot_path=str(tmp_path / "r.png"))
    assert abs(accuracy(out, meta, digits) - accuracy(digits["paths"]["healthy"], meta, digits)) <= 0.01
    assert os.path.getsize(tmp_path / "r.png") > 1000


def test_statistics_are_exact_pooled_moments(digits, tmp_path):
    """conv1's BN sees conv1's output: its new statistics equal numpy's over all N*H*W values."""
    meta = digits["paths"]["healthy"] + ".meta"
    model = load(digits["paths"]["healthy"], meta=meta)
    res = recalibrate(digits["paths"]["healthy"], str(digits["root"] / "npy"), None, model=model, batch_size=50)
    conv = model.graph["conv1/Conv2D"]
    from ckptkit.run.tf_exec import run_graph

    x = np.load(digits["root"] / "npy" / "train.npy")
    act = run_graph(model.graph, x, fetch=["conv1/Conv2D"])["conv1/Conv2D"].numpy().astype(np.float64)
    bn = [n for n in model.graph.nodes if n.op == "BatchNorm" and n.inputs == [conv.name]][0]
    mean, var = res.statistics[bn.name]
    np.testing.assert_allclose(mean, act.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, act.var((0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_sequential_mode_restores_accuracy(digits, tmp_path):
    meta = digits["paths"]["healthy"] + ".meta"
    out = str(tmp_path / "fixed.ckpt")
    recalibrate(digits["paths"]["reset"], str(digits["root"] / "npy"), out, meta=meta, mode="sequential")
    assert accuracy(out, meta, digits) >= accuracy(digits["paths"]["healthy"], meta, digits) - 0.01


def test_no_usable_samples_is_an_error(digits, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "junk.png").write_bytes(b"junk")
    with pytest.raises(CkptkitError, match="no usable samples"):
        recalibrate(digits["paths"]["healthy"], str(empty), str(tmp_path / "o.ckpt"), preprocess="unit",
                    meta=digits["paths"]["healthy"] + ".meta")


SPLIT_SCRIPT = r"""
import sys, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ckptkit.commands.recalibrate import recalibrate
prefix, data, meta, out = sys.argv[1:]
kw = dict(meta=meta, max_samples=1280)
split = recalibrate(prefix, data, None, batch_size=64, device="/CPU:0,/CPU:1", **kw)
single = recalibrate(prefix, data, None, batch_size=32, device="/CPU:0", **kw)
assert split.samples == single.samples == 1280
for name, (mean, var) in single.statistics.items():
    np.testing.assert_allclose(split.statistics[name][0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.statistics[name][1], var, rtol=1e-5, atol=1e-6)
# a last batch of one sample cannot be split: it runs on the first device
odd = recalibrate(prefix, data, None, batch_size=64, device="/CPU:0,/CPU:1", meta=meta, max_samples=1281)
assert odd.samples == 1281 and all(np.isfinite(v).all() for s in odd.statistics.values() for v in s)
print("SPLIT_OK")
"""


def test_batches_split_across_devices_merge_exactly(digits, tmp_path):
    """tf.distribute over two logical CPUs: each batch of 64 split in two equals one device at batch 32."""
    import subprocess
    import sys

    prefix = digits["paths"]["reset"]
    proc = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT, prefix, str(digits["root"] / "npy"),
                           digits["paths"]["healthy"] + ".meta", str(tmp_path)], capture_output=True, text=True)
    assert "SPLIT_OK" in proc.stdout, proc.stderr[-3000:]


def test_unknown_device_is_an_error(digits, tmp_path):
    with pytest.raises(CkptkitError, match=r"--device /GPU:7 is not available here \(devices: /CPU:0"):
        recalibrate(digits["paths"]["healthy"], str(digits["root"] / "npy"), None,
                    meta=digits["paths"]["healthy"] + ".meta", device="/GPU:7")


@pytest.mark.parametrize("mode, passes", [("precise", 1), ("sequential", 3)])
def test_progress_announces_its_total_and_reaches_it(digits, mode, passes):
    """The digits net has three BN levels in a chain: sequential mode reads the data three times."""
    totals, steps = [], []
    recalibrate(digits["paths"]["healthy"], str(digits["root"] / "npy"), None, meta=digits["paths"]["healthy"] + ".meta",
                batch_size=100, mode=mode, progress=steps.append, progress_total=totals.append)
    assert totals == [1400 * passes] and sum(steps) == 1400 * passes


# ---- issue 11: stated preprocessing, NaN never in, never out ----------------------------------------------
@pytest.fixture
def cli(run_cli):
    return run_cli


def test_images_need_a_stated_preprocessing(digits, tmp_path, cli):
    meta = digits["paths"]["healthy"] + ".meta"
    out = cli("recalibrate", digits["paths"]["reset"], "--meta", meta, "--data", str(digits["root"] / "images"),
              "-o", str(tmp_path / "f.ckpt"))
    assert out.returncode == 2 and "--preprocess" in out.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())


def test_preprocessing_is_reported_recorded_and_reused(digits, tmp_path, cli):
    meta = digits["paths"]["healthy"] + ".meta"
    out = tmp_path / "f.ckpt"
    run = cli("recalibrate", digits["paths"]["reset"], "--meta", meta, "--data", str(digits["root"] / "images"),
              "-o", str(out), "--preprocess", "unit", "--report", str(tmp_path / "r.json"), "-q")
    assert run.returncode == 0, run.stderr
    assert "--preprocess unit" in run.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["preprocessing"] == {"preset": "unit", "geometry": "stretch", "mean": [0.0], "std": [255.0]}
    again = recalibrate(str(out), str(digits["root"] / "images"), None, meta=meta, batch_size=64)
    assert again.preprocessing["preset"] == "unit"  # read from the record beside the checkpoint
    assert accuracy(str(out), meta, digits) >= accuracy(digits["paths"]["healthy"], meta, digits) - 0.01


def test_non_finite_samples_are_skipped(digits, tmp_path, caplog):
    x = np.load(digits["root"] / "npy" / "train.npy").copy()
    x[3, 0, 0, 0] = np.nan
    x[7, 2, 2, 0] = np.inf
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "x.npy", x)
    meta = digits["paths"]["healthy"] + ".meta"
    res = recalibrate(digits["paths"]["reset"], str(tmp_path / "data"), str(tmp_path / "f.ckpt"), meta=meta)
    assert res.samples == len(x) - 2 and "NaN or inf" in caplog.text
    ckpt = Checkpoint(str(tmp_path / "f.ckpt"))
    assert all(np.isfinite(ckpt.get(n)).all() for n in ckpt.names if "moving_" in n)


def test_overflowing_data_writes_nothing(digits, tmp_path):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "x.npy", np.full((8, 8, 8, 1), 3e38, np.float32))
    meta = digits["paths"]["healthy"] + ".meta"
    with pytest.raises(CkptkitError, match="not finite"):
        recalibrate(digits["paths"]["reset"], str(tmp_path / "data"), str(tmp_path / "f.ckpt"), meta=meta)
    assert sorted(os.listdir(tmp_path)) == ["data"]


@pytest.mark.parametrize("args, words", [(["--std", "0"], "--std 0"), (["--mean", "1,2"], "1 channel"),
                                         (["--mean", "abc"], "not a comma-separated"), (["--max-samples", "0"], "0")])
def test_bad_normalisation_is_refused(digits, tmp_path, args, words, cli):
    meta = digits["paths"]["healthy"] + ".meta"
    out = cli("recalibrate", digits["paths"]["reset"], "--meta", meta, "--data", str(digits["root"] / "images"),
              "-o", str(tmp_path / "f.ckpt"), "--preprocess", "unit", *args)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and last.startswith("ckptkit: error:") and words in last, out.stderr
    assert "Traceback" not in out.stderr and not list(tmp_path.iterdir())


def test_slim_eval_geometry_matches_slims_recipe():
    """vgg: smaller side to 256 (legacy bilinear), central crop; inception: central 87.5%, legacy bilinear."""
    from ckptkit.read.data import _geometry

    _tf = tf()
    img = np.random.default_rng(0).uniform(0, 255, (300, 400, 3)).astype(np.float32)
    got = _geometry(_tf.constant(img), "vgg", 224, 224).numpy()
    resized = tf1.image.resize_bilinear(img[None], [256, 341], align_corners=False)[0].numpy()  # rint(400*256/300)
    np.testing.assert_allclose(got, resized[16:240, 58:282], rtol=1e-6)
    got = _geometry(_tf.constant(img), "inception", 64, 64).numpy()
    crop = img[18:282, 25:375]  # tf.image.central_crop(0.875): start int((h - h*0.875) / 2), size h - 2*start
    want = tf1.image.resize_bilinear(crop[None], [64, 64], align_corners=False)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ---- issue 12: every unusable file is named, and the count says what was used --------------------------------
def _tfrecord(path, images):
    _tf = tf()
    with _tf.io.TFRecordWriter(str(path)) as w:
        for img in images:
            raw = _tf.io.encode_png(img).numpy()
            feature = {"image/encoded": _tf.train.Feature(bytes_list=_tf.train.BytesList(value=[raw]))}
            w.write(_tf.train.Example(features=_tf.train.Features(feature=feature)).SerializeToString())


def test_unusable_files_are_named_and_counted(digits, tmp_path, caplog):
    """Files PIL opens but TensorFlow cannot decode into this 1-channel model, a TIFF named .jpg, a PNG with a
    bad zlib stream and a truncated TFRecord: each named in a warning, never a traceback, and counted."""
    import zlib

    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    pixels = [np.round(digits["x_test"][i] * 255).astype(np.uint8) for i in range(20)]
    for i, p in enumerate(pixels[:12]):
        Image.fromarray(p[..., 0]).save(data / f"{i}.png")
    rgb = Image.fromarray(np.repeat(pixels[0], 3, axis=-1))
    rgb.convert("CMYK").save(data / "cmyk.jpg")
    rgb.save(data / "colour.bmp")
    rgb.save(data / "scan.tiff")
    os.rename(data / "scan.tiff", data / "scan.jpg")
    png = bytearray((data / "0.png").read_bytes())
    at = png.find(b"IDAT")
    size = int.from_bytes(png[at - 4:at], "big")
    png[at + 6:at + 4 + size] = bytes(len(png[at + 6:at + 4 + size]))  # zeroed deflate data, CRC fixed
    png[at + 4 + size:at + 8 + size] = (zlib.crc32(bytes(png[at:at + 4 + size])) & 0xFFFFFFFF).to_bytes(4, "big")
    (data / "badzlib.png").write_bytes(bytes(png))
    _tfrecord(data / "good.tfrecord", pixels[12:20])
    _tfrecord(tmp_path / "whole.tfrecord", pixels[:8])
    whole = (tmp_path / "whole.tfrecord").read_bytes()
    (data / "cut.tfrecord").write_bytes(whole[: len(whole) - 7])
    (data / "notes.txt").write_text("ignored")

    meta = digits["paths"]["healthy"] + ".meta"
    res = recalibrate(digits["paths"]["reset"], str(data), str(tmp_path / "f.ckpt"), meta=meta, preprocess="unit",
                      batch_size=4, report_path=str(tmp_path / "r.json"))
    for name in ("cmyk.jpg", "colour.bmp", "scan.jpg", "badzlib.png", "cut.tfrecord"):
        assert any(name in r.getMessage() and r.levelname == "WARNING" for r in caplog.records), name
    assert res.samples == 12 + 8
    assert res.data["used"] == ("used 12 of 16 image files, 8 of 8 TFRecord examples in 1 of 2 TFRecord file(s) "
                                "(1 file(s) of other types ignored)")
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(os.path.basename(p) for p in report["data"]["skipped"]) == \
        ["badzlib.png", "cmyk.jpg", "colour.bmp", "cut.tfrecord", "scan.jpg"]


def test_an_empty_device_list_is_an_error(digits, tmp_path):
    with pytest.raises(CkptkitError, match="--device ',' names no device"):
        recalibrate(digits["paths"]["healthy"], str(digits["root"] / "npy"), None,
                    meta=digits["paths"]["healthy"] + ".meta", device=",")


def test_the_plot_shows_every_layer_in_network_order(digits, tmp_path):
    """Missing statistics are said in words (not an empty frame); names in network order; the 0.05 line."""
    import matplotlib.pyplot as plt

    from ckptkit.commands.recalibrate import figure

    meta = digits["paths"]["healthy"] + ".meta"
    res = recalibrate(digits["paths"]["missing"], str(digits["root"] / "npy"), None, meta=meta, batch_size=64)
    fig = figure(res)
    mean_axis, _, split_axis = fig.axes
    assert [t.get_text() for t in mean_axis.get_yticklabels()] == ["conv1/BatchNorm", "conv2/BatchNorm",
                                                                   "fc1/BatchNorm"]
    assert sum(t.get_text().strip() == "missing" for t in mean_axis.texts) == 3
    assert any(abs(line.get_xdata()[0] - 0.05) < 1e-12 for line in split_axis.lines)
    assert "1400 samples" in fig._suptitle.get_text() and "model.ckpt" in fig._suptitle.get_text()
    plt.close(fig)


@pytest.mark.parametrize("case, verdict", [("missing", "missing"), ("reset", "never updated"), ("stale", "stale"),
                                           ("healthy", "healthy")])
def test_diagnose_tells_each_case(digits, case, verdict):
    """The four checkpoints of the digits net (statistics missing, never updated, from step 5 of 300, right)."""
    from ckptkit.commands.diagnose import diagnose

    meta = digits["paths"]["healthy"] + ".meta"
    d = diagnose(digits["paths"][case], str(digits["root"] / "npy"), meta=meta, batch_size=64)
    assert d.verdict == verdict, [(r["layer"], r["verdict"], r["mean_shift"]) for r in d.layers]
    if case == "missing":
        assert d.output_drift is None
    if case == "healthy":
        assert d.command is None and d.output_drift < 0.05
    else:
        assert "--meta" in d.command and d.command.startswith("ckptkit recalibrate")
