"""diagnose: stored statistics judged against data, nothing written, the fix printed and working."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from ckptkit.read.checkpoint import Checkpoint, write_checkpoint
from ckptkit.commands.diagnose import diagnose
from ckptkit.commands.recalibrate import recalibrate

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "..", "fixtures", "digits")
BROKEN = os.path.join(DIGITS, "broken")
CALIBRATION = os.path.join(DIGITS, "calibration")


@pytest.fixture
def cli(run_cli):
    return run_cli


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("healthy") / "model.ckpt")
    recalibrate(BROKEN, CALIBRATION, out, preprocess="unit")
    return out


def _shifted(healthy, folder, shift):
    """The healthy checkpoint with every moving mean moved by `shift` of the channel's std (a lagging EMA)."""
    ckpt = Checkpoint(healthy)

    def tensors():
        for name in ckpt.names:
            value = ckpt.get(name)
            if name.endswith("moving_mean"):
                value = value + shift * np.sqrt(ckpt.get(name[: -len("mean")] + "variance"))
            yield name, value

    folder.mkdir()
    prefix = str(folder / "model.ckpt")
    write_checkpoint(prefix, tensors())
    os.symlink(healthy + ".meta", prefix + ".meta")
    return prefix


def test_never_updated_statistics_are_diagnosed_with_the_fix(tmp_path, cli):
    run = cli("diagnose", BROKEN, "--data", CALIBRATION, "--preprocess", "unit", "--json")
    assert run.returncode == 1, run.stderr
    d = json.loads(run.stdout)  # stdout is one JSON document
    assert d["verdict"] == "never updated" and d["counts"]["never updated"] == 3
    assert d["output_drift"] > 0.5 and d["top1_agreement"] < 0.5
    assert d["samples"] == 500 and d["preprocessing"]["preset"] == "unit"
    words = shlex.split(d["command"])
    assert words[:2] == ["ckptkit", "recalibrate"] and "--preprocess" in words
    assert not os.listdir(tmp_path), "diagnose wrote something"
    out = tmp_path / "fixed" / "model.ckpt"
    words[words.index("-o") + 1] = str(out)
    fix = subprocess.run([sys.executable, "-m", "ckptkit.cli", *words[1:]], capture_output=True, text=True)
    assert fix.returncode == 0, fix.stderr
    again = diagnose(str(out), CALIBRATION)  # preprocessing recorded beside it; topology from the .meta beside it
    assert again.verdict == "healthy" and again.output_drift < 1e-4 and again.command is None


def test_stale_statistics_are_told_from_noise(healthy, tmp_path):
    assert diagnose(healthy, CALIBRATION).verdict == "healthy"
    slightly = diagnose(_shifted(healthy, tmp_path / "a", 0.02), CALIBRATION, preprocess="unit")
    assert slightly.verdict == "healthy"
    stale = diagnose(_shifted(healthy, tmp_path / "b", 1.0), CALIBRATION, preprocess="unit")
    assert stale.verdict == "stale" and stale.counts["stale"] == 3 and stale.output_drift > 0.05
    assert "noise" in stale.reason
    assert all(r["mean_shift"] > 0.9 for r in stale.layers)


def test_text_report_and_exit_codes(healthy, cli):
    run = cli("diagnose", healthy, "--data", CALIBRATION, "-q")
    assert run.returncode == 0, run.stderr
    assert "diagnosis: HEALTHY" in run.stdout and "fix:" not in run.stdout
    run = cli("diagnose", BROKEN, "--data", CALIBRATION, "--preprocess", "unit", "-q")
    assert run.returncode == 1 and "diagnosis: NEVER UPDATED" in run.stdout and "fix: ckptkit recalibrate" in run.stdout
    run = cli("diagnose", BROKEN, "--data", CALIBRATION)
    assert run.returncode == 2 and "--preprocess" in run.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def healthy_subset(tmp_path_factory):
    """Statistics from 250 of the calibration images (seed 1): right, but not the very numbers a smaller
    diagnosis sample gives (as a trained EMA is not)."""
    out = str(tmp_path_factory.mktemp("healthy_subset") / "model.ckpt")
    recalibrate(BROKEN, CALIBRATION, out, preprocess="unit", max_samples=250, seed=1)
    return out


@pytest.mark.parametrize("samples", [32, 48, 100, 500])
def test_a_healthy_checkpoint_is_never_called_stale_on_small_data(healthy_subset, samples):
    d = diagnose(healthy_subset, CALIBRATION, max_samples=samples, seed=2)
    assert d.verdict in ("healthy", "inconclusive"), (d.verdict, d.reason)
    assert d.command is None  # no fix is advised on noise
    assert d.output_drift is not None and d.output_drift <= 2.0  # a ratio on a sane base
    if d.verdict == "inconclusive":
        assert d.samples_needed and d.samples_needed > samples and "too few to tell" in d.reason
    assert all(r["verdict"] in ("healthy", "inconclusive") for r in d.layers)


@pytest.mark.parametrize("samples", [32, 100, 500])
def test_a_stale_checkpoint_is_called_stale_from_32_samples_on(healthy_subset, tmp_path, samples):
    d = diagnose(_shifted(healthy_subset, tmp_path / "s", 1.0), CALIBRATION, preprocess="unit", max_samples=samples,
                 seed=2)
    assert d.verdict == "stale" and d.command and d.counts["stale"] >= 1, (d.verdict, d.reason)
    assert "noise" in d.reason
    stale = [r for r in d.layers if r["verdict"] == "stale"]
    assert all(max(r["mean_z"] or 0, r["log_variance_z"] or 0) > 2 for r in stale)  # consistent with the layers


def test_inconclusive_is_said_with_the_samples_needed(healthy_subset, cli):
    run = cli("diagnose", healthy_subset, "--data", CALIBRATION, "--max-samples", "32", "--seed", "2", "-q")
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    assert first.startswith(("diagnosis: HEALTHY", "diagnosis: INCONCLUSIVE")), run.stdout
    assert "fix:" not in run.stdout and "32 samples" in first


def test_the_fix_reproduces_the_measurement_on_small_data(tmp_path):
    """64 samples at --batch-size 32: diagnose needs small batches for its split-half noise, but the statistics
    it reports are those of the batch size asked for (in precise mode upstream BNs normalise by batch
    statistics, so the batch size shapes them), so its fix, run as printed, reports the same shifts."""
    import shlex

    from ckptkit.commands.recalibrate import recalibrate as run_recalibrate

    d = diagnose(BROKEN, CALIBRATION, preprocess="unit", max_samples=64, batch_size=32)
    words = shlex.split(d.command)
    assert "--max-samples" in words
    options = {"max_samples": int(words[words.index("--max-samples") + 1]), "preprocess": "unit"}
    if "--batch-size" in words:
        options["batch_size"] = int(words[words.index("--batch-size") + 1])
    fixed = run_recalibrate(BROKEN, CALIBRATION, str(tmp_path / "fixed" / "model.ckpt"), **options)
    got = {r["layer"]: r["mean_shift"] for r in fixed.report}
    for row in d.layers:
        assert got[row["layer"]] == pytest.approx(row["mean_shift"], rel=1e-5), row["layer"]
