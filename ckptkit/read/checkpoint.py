"""Open, read and write TensorFlow checkpoints (V1 and V2).

Reading is lazy: the index is read once, tensors one at a time on request.
Writing streams: tensors are saved in bounded chunks to temporary shards that
TensorFlow merges into one V2 checkpoint, which is then renamed into place, so
memory stays near one chunk and nothing half-written is ever visible.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from ckptkit.core.lazy_tf import tf
from ckptkit.core.errors import CkptkitError
from ckptkit.core.phases import phase
from ckptkit.core.publish import (  # noqa: F401 (re-exported)
    Stage, ensure_parent, make_stage, publish_file, refuse_input_files)

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
_V1_SHARD = re.compile(r"-\d{5}-of-\d{5}$")


SIDECAR = ".ckptkit.json"  # beside a checkpoint ckptkit wrote: how its statistics were made (recalibrate)


def resolve_prefix(path: str) -> str:
    """Turn a prefix, any file of a checkpoint, or a folder into the checkpoint prefix."""
    path = os.fspath(path)
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.isfile(state):
            latest = _state_latest(state)
            if latest:
                # A copied or moved training folder keeps absolute paths to where it was written:
                # the same name inside this folder is the checkpoint meant.
                here = os.path.join(path, os.path.basename(latest))
                if _exists(here):
                    return here
                if _exists(latest):
                    return latest
        indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
        if len(indexes) == 1:
            return indexes[0][: -len(".index")]
        if not indexes:
            raise CkptkitError(f"no checkpoint in folder {path}: pass a checkpoint prefix such as {path}/model.ckpt")
        names = ", ".join(os.path.basename(i[:-6]) for i in indexes)
        raise CkptkitError(f"folder {path} holds several checkpoints ({names}) and no usable 'checkpoint' file: pass one prefix")
    for suffix in (".index", ".meta"):
        if path.endswith(suffix) and _exists(path[: -len(suffix)]):
            return path[: -len(suffix)]
    stripped = _DATA_SUFFIX.sub("", path)
    if stripped != path and _exists(stripped):
        return stripped
    if _exists(path):
        return path
    steps = sorted((i[: -len(".index")] for i in glob.glob(glob.escape(path) + "-*.index")), key=_step_order)
    if steps:  # `model.ckpt` given, `model.ckpt-25` there: the saver appends the global step
        names = ", ".join(os.path.basename(p) for p in steps[-3:])
        raise CkptkitError(f"no checkpoint at {path}, but {len(steps)} beside it with a step: {names}: pass the "
                           f"prefix with its step, e.g. {steps[-1]}, or the folder {os.path.dirname(path) or '.'}")
    raise CkptkitError(f"no checkpoint at {path}: expected PREFIX.index (V2), a V1 checkpoint file, or a folder holding them")


def _step_order(prefix: str) -> tuple:
    """model.ckpt-9 before model.ckpt-25: by the step number after the last dash."""
    tail = prefix.rsplit("-", 1)[-1]
    return (int(tail), prefix) if tail.isdigit() else (-1, prefix)


def _state_latest(state: str) -> str | None:
    """The latest checkpoint a `checkpoint` state file names (relative to its folder), or None when the
    file is empty, not UTF-8 or names nothing (the folder's single *.index is then used)."""
    from ckptkit.core.safe_io import MAX_RECORD_BYTES, read_bounded

    try:
        text = read_bounded(state, "checkpoint state file", MAX_RECORD_BYTES).decode("utf-8")
    except (CkptkitError, UnicodeDecodeError):
        return None
    match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
    if not match:
        return None
    name = match.group(1).encode().decode("unicode_escape") if "\\" in match.group(1) else match.group(1)
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(state), name)


def _exists(prefix: str) -> bool:
    """True when `prefix` names a V2 checkpoint (PREFIX.index) or a V1 file."""
    if os.path.isfile(prefix + ".index"):
        return True
    if os.path.isfile(prefix) and not prefix.endswith((".meta", ".index")) and not _DATA_SUFFIX.search(prefix):
        return True
    return bool(glob.glob(glob.escape(prefix) + "-?????-of-?????"))


_GLOB_CHARS = re.compile(r"[\[\]*?]")


def _tf_safe_prefix(prefix: str) -> str:
    """The prefix spelled so TensorFlow can open it: TF matches checkpoint paths as glob patterns, so a
    folder named `glob[1]` is reached through a symlink in a private temporary folder instead."""
    folder, base = os.path.split(os.path.abspath(prefix))
    if not _GLOB_CHARS.search(folder) and not _GLOB_CHARS.search(base):
        return prefix
    import atexit

    tmp = make_stage(tempfile.gettempdir())  # removed at exit, or by a later run if this one is killed
    atexit.register(shutil.rmtree, tmp, True)
    link = os.path.join(tmp, "ckpt")
    os.symlink(folder, link)
    safe_base = _GLOB_CHARS.sub("_", base)
    if safe_base != base:  # the files themselves: one symlink each
        os.makedirs(os.path.join(tmp, "files"))
        for f in glob.glob(glob.escape(prefix) + "*"):
            os.symlink(os.path.abspath(f), os.path.join(tmp, "files", safe_base + f[len(prefix):]))
        return os.path.join(tmp, "files", safe_base)
    return os.path.join(link, base)


