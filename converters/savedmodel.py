"""TF2 SavedModel through TensorFlow: the IR (BatchNorm folded) as a tf.Module whose variables hold the folded
weights, with a `serving_default` signature named after the graph's input and output, loadable by
`tf.saved_model.load` and TF Serving. Verified by loading the written folder back in a fresh process.

No op needs a writer of its own: an op's TensorFlow `run` is its writer. The output is a folder, published as
one: staged whole, then renamed into place (an older SavedModel there is replaced, anything else refused).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Optional

import numpy as np

from ckptkit.ir import registry
from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph

from ckptkit.converters.base import Runtime, Writer, package_label
from ckptkit.converters.caffe_consumers import worker_command

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "savedmodel_worker.py")
WORKER_TIMEOUT = 600


def signature_name(tensor_name: str, default: str) -> str:
    """A signature key from a TF tensor name (`logits/BiasAdd:0` -> `logits_BiasAdd`)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", tensor_name.split(":")[0]).strip("_") or default


def is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
        os.path.join(path, "saved_model.pbtxt"))


def save(graph: Graph, path: str) -> None:
    """Write the SavedModel folder `path` (which must not exist)."""
    from ckptkit.core.lazy_tf import tf
    from ckptkit.run.tf_exec import run_graph

    _tf = tf()
    in_key = signature_name(graph.input_names[0] if graph.input_names else "input", "input")
    out_key = signature_name(graph.output_names[0] if graph.output_names else "output", "output")

    class Net(_tf.Module):
        def __init__(self):
            super().__init__(name=signature_name(graph.name or "model", "model"))
            # one variable per weight tensor of every layer with a layout (conv, dense, ...): the checkpoint's
            # folded weights, restorable and inspectable; other constants stay in the traced graph
            self.weights = {}
            for node in graph.nodes:
                if registry.get(node.op).layout is None:
                    continue
                self.weights[node.name] = {k: _tf.Variable(v, trainable=False, name=signature_name(
                    f"{node.name}/{k}", k)) for k, v in node.params.items() if v is not None}

        @_tf.function(input_signature=[_tf.TensorSpec([None, *graph.input_shape[1:]], _tf.float32, name=in_key)],
                      autograph=False)
        def serve(self, x):
            params = {n: {**{k: None for k in graph[n].params}, **{k: v.read_value() for k, v in d.items()}}
                      for n, d in self.weights.items()}
            return {out_key: run_graph(graph, x, params=params)}

    net = Net()
    _tf.saved_model.save(net, path, signatures={"serving_default": net.serve})


def runner(path: str, **_):
    """A function NHWC batch -> output: the folder loaded by tf.saved_model.load in a fresh process."""

    def run(x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="ckptkit-savedmodel-") as tmp:
            x_path, y_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
            np.save(x_path, np.ascontiguousarray(x, np.float32))
            try:
                done = subprocess.run(worker_command(WORKER, os.path.abspath(path), x_path, y_path),
                                      capture_output=True, text=True, timeout=WORKER_TIMEOUT, cwd=tmp)
            except subprocess.TimeoutExpired:
                raise CkptkitError(f"loading the SavedModel back took over {WORKER_TIMEOUT} s: pass --no-verify "
                                   "to write it unverified") from None
            if done.returncode != 0 or not os.path.exists(y_path):
                last = (done.stderr.strip().splitlines() or ["no message"])[-1][:200]
                raise CkptkitError(f"tf.saved_model.load cannot run the written SavedModel ({last}): pass "
                                   "--no-verify to write it unverified")
            return np.load(y_path)

    return run


class SavedModelWriter(Writer):
    name, label, suffixes, runtime_package = "savedmodel", "SavedModel", (".savedmodel",), "tensorflow"
    command_help = "export to a TF2 SavedModel folder, verified by loading it back"
    description = ("Write the BN-free inference network as a TF2 SavedModel (variables holding the folded weights, "
                   "a serving_default signature named after the graph's input and output) and check it, loaded by "
                   "tf.saved_model.load in a fresh process, against TensorFlow's inference output.")
    output_metavar, output_help = "DIR", "output SavedModel folder (replaced only if it is a SavedModel or empty)"
    publishes_folder = True  # the output is one folder, staged whole and renamed into place
    through_tf = True

    def destinations(self, path: str, graph: Optional[Graph]) -> list[str]:
        # any folder name (TF Serving wants MODEL/1/); an existing one must be a SavedModel, which it replaces
        path = path.rstrip("/" + os.sep) or path
        if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path) and
                                          (is_saved_model(path) or not os.listdir(path))):
            raise CkptkitError(f"output {path} exists and is not a SavedModel folder: choose another -o (ckptkit "
                               "replaces only a SavedModel, or an empty folder)")
        return [path]

    def write(self, graph: Graph, path: str, options) -> list[str]:
        save(graph, path)
        return [path]

    def runtimes(self, path: str, graph: Graph, options):
        return [Runtime(f"{package_label('tensorflow')} (tf.saved_model.load, a fresh process)",
                        lambda: runner(path), self.tolerance)]

    def runner(self, path: str, graph: Graph, options):
        return runner(path)


WRITER = SavedModelWriter()
