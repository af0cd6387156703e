"""TF-free unit tests of recalibration's statistics and its record (numpy references, no TensorFlow)."""
import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.fast  # TF-free: all of it is in the quick tier

from ckptkit.ir import Graph, Node
from ckptkit.commands.recalibration.moments import Moments, bn_levels, merge_workers
from ckptkit.commands.recalibration.report import Recalibration, record, recorded_preprocessing

RNG = np.random.default_rng(0)


def moments_of(chunks) -> Moments:
    m = Moments(chunks[0].shape[1])
    for c in chunks:
        c = c.astype(np.float64)
        m.add(len(c), c.mean(0), ((c - c.mean(0)) ** 2).sum(0))
    return m


def test_chan_merge_survives_large_means():
    x = RNG.normal(1000.0, 1.0, (64, 4)).astype(np.float32)
    m = moments_of(np.split(x, 8))
    np.testing.assert_allclose(m.variance, x.astype(np.float64).var(0), rtol=1e-9)


def test_chan_merge_of_unequal_chunks_and_an_empty_one_is_the_population_moments():
    x = RNG.normal(-3.0, 2.5, (101, 3))
    m = moments_of([x[:1], x[1:40], x[40:]])
    m.add(0, np.zeros(3), np.zeros(3))  # a worker whose shard was empty
    assert m.n == 101
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.variance, x.var(0), rtol=1e-12)


class Gathered:
    """A cluster whose gather returns every worker's row, in rank order."""

    def __init__(self, rows):
        self.rows = rows

    def gather(self, row):
        return np.stack(self.rows)


def test_workers_merged_equal_one_process_that_saw_every_shard():
    shards = [RNG.normal(i, 1.0 + i, (30 + 7 * i, 2)) for i in range(3)]

    def worker(x):
        full = {"bn": moments_of([x])}
        halves = [{"bn": moments_of([x[0::2]])}, {"bn": moments_of([x[1::2]])}]
        return full, halves, len(x)

    rows = []
    for x in shards:  # what each worker sends: its own row
        full, halves, seen = worker(x)
        capture = Gathered([])
        capture.gather = lambda row: rows.append(row) or np.stack([row])
        merge_workers(capture, full, halves, seen, {"bn": 2})
    full, halves, seen = worker(shards[0])
    merged, merged_halves, total = merge_workers(Gathered(rows), full, halves, seen, {"bn": 2})
    every = np.concatenate(shards)
    assert total == len(every) and merged["bn"].n == len(every)
    np.testing.assert_allclose(merged["bn"].mean, every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged["bn"].variance, every.var(0), rtol=1e-12)
    assert merged_halves[0]["bn"].n + merged_halves[1]["bn"].n == len(every)


def test_bn_levels_count_the_longest_chain_of_batchnorms_above():
    def node(name, op, *inputs):
        return Node(name, op, list(inputs), (None, 4, 4, 2))

    g = Graph([node("x", "Input"), node("bn1", "BatchNorm", "x"), node("relu", "Relu", "bn1"),
               node("bn2", "BatchNorm", "relu"), node("side", "BatchNorm", "x"), node("add", "Add", "bn2", "side"),
               node("bn3", "BatchNorm", "add")], ["x"], ["bn3"])
    assert bn_levels(g) == {"bn1": 1, "bn2": 2, "side": 1, "bn3": 3}


def test_the_record_beside_a_checkpoint_reads_back(tmp_path):
    prep = {"preset": "unit", "mean": [0.0], "std": [1.0], "geometry": "resize"}
    result = Recalibration({}, [], 64, "precise", preprocessing=prep)
    kept = record(result, "/data/in/model.ckpt")
    prefix = str(tmp_path / "model.ckpt")
    (tmp_path / "model.ckpt.ckptkit.json").write_text(json.dumps(kept))
    assert recorded_preprocessing(prefix) == prep
    assert record(Recalibration({}, [], 64, "precise"), "x") is None  # arrays used as they are: nothing to keep
    (tmp_path / "model.ckpt.ckptkit.json").write_text("{not json")
    assert recorded_preprocessing(prefix) is None  # a damaged record is no record
    assert recorded_preprocessing(str(tmp_path / "absent.ckpt")) is None


def test_statistics_and_report_modules_import_no_tensorflow():
    code = ("import sys, ckptkit.commands.recalibration.moments, ckptkit.commands.recalibration.report, "
            "ckptkit.commands.recalibration.output; print([m for m in ('tensorflow', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
