"""IR -> a plain Keras 3 functional model (standard layers only), saved as .keras or legacy .h5.

Layouts match TF's: channels_last, Conv2D kernels (kh,kw,in,out), DepthwiseConv2D
(kh,kw,in,mult), Dense (in,out). TF SAME padding is Keras 'same' (the TF backend
runs the same kernels); any other padding becomes an explicit ZeroPadding2D.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from ckptkit.core.errors import CkptkitError
from ckptkit.ir import Graph, Node, UniqueNames

from ckptkit.converters.base import Writer, write_node

EXTENSIONS = (".keras", ".h5")


def _keras():
    """keras; in the `ckptkit` command's own process, imported without scikit-learn and matplotlib, which keras
    loads for its scikit-learn wrappers and its image gallery (1.1 s and 0.5 s of a 1.9 s import; keras goes on
    without them) and ckptkit never uses. In a user's process that imported ckptkit, keras is imported as it is
    (its wrappers then work as the user expects)."""
    import sys

    from ckptkit.core import lazy_tf

    if lazy_tf.OWN_PROCESS and "keras" not in sys.modules:
        with lazy_tf.Refuse("sklearn", "matplotlib", why="ckptkit uses neither keras's scikit-learn wrappers nor its "
                                                          "image gallery"):
            import keras
    import keras

    return keras


def _name(ir_name: str, unique: UniqueNames) -> str:
    """Keras forbids '/' in layer names: TF scopes become underscores."""
    return unique(re.sub(r"[^A-Za-z0-9_.-]", "_", ir_name.replace("/", "_")) or "layer")


class Builder:
    """What an op's Keras writer gets: `add(layer, inputs, weights)` applies a standard layer and records the
    weights it is given once the model exists; `L` is keras.layers."""

    def __init__(self, graph: Graph):
        self.L = _keras().layers
        self.graph = graph
        self.used = UniqueNames()
        self.weights: list[tuple[object, list[np.ndarray]]] = []
        self.initializers: list[tuple[object, dict]] = []  # (layer, the initializers it was made with)

    def name(self, node: Node, suffix: str = "") -> str:
        return _name(node.name + suffix, self.used)

    def add(self, layer, inputs, weights: Optional[list[np.ndarray]] = None):
        feeder = None
        if weights is not None:  # the layer's variables are made from the weights: no random draw, no reassignment
            feeder = _Feeder(weights)
            self.initializers.append((layer, _replace_initializers(layer, feeder)))
        y = layer(inputs)
        if feeder is not None and not feeder.done:  # a layer that made its variables otherwise: set them
            self.weights.append((layer, weights))
        return y

    def in_shape(self, node: Node) -> tuple:
        return self.graph[node.inputs[0]].shape


def build(graph: Graph):
    keras = _keras()

    WRITER.require(graph)
    k = Builder(graph)
    inp = graph[graph.inputs[0]]
    x_in = keras.Input(shape=tuple(inp.shape[1:]), name=_name(inp.name, k.used))
    values = {inp.name: x_in}
    for node in graph.nodes:
        if node.op != "Input":
            values[node.name] = write_node(k, "keras", node, [values[i] for i in node.inputs])
    model = keras.Model(x_in, [values[o] for o in graph.outputs] if len(graph.outputs) > 1 else values[graph.outputs[0]],
                        name=re.sub(r"[^A-Za-z0-9_]", "_", graph.name))
    from ckptkit.core.pages import release

    for layer, ws in k.weights:
        layer.set_weights([np.asarray(w, np.float32) for w in ws])
        release(*ws)  # a mapped weight's pages: the layer holds its own copy now
    for layer, initializers in k.initializers:  # the saved config names the layer's own initializers
        for attr, value in initializers.items():
            setattr(layer, attr, value)
    return model


class _Feeder:
    """An initializer giving a layer's variables the writer's weights, in the order the layer makes them
    (its `weights` order, the order `set_weights` takes); a shape or count that does not fit marks it
    not `done` and the weights are set after the model is built."""

    def __init__(self, weights: list[np.ndarray]):
        self.weights, self.given, self.ok = list(weights), 0, True

    def __call__(self, shape, dtype=None):
        from ckptkit.core.pages import aligned_copy, release

        if self.given < len(self.weights) and tuple(shape) == np.shape(self.weights[self.given]):
            w = self.weights[self.given]
            self.given += 1
            value = aligned_copy(np.asarray(w), np.float32)  # aligned: TF takes it without a copy of its own
            release(w)
            return value
        self.ok = False
        return np.zeros(shape, np.float32)

    @property
    def done(self) -> bool:
        return self.ok and self.given == len(self.weights)


def _replace_initializers(layer, feeder: _Feeder) -> dict:
    """Give every weight initializer of the layer to `feeder` before it builds; returns the ones it had."""
    keras = _keras()

    found = {attr: value for attr, value in vars(layer).items()
             if attr.endswith("_initializer") and isinstance(value, keras.initializers.Initializer)}
    for attr in found:
        setattr(layer, attr, feeder)
    return found


def destinations(path: str, graph: Graph) -> list[str]:
    if not path.endswith(EXTENSIONS):
        raise CkptkitError(f"output {path} must end in .keras (native) or .h5 (legacy HDF5)")
    return [path]


def export(graph: Graph, path: str, **_) -> str:
    model = build(graph)
    if path.endswith(".h5"):
        _save_h5(model, path)
    else:  # Keras builds the weights' h5 in memory (when the machine has the memory) and Python writes the zip
        model.save(path)
    return path


def _save_h5(model, path: str) -> None:
    """The legacy HDF5 file, made by Keras's own h5 writer in memory and then written with Python's file writes:
    HDF5 writing to a disk that fills crashes the process instead of raising (h5py issue #914; measured here:
    SIGSEGV under a file-size limit), where a failed Python write is an OSError that ends as one line."""
    import io
    import warnings

    import h5py

    try:
        from keras.src.legacy.saving.legacy_h5_format import save_model_to_hdf5
    except ImportError:  # a Keras without it: its public save, straight to the file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns that .h5 is legacy: the user asked for it
            model.save(path)
        return
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        save_model_to_hdf5(model, f)
    with open(path, "wb") as out:
        out.write(buffer.getbuffer())


def runner(path: str, **_):
    keras = _keras()

    model = keras.models.load_model(path, compile=False)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(model(x, training=False))

    return run


def intermediates(path: str, **_):
    """(NHWC batch, IR node names) -> {node: value}: the output of the layer named after each node."""
    keras = _keras()

    model = keras.models.load_model(path, compile=False)
    layers = {layer.name: layer for layer in model.layers}

    def run(x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        found = {n: layers[_name(n, UniqueNames())] for n in names if _name(n, UniqueNames()) in layers}
        if not found:
            return {}
        probe = keras.Model(model.inputs, [layer.output for layer in found.values()])
        values = probe(x, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return {n: np.asarray(v) for n, v in zip(found, values)}

    return run


class KerasWriter(Writer):
    name, label, suffixes, runtime_package = "keras", "Keras", EXTENSIONS, "keras"
    command_help = "export to a Keras model (.keras or .h5), verified with Keras"
    description = ("Build a plain Keras functional model (standard layers only) and save it as .keras or legacy "
                   ".h5; check it against TensorFlow's inference output.")
    output_metavar, output_help = "MODEL.keras", "output .keras or .h5 file"
    leaves_cycles = True

    def destinations(self, path: str, graph: Optional[Graph]) -> list[str]:
        return destinations(path, graph)

    def write(self, graph: Graph, path: str, options) -> list[str]:
        return [export(graph, path)]

    def runner(self, path: str, graph: Graph, options):
        return runner(path)

    def intermediates(self, path: str, graph: Graph, options):
        return intermediates(path)


WRITER = KerasWriter()