def _damage_message(prefix: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    files = [prefix + ".index"] if os.path.isfile(prefix + ".index") else [prefix]
    return f"checkpoint {files[0]} is damaged or not a TensorFlow checkpoint ({first[:200]}): re-copy or re-save it"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class Checkpoint:
    """A checkpoint opened for lazy reading."""

    def __init__(self, path: str):
        from ckptkit.read.bundle import open_bundle

        self.prefix = resolve_prefix(path)
        self._bundle = open_bundle(self.prefix)  # V2 without TensorFlow (see ckptkit/read/bundle.py)
        self._reader = None
        self._tf_prefix: Optional[str] = None
        if self._bundle is not None:
            self.tensors = {e.name: TensorInfo(e.name, e.shape, e.dtype) for e in self._bundle.entries.values()}
            self.version = 2
            return
        _tf = tf()
        try:
            self._reader = _tf.train.load_checkpoint(self.tf_prefix)
            shapes = self._reader.get_variable_to_shape_map()
            dtypes = self._reader.get_variable_to_dtype_map()
        except (_tf.errors.OpError, ValueError, RuntimeError, IndexError, OSError) as err:
            raise CkptkitError(_damage_message(self.prefix, err)) from None
        self.tensors: dict[str, TensorInfo] = {
            name: TensorInfo(name, tuple(int(d) for d in shapes[name]), dtypes[name].as_numpy_dtype.__name__
                             if dtypes[name] != _tf.string else "object")
            for name in sorted(shapes)
        }
        self.version = 2 if os.path.isfile(self.prefix + ".index") else 1

    @property
    def tf_prefix(self) -> str:
        """The prefix spelled so TensorFlow can open it (see _tf_safe_prefix)."""
        if self._tf_prefix is None:
            self._tf_prefix = _tf_safe_prefix(self.prefix)
        return self._tf_prefix

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> np.ndarray:
        """The tensor's values: for a V2 checkpoint a read-only view of its data file (zero-copy, its memory the
        page cache's: `release` gives back what was touched), else an array TensorFlow's reader made."""
        if name not in self.tensors:
            raise CkptkitError(f"tensor {name} is not in checkpoint {self.prefix}: run `ckptkit inspect {self.prefix}` to list its tensors")
        if self._bundle is not None:
            with phase("read checkpoint tensors"):
                return self._bundle.view(name)
        _tf = tf()
        try:
            with phase("read checkpoint tensors"):
                return np.asarray(self._reader.get_tensor(name))
        except (_tf.errors.OpError, ValueError, RuntimeError, IndexError, OSError) as err:
            data = glob.glob(glob.escape(self.prefix) + ".data-?????-of-?????") or [self.prefix]
            first = str(err).strip().splitlines()[0][:200]
            raise CkptkitError(f"tensor {name} cannot be read from {', '.join(data)} ({first}): the data file is damaged; re-copy or re-save it") from None

    def read(self, name: str) -> np.ndarray:
        """The tensor as a new, writeable array (what a caller that changes it or hands it to TF's writer needs)."""
        if self._bundle is not None and name in self.tensors:
            with phase("read checkpoint tensors"):
                return self._bundle.read(name)
        value = self.get(name)  # TensorFlow's reader: already a new array
        return value if value.flags.writeable else value.copy()

    def release(self) -> None:
        """Give back the resident pages of the tensors `get` viewed (they are read again if touched again)."""
        if self._bundle is not None:
            self._bundle.release()

    @property
    def meta_path(self) -> str | None:
        meta = self.prefix + ".meta"
        return meta if os.path.isfile(meta) else None

    def files(self) -> list[str]:
        if self.version == 2:
            return [self.prefix + ".index"] + sorted(glob.glob(glob.escape(self.prefix) + ".data-?????-of-?????"))
        return [self.prefix] if os.path.isfile(self.prefix) else sorted(glob.glob(glob.escape(self.prefix) + "-?????-of-?????"))


def input_files(prefix: str) -> list[str]:
    """Every file that belongs to the checkpoint at `prefix`: its index/data (or V1 files), its .meta,
    the `checkpoint` state file of its folder and ckptkit's record beside it."""
    files = [prefix + ".index", prefix + ".meta", prefix + ".ckptkit.json", prefix,
             os.path.join(os.path.dirname(prefix), "checkpoint")]
    files += glob.glob(glob.escape(prefix) + ".data-?????-of-?????") + glob.glob(glob.escape(prefix) + "-?????-of-?????")
    return [f for f in files if os.path.isfile(f)]


def checkpoint_outputs(prefix: str) -> list[str]:
    """The files writing a checkpoint at `prefix` may replace."""
    return [prefix + ".index", prefix + ".data-00000-of-00001", prefix + ".ckptkit.json"] + \
        glob.glob(glob.escape(prefix) + ".data-?????-of-?????")


def check_output_prefix(out: str, *inputs: str) -> str:
    """Refuse an output that would overwrite an input; return the absolute output prefix."""
    out = os.path.abspath(os.fspath(out))
    if os.path.isdir(out):
        raise CkptkitError(f"output {out} is a folder: give a checkpoint prefix such as {out}/model.ckpt")
    for inp in inputs:
        if inp and os.path.realpath(inp) == os.path.realpath(out):
            raise CkptkitError(f"output {out} is the input checkpoint: choose another -o; ckptkit never modifies its input")
    refuse_input_files(checkpoint_outputs(out), [f for inp in inputs if inp for f in input_files(inp)])
    ensure_parent(out)
    return out


def write_checkpoint(out_prefix: str, tensors: Iterable[tuple[str, np.ndarray]], *,
                     chunk_bytes: int = 128 << 20, protect: Iterable[str] = (),
                     extra_files: Optional[dict[str, Optional[bytes]]] = None,
                     before_publish: Optional[Callable[[str], dict[str, Optional[bytes]]]] = None) -> list[str]:
    """Write (name, array) pairs as one V2 checkpoint at `out_prefix`, whole or not at all.

    Tensors are consumed as they come and saved in chunks of about `chunk_bytes`; TensorFlow's
    MergeV2Checkpoints joins the chunks in a staging folder, and the files are published together with
    `extra_files` (path -> content, or None to remove an older one), the .index last (see publish.py).
    `before_publish(staged_prefix)` may add extra files made from the staged checkpoint.
    """
    out_prefix = check_output_prefix(out_prefix, *protect)
    protected = [f for inp in protect if inp for f in input_files(inp)]
    _tf = tf()
    with phase("write checkpoint"), Stage(os.path.dirname(out_prefix), protect=protected, what=f"checkpoint {out_prefix}") as st:
        shards: list[str] = []
        seen: set[str] = set()
        batch: list[tuple[str, np.ndarray]] = []
        size = 0

        def flush() -> None:
            nonlocal batch, size
            if not batch:
                return
            shard = os.path.join(st.folder, f"part{len(shards):05d}")
            with _tf.device("/cpu:0"):
                _tf.raw_ops.SaveV2(prefix=shard, tensor_names=[n for n, _ in batch],
                                   shape_and_slices=[""] * len(batch), tensors=[_as_tensor(a) for _, a in batch])
            shards.append(shard)
            batch, size = [], 0

        for name, array in tensors:
            if name in seen:
                raise CkptkitError(f"tensor {name} would be written twice: this is a bug in ckptkit, please report it")
            seen.add(name)
            array = np.asarray(array)
            batch.append((name, array))
            size += array.nbytes
            if size >= chunk_bytes:
                flush()
        flush()
        if not shards:
            raise CkptkitError(f"nothing to write to {out_prefix}: the checkpoint would be empty")
        merged = os.path.join(st.folder, "merged")
        with _tf.device("/cpu:0"):
            _tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=shards, destination_prefix=merged, delete_old_dirs=False)
        extra_files = dict(extra_files or {})
        if before_publish is not None:
            with phase("check and write the graph beside it"):
                extra_files.update(before_publish(merged))
        files = [(merged + ".index", out_prefix + ".index")]  # the key: published last
        files += [(src, out_prefix + src[len(merged):]) for src in sorted(glob.glob(merged + ".data-*"))]
        obsolete = glob.glob(glob.escape(out_prefix) + ".data-?????-of-?????")
        for i, (path, content) in enumerate(sorted(extra_files.items())):
            if content is None:
                obsolete.append(path)
            else:
                staged = os.path.join(st.folder, f"extra{i}")
                with open(staged, "wb") as f:
                    f.write(content)
                files.append((staged, os.path.abspath(path)))
        final = st.publish(files, replaces=[f for f in obsolete if os.path.lexists(f)])
    _write_state_file(out_prefix)
    return final[1:] + final[:1]


def _as_tensor(array: np.ndarray):
    """The array as a TF tensor without a copy where DLPack allows (numeric, contiguous, writeable):
    converting a large tensor otherwise costs two extra copies of it at peak."""
    _tf = tf()
    if array.dtype.kind in "biuf" and array.flags.c_contiguous and array.flags.writeable and array.size:
        try:
            return _tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        except (BufferError, TypeError, ValueError, _tf.errors.OpError):
            pass
    return array


def _write_state_file(out_prefix: str) -> None:
    """Write a `checkpoint` state file beside the output, unless the folder already has one."""
    state = os.path.join(os.path.dirname(out_prefix), "checkpoint")
    if os.path.lexists(state):
        return
    base = os.path.basename(out_prefix)
    content = f'model_checkpoint_path: "{base}"\nall_model_checkpoint_paths: "{base}"\n'
    try:
        publish_file(state, lambda p: _write_text(p, content))
    except CkptkitError:  # the checkpoint is whole; a state file is a convenience
        pass


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def copy_except(ckpt: Checkpoint, skip: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of `ckpt` not in `skip`, read one at a time."""
    for name in ckpt.names:
        if name not in skip:
            yield name, ckpt.read(name)
