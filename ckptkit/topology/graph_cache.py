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
a graph like any other: it runs only through ckptkit's gateway.

The cache is trusted only as far as no one else can write it, because the export *and* its verification
reference come from the same cached graph: its `graphs` folder must be a private folder of this user
(`safe_io.private_dir`: owner-only, not a link, under parents no other user can change) -- a shared or foreign
folder is not used at all (a warning; the network is built instead) -- and every entry is read without
following links and checked against the SHA-256 digest written beside it when it was stored. An entry that
does not match (rewritten, truncated) is built again and replaced.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
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

    from ckptkit.core.lazy_tf import tf, tf1

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            return "?"

    _tf = tf()
    return (FORMAT, version("ckptkit"), _tf.__version__, version("tf-slim"), bool(_tf.__internal__.tf2.enabled()),
            bool(tf1.resource_variables_enabled()), bool(_tf.executing_eagerly()))


def _path(key, input_shape: Sequence[int]) -> Optional[str]:
    where = folder()
    if where is None:
        return None
    digest = hashlib.sha256(repr((_versions(), key, tuple(int(d) for d in input_shape))).encode()).hexdigest()
    return os.path.join(where, digest[:32] + ".meta")


def _private(where: str) -> bool:
    """Whether the cache folder is (made) a private folder of this user; a warning when it cannot be."""
    from ckptkit.core.errors import CkptkitError
    from ckptkit.core.safe_io import private_dir

    try:
        private_dir(where, "graph cache folder")
        return True
    except CkptkitError as err:
        log.warning("not using the --arch graph cache: %s", str(err).replace("ckptkit uses it", "it is used"))
    except OSError as err:  # cannot be created (read-only home): no cache, nothing else changes
        log.debug("graph cache %s not usable (%s)", where, err)
    return False


def _read_entry(path: str) -> Optional[bytes]:
    """The entry's bytes when it and its digest are regular files (links not followed) that agree, else None."""
    from ckptkit.core.safe_io import MAX_GRAPH_BYTES

    def read(p: str, limit: int) -> bytes:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                raise ValueError("not a regular file of a bounded size")
            return f.read(limit + 1)

    try:
        data, digest = read(path, MAX_GRAPH_BYTES), read(path + ".sha256", 64).decode("ascii")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        log.warning("graph cache entry %s not used (%s): built again", path, err)
        return None
    if hashlib.sha256(data).hexdigest() != digest:
        log.warning("graph cache entry %s does not match its digest (changed since ckptkit wrote it): built again "
                    "and replaced", path)
        return None
    return data


def graph(key, input_shape: Sequence[int], build: Callable[[], tuple]) -> tuple:
    """(tf.Graph, input, output): the cached build of `key` at `input_shape`, or `build()` (then cached)."""
    path = _path(key, input_shape)
    if path is not None and not _private(os.path.dirname(path)):
        path = None
    data = _read_entry(path) if path is not None else None
    if data is not None:
        found = _load(path, data)
        if found is not None:
            return found
    g, x, out = build()
    if path is not None:
        _store(path, g, x, out)
    return g, x, out


def _load(path: str, data: bytes) -> Optional[tuple]:
    from ckptkit.core.lazy_tf import tf
    from ckptkit.core.phases import phase

    _tf = tf()
    from tensorflow.python.framework import meta_graph  # import_meta_graph without its Saver

    try:
        with phase("import cached TF graph"):
            mgd = _tf.compat.v1.MetaGraphDef.FromString(data)
            from ckptkit.tf_import.const_eval import check_graph_def

            check_graph_def(mgd.graph_def, f"cached graph {path}")  # bounded like any graph before TF imports it
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
    from ckptkit.core.lazy_tf import tf1

    try:
        with g.as_default():
            mgd = tf1.train.export_meta_graph(graph=g, clear_devices=True)
        mgd.collection_def[IO_COLLECTION].bytes_list.value.extend([x.name.encode(), out.name.encode()])
        data = mgd.SerializeToString(deterministic=True)
        # the entry first, then its digest: a reader sees a pair that agrees, or rebuilds
        for target, content in ((path, data), (path + ".sha256", hashlib.sha256(data).hexdigest().encode())):
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".meta")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.replace(tmp, target)
            except BaseException:
                os.unlink(tmp)
                raise
    except Exception as err:  # a read-only or full cache folder: no cache, nothing else changes
        log.debug("graph cache %s not written (%s: %s)", path, type(err).__name__, err)
