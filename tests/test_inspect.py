"""BatchNorm units from variables alone, and the three issue codes."""
import json
import subprocess
import sys

from ckptkit.batchnorm.units import find_units
from ckptkit.read.checkpoint import Checkpoint
from ckptkit.commands.inspect import inspect_checkpoint
from conftest import FIXTURE


def test_units_and_pairing_on_every_variant(store):
    units = {u.scope: u for u in find_units(Checkpoint(store("variants")))}
    assert units["fused/BatchNorm"].layer.kind == "conv"
    assert units["nocenter/BatchNorm"].beta is None
    assert units["debias/BatchNorm"].gamma is None and len(units["debias/BatchNorm"].debias) == 2
    assert units["dw/BatchNorm"].layer.kind == "depthwise" and units["dw/BatchNorm"].channels == 16
    assert units["fc/BatchNorm"].layer.kind == "dense"
    assert units["layers_bn"].layer is None and units["layers_bn"].moving_mean == "layers_bn/moving_mean"


def codes(prefix):
    return {i["code"] for i in inspect_checkpoint(prefix)["issues"]}


def test_healthy_checkpoint_has_no_issue(store):
    assert codes(store("variants")) == set()


def test_issue_codes(store):
    assert codes(store("mobilenet_v2", trainable_only=True)) == {"missing_statistics"}
    assert codes(store("mobilenet_v2", stats="reset")) == {"never_updated"}
    assert "invalid_variance" in codes(store("mobilenet_v2", stats="negative"))


def test_cli_json_is_stable(store):
    run = subprocess.run([sys.executable, "-m", "ckptkit.cli", "inspect", "--json", store("mobilenet_v2", stats="negative")],
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stderr  # documented: issues found
    info = json.loads(run.stdout)
    assert info["format_version"] == 1
    assert {"checkpoint", "tensors", "batchnorm", "issues", "summary"} <= set(info)
    bad = [i for i in info["issues"] if i["code"] == "invalid_variance"]
    assert bad and "1 of" in bad[0]["message"]


def test_cli_table(store):
    out = subprocess.run([sys.executable, "-m", "ckptkit.cli", "inspect", FIXTURE], capture_output=True, text=True,
                         check=True).stdout
    assert "13 BatchNorm unit(s), 13 foldable" in out and "no issues found" in out
    assert "can only be judged with data: ckptkit diagnose" in out


def test_missing_statistics_show_as_absent_with_a_graph(store):
    info = inspect_checkpoint(store("mobilenet_v2", trainable_only=True))
    assert info["units_from"].startswith("graph")
    assert all(u["moving_mean"] is None and u["moving_variance"] is None for u in info["batchnorm"])
    assert all(u["epsilon"] is not None and u["follows"] for u in info["batchnorm"])


def test_graph_lists_inputs_and_outputs_and_the_ambiguity_names_the_logits(tmp_path):
    """A training graph with two heads read by the loss: `inspect --io` lists both with shapes, and an
    export without --outputs names them in its one-line error."""
    from ckptkit.core.lazy_tf import tf, tf1
    from ckptkit.core.compat import slim

    _tf = tf()
    g = _tf.Graph()
    with g.as_default():
        x = tf1.placeholder(_tf.float32, [None, 8, 8, 3], name="images")
        labels = tf1.placeholder(_tf.int64, [None], name="labels")
        s = slim()
        net = s.conv2d(x, 4, 3, normalizer_fn=s.batch_norm, scope="conv")
        net = s.flatten(net)
        main = s.fully_connected(net, 5, activation_fn=None, scope="main")
        aux = s.fully_connected(net, 5, activation_fn=None, scope="aux")
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, main) + tf1.losses.sparse_softmax_cross_entropy(labels, aux)
        tf1.train.GradientDescentOptimizer(0.1).minimize(loss)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            prefix = tf1.train.Saver().save(sess, str(tmp_path / "two" / "model.ckpt"))
    run = subprocess.run([sys.executable, "-m", "ckptkit.cli", "inspect", "--io", "--json", prefix],
                         capture_output=True, text=True)
    io = json.loads(run.stdout)["graph"]
    assert [(t["name"], t["shape"]) for t in io["inputs"]] == [("images:0", [None, 8, 8, 3])]
    logits = {t["name"]: t["shape"] for t in io["outputs"] if t["role"] == "logits"}
    assert logits == {"main/BiasAdd:0": [None, 5], "aux/BiasAdd:0": [None, 5]}
    run = subprocess.run([sys.executable, "-m", "ckptkit.cli", "to-onnx", prefix, "-o", str(tmp_path / "m.onnx")],
                         capture_output=True, text=True)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and "logits" in last and "main/BiasAdd" in last and "aux/BiasAdd" in last, last
