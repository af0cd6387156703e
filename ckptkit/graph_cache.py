"""--arch graphs kept on disk between commands.

Building a tf_slim network in TensorFlow costs more than reading back the graph it made (resnet_v1_50:
1.4-2.2 s to build with tf_slim, plus its import, against ~0.2 s to import the saved graph), and every
command on a checkpoint of that network builds the same graph. The first build of an (arch, its arguments,
classes, input size) is saved as a MetaGraphDef under the cache folder, keyed by a digest of all of that and
of the versions that shape the graph (TensorFlow, tf_slim, ckptkit, TF1/TF2 behaviour); the next command
imports it. It holds structure only (variables, no values).

CKPTKIT_CACHE_DIR names the folder (default $XDG_CACHE_HOME/ckptkit or ~/.cache/ckptkit); set it empty to
turn the cache off. A file that cannot be read is built again and replaced; a folder that cannot be written
only means no cache. Entries are written atomically (a temporary file renamed into place). A cached graph is
a graph like any other: it runs only through ckptkit's gateway, and every export is verified against it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Callable, Optional, Sequence

log = logging.getLogger("ckptkit")

FORMAT = 1  # bump when what is stored changes
IO_COLLECTION = "ckptkit_io"  # the input and output tensor names, stored with the graph


def folder() -> Optional[str]:
    """The cache folder, or None when CKPTKIT_CACHE_DIR is set empty."""
    given = os.environ.get("CKPTKIT_CACHE_DIR")
    if given is not None:
        return os.path.join(given, "graphs") if given.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ckptkit", "graphs")


def _versions() -> tuple:
    import importlib.metadata

    from . import __version__
    from ._tf import tf, tf1

    _tf = tf()
    try:
        slim_version = importlib.metadata.version("tf-slim")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        slim_version = "?"
    return (FORMAT, __version__, _tf.__version__, slim_version, bool(_tf.__internal__.tf2.enabled()),
            bool(tf1.resource_variables_enabled()), bool(_tf.executing_eagerly()))


def _path(key, input_shape: Sequence[int]) -> Optional[str]:
    where = folder()
    if where is None:
        return None
    digest = hashlib.sha256(repr((_versions(), key, tuple(int(d) for d in input_shape))).encode()).hexdigest()
    return os.path.join(where, digest[:32] + ".meta")


def graph(key, input_shape: Sequence[int], build: Callable[[], tuple]) -> tuple:
    """(tf.Graph, input, output): the cached build of `key` at `input_shape`, or `build()` (then cached)."""
    path = _path(key, input_shape)
    if path is not None and os.path.isfile(path):
        found = _load(path)
        if found is not None:
            return found
    g, x, out = build()
    if path is not None:
        _store(path, g, x, out)
    return g, x, out


def _load(path: str) -> Optional[tuple]:
    from ._tf import tf
    from .phases import phase

    _tf = tf()
    from tensorflow.python.framework import meta_graph  # import_meta_graph without its Saver

    try:
        with phase("import cached TF graph"):
            mgd = _tf.compat.v1.MetaGraphDef.FromString(open(path, "rb").read())
            names = [n.decode() for n in mgd.collection_def[IO_COLLECTION].bytes_list.value]
            del mgd.collection_def[IO_COLLECTION]
            g = _tf.Graph()
            with g.as_default():  # the graph and its collections; no Saver (import_meta_graph adds one: 545 save
                # and restore ops on resnet_v1_50, 0.1 s, which nothing here runs)
                meta_graph.import_scoped_meta_graph(mgd, clear_devices=True)
            return g, g.get_tensor_by_name(names[0]), g.get_tensor_by_name(names[1])
    except Exception as err:  # a damaged or foreign file: built again and replaced
        log.debug("graph cache %s not used (%s: %s)", path, type(err).__name__, err)
        return None


def _store(path: str, g, x, out) -> None:
    from ._tf import tf1

    try:
        with g.as_default():
            mgd = tf1.train.export_meta_graph(graph=g, clear_devices=True)
        mgd.collection_def[IO_COLLECTION].bytes_list.value.extend([x.name.encode(), out.name.encode()])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".meta")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(mgd.SerializeToString(deterministic=True))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except Exception as err:  # a read-only or full cache folder: no cache, nothing else changes
        log.debug("graph cache %s not written (%s: %s)", path, type(err).__name__, err)
