"""Advice reproduces what was measured: diagnose's printed `fix:` command, run as printed, gives the same
statistics as recalibrating with the options that shaped the measurement (checked against a direct library
call with those options, and with the model's accuracy where the preprocessing is the trained one)."""
import json
import os
import shlex

import numpy as np
import pytest

from ckptkit import cli

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "digits")
BROKEN = os.path.abspath(os.path.join(ROOT, "broken"))
CALIBRATION = os.path.abspath(os.path.join(ROOT, "calibration"))
TEST = os.path.abspath(os.path.join(ROOT, "test"))

# flavour -> the diagnose options (library keywords); "unit" is how the digits net was trained
FLAVOURS = {
    "unit": dict(preprocess="unit"),
    "none_mean_std": dict(preprocess="none", mean=[127.5], std=[127.5]),
    "inception_stretch": dict(preprocess="inception", resize="stretch"),
    "vgg_std": dict(preprocess="vgg", mean=[120.0], std=[60.0], max_samples=96, seed=3, batch_size=16),
}


def _accuracy(prefix: str) -> float:
    import glob

    from PIL import Image

    import ckptkit

    paths = sorted(glob.glob(os.path.join(TEST, "*", "*.png")))
    x = np.stack([np.asarray(Image.open(p), np.float32)[..., None] / 255.0 for p in paths])
    y = np.array([int(os.path.basename(os.path.dirname(p))) for p in paths])
    model = ckptkit.load(prefix, meta=os.path.join(BROKEN, "model.ckpt.meta"))
    return float(np.mean(model.reference(x).argmax(-1) == y))


def _moving(prefix: str) -> dict:
    from ckptkit.checkpoint import Checkpoint

    ck = Checkpoint(prefix)
    return {n: ck.get(n) for n in ck.names if n.endswith(("moving_mean", "moving_variance"))}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_the_printed_fix_reproduces_the_measurement(flavour, tmp_path, capsys):
    import ckptkit

    opts = FLAVOURS[flavour]
    d = ckptkit.diagnose(BROKEN, CALIBRATION, **opts)
    assert d.verdict == "never updated"
    words = shlex.split(d.command)
    assert words[:2] == ["ckptkit", "recalibrate"]
    out = str(tmp_path / "fixed" / "model.ckpt")
    words[words.index("-o") + 1] = out
    assert cli.main(["-q", *words[1:]]) == 0
    capsys.readouterr()
    direct = ckptkit.recalibrate(BROKEN, CALIBRATION, str(tmp_path / "direct" / "model.ckpt"), **opts)
    fixed, expected = _moving(out), _moving(str(tmp_path / "direct" / "model.ckpt"))
    assert fixed.keys() == expected.keys() and fixed
    for name in fixed:
        np.testing.assert_allclose(fixed[name], expected[name], rtol=1e-6, atol=1e-7)
    with open(out + ".ckptkit.json") as f:
        assert json.load(f)["preprocessing"] == direct.preprocessing
    if flavour == "unit":  # the trained preprocessing: the fix gives the healthy model back
        assert _accuracy(out) > 0.7 > _accuracy(BROKEN)


def test_the_fix_keeps_a_builder_and_its_arguments():
    from ckptkit import options

    def build(x):
        return x

    build.ckptkit_spec, build.ckptkit_args = "nets/my_net.py:build", {"num_classes": 10, "width": 0.5}
    words = options.to_words({"builder": build, "input_shape": "32,32,3", "arch_args": {}, "seed": 0,
                              "batch_size": 32, "mode": "precise"})
    assert words == ["--input-shape", "32,32,3", "--builder", "nets/my_net.py:build", "--builder-arg",
                     "num_classes=10", "--builder-arg", "width=0.5"]


def test_every_data_flag_of_the_cli_is_in_the_one_table():
    """A flag added to the parser but not to ckptkit.options would be dropped from advice: fail here."""
    from ckptkit import options

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    known = {f.dest for f in options.TOPOLOGY + options.DATA}
    not_measurement = {"help", "quiet", "debug", "checkpoint", "output_path", "report", "json", "plot", "top",
                       "data", "arch_arg", "builder", "builder_arg"}
    for command in ("recalibrate", "diagnose"):
        dests = {a.dest for a in sub.choices[command]._actions}
        assert dests - known - not_measurement == set(), command
