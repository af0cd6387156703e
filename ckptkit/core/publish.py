"""How every output reaches disk: written into a private staging folder beside it, then published whole.

The guarantee (stated in the README): a reader of an output set (a checkpoint's .index and .data files, a
Caffe .prototxt and .caffemodel, one .onnx/.keras/.json/.png file) sees the old set, the new set, or none of
it, never a mix. Publication removes the old set's *key* file first (the one a reader opens by name: .index,
.prototxt), then the rest of the old set, places the new non-key files, and places the new key last, each
with an atomic rename inside one folder.

Concurrent writers into one folder are refused: a Stage (and a command, with `hold`) holds an advisory lock
(flock on a per-folder lock file in the temp dir) from its first write to its publication, so two ckptkit runs never interleave their sets. Ctrl-C and
SIGTERM wait for the renames of a publication to finish (a few milliseconds).

A process killed at any point leaves at most its staging folder `.ckptkit-HOST-PID.START-*` (removed by the
next ckptkit run that writes into that folder, once that process is gone) and, if killed during the
renames, new non-key files without their key (unreadable as an output, replaced by the next run).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Iterable, Optional, Sequence

from ckptkit.core.errors import CkptkitError

STAGE = ".ckptkit-"
_LEGACY_AGE = 3600.0  # staging folders of versions that did not record their owner: removed after an hour
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_WORDS = ("No space left on device", "Disk quota exceeded", "File too large", "errno = 28")


def _start_time(pid: int) -> Optional[str]:
    """The kernel's start time of `pid` (Linux), telling a live process from a later one with the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else fields[19]  # a zombie is dead; field 22 of stat is starttime


def _owner_tag() -> str:
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}.{_start_time(os.getpid()) or 0}"


def _alive(pid: int, start: str) -> bool:
    if os.path.isdir("/proc/self"):
        return _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(path: str) -> bool:
    """A staging folder whose owning process is gone."""
    rest = os.path.basename(path)[len(STAGE):]
    parts = rest.rsplit("-", 2)
    if len(parts) == 3 and "." in parts[1]:
        host, owner, _ = parts
        pid, _, start = owner.partition(".")
        if host != socket.gethostname().replace("-", "_") or not pid.isdigit():
            return False  # another machine's (shared file system): it may still be running
        return not _alive(int(pid), start)
    try:
        return time.time() - os.lstat(path).st_mtime > _LEGACY_AGE
    except OSError:
        return False


def sweep(folder: str) -> list[str]:
    """Remove the staging folders that dead ckptkit processes left in `folder`; return them."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), STAGE + "*")):
        if os.path.isdir(path) and not os.path.islink(path) and _stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def make_stage(folder: str) -> str:
    """A fresh staging folder in `folder` named after this process, after sweeping dead ones."""
    sweep(folder)
    try:
        return tempfile.mkdtemp(prefix=f"{STAGE}{_owner_tag()}-", dir=folder)
    except OSError as err:
        raise CkptkitError(f"output folder {folder} is not writable ({err.strerror}): choose another -o") from None


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` (OSError, h5py/onnx/TensorFlow errors) reports a full disk, quota or file-size limit."""
    if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
        return True
    if type(err).__name__ == "ResourceExhaustedError":
        return True
    text = str(err)
    return any(w in text for w in _DISK_WORDS)


def check_space(folder: str, need: int, largest: int, what: str, shown: Optional[str] = None) -> None:
    """Refuse, before anything is written, an output that cannot fit: `need` bytes in all beyond what `folder`'s
    filesystem has free, or a file of `largest` bytes past the process's file-size limit (ulimit -f). Every
    writer would fail later anyway, and HDF5 (the Keras writer's h5py) can crash the process when a disk fills
    under it instead of raising (h5py issue #914). `shown`: the folder the message names (default `folder`)."""
    import resource

    shown = shown or folder
    fs = os.statvfs(folder)
    free = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize  # root may use the reserved blocks
    if fs.f_blocks and need > free:  # a file system that reports no size at all (some FUSE mounts) is not judged
        raise CkptkitError(f"no space left writing {what} in {shown}: it needs about {_size(need)}, "
                           f"{_size(free)} are free; free some space or choose another -o; nothing was written")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and largest > limit:
        raise CkptkitError(f"no space left writing {what} in {shown}: a file of about {_size(largest)} is past "
                           f"this process's file-size limit of {_size(limit)} (ulimit -f); raise it or choose "
                           "another -o; nothing was written")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def ensure_parent(path: str) -> str:
    """The output's folder, checked without creating anything: it exists as a writable folder, or the
    nearest existing folder above it is writable (it is created when the output is published)."""
    parent = os.path.dirname(os.path.abspath(path))
    probe = parent
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise CkptkitError(f"output folder {parent} cannot be created: {probe} is a file; choose another -o")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == parent else f" ({probe} cannot be written to)"
        raise CkptkitError(f"output folder {parent} is not writable{where}: read-only file system or "
                           "permissions; choose another -o")
    return parent


def _make_folders(folder: str) -> Optional[str]:
    """Create `folder` and any missing parents; return the topmost one created (None if it existed)."""
    top = None
    probe = folder
    while not os.path.lexists(probe):
        top, probe = probe, os.path.dirname(probe)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise CkptkitError(f"output folder {folder} cannot be created ({err.strerror}): choose another -o") from None
    return top


def refuse_input_files(outputs: Iterable[str], protected: Iterable[str]) -> None:
    """Refuse any output that *is* a protected file, compared by identity (device and inode, so through
    symlinks, hard links and other spellings of the same folder), not by name."""
    protected = [p for p in protected if os.path.exists(p)]
    for out in outputs:
        if not os.path.exists(out):
            continue
        for p in protected:
            if os.path.samefile(out, p):
                raise CkptkitError(f"output {out} is {p}, a file of the input checkpoint: choose another -o; "
                                   "ckptkit never modifies its input")


def check_outputs(paths: Iterable[str], protect: Iterable[str] = (), folders: bool = False) -> list[str]:
    """Validate output paths before any work: not a folder (unless the output is one: `folders`, a SavedModel,
    whose writer judged what may be replaced), not a file of the input, folder writable (created when missing).
    Returns them absolute."""
    paths = [os.path.abspath(os.fspath(p)) for p in paths]
    refuse_input_files(paths, list(protect))
    for p in paths:
        if os.path.isdir(p) and not folders:
            raise CkptkitError(f"output {p} is a folder: give a file name")
        if folders and os.path.isdir(p):
            _refuse_protected_inside(p, protect)
        ensure_parent(p)
    return paths


def _refuse_protected_inside(folder: str, protect: Iterable[str]) -> None:
    """An output folder that would be replaced must hold no file of the input."""
    for p in protect:
        if os.path.exists(p) and os.path.commonpath([os.path.realpath(p), os.path.realpath(folder)]) == \
                os.path.realpath(folder):
            raise CkptkitError(f"output {folder} holds {p}, a file of the input checkpoint: choose another -o; "
                               "ckptkit never modifies its input")


PUBLISHED: list[str] = []  # every file this process published, in order (what an interruption reports)
_HELD: dict[str, tuple[int, int]] = {}  # folder -> (fd, depth): this process's locks (a Stage inside a Stage)


def _forget_locks_in_child() -> None:
    """A process forked while a lock is held (a library's multiprocessing helper: OpenVINO's telemetry sender
    forked from a thread) shares the lock's open file: closing its copy keeps the lock the parent's alone, so
    the next export of the parent is not refused while that child lives."""
    for fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def _lock_path(key: str) -> str:
    """The lock file of an output folder (which may not exist yet): one per folder path, in the temp dir."""
    import hashlib

    from ckptkit.core.safe_io import private_dir

    # another local user must not be able to pre-create, redirect or hold this folder: owner-only, verified
    locks = private_dir(os.path.join(tempfile.gettempdir(), f"ckptkit-locks-{os.geteuid()}"), "lock folder")
    return os.path.join(locks, hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest() + ".lock")


def _lock(folder: str) -> None:
    """An exclusive advisory lock on an output folder, or a one-line refusal naming it."""
    key = os.path.realpath(folder)
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        return
    from ckptkit.core.safe_io import open_private_file

    try:
        path = _lock_path(key)  # a lock folder that is not privately ours is refused in one line
    except OSError:  # no writable temp dir: no lock, as before
        return
    try:
        fd = open_private_file(path, os.O_RDWR | os.O_CREAT)  # a planted symlink is not followed
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CkptkitError(f"lock file {path} is a symbolic link: remove it (ckptkit never follows one "
                               "there)") from None
        return  # no writable temp dir: no lock, as before
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise CkptkitError(f"another ckptkit is writing into {folder} right now: wait for it to finish, or "
                               "choose another -o (two runs into one folder would mix their outputs)") from None
        return
    _HELD[key] = (fd, 1)


def _unlock(folder: str) -> None:
    key = os.path.realpath(folder)
    if key not in _HELD:
        return
    fd, depth = _HELD[key]
    if depth > 1:
        _HELD[key] = (fd, depth - 1)
        return
    del _HELD[key]
    os.close(fd)  # closing the last descriptor releases the flock


@contextlib.contextmanager
def hold(folder: str):
    """Hold the output folder's lock for a whole command (from before the model is read to its last
    publication): a second run into the same folder is refused at once instead of mixing outputs."""
    _lock(folder)
    try:
        yield
    finally:
        _unlock(folder)


_INTERRUPTS: list[int] = []  # signals the command-line guard caught (see guard_interrupts)
_PUBLISHING = [False]


def _on_interrupt(signum, frame) -> None:
    _INTERRUPTS.append(signum)
    if not _PUBLISHING[0]:  # during the renames: remembered, raised once they are done
        raise KeyboardInterrupt


@contextlib.contextmanager
def guard_interrupts():
    """For the command line: Ctrl-C and SIGTERM raise KeyboardInterrupt as usual, and are also *remembered*,
    so that one raised where it is swallowed (a finalizer running TensorFlow's __del__) still stops the next
    publication; during a publication's renames they wait until the renames are done. The previous
    handlers come back on exit."""
    del _INTERRUPTS[:]
    old = {sig: signal.signal(sig, _on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def interrupted() -> bool:
    return bool(_INTERRUPTS)


@contextlib.contextmanager
def _signals_deferred():
    """Ctrl-C / SIGTERM during the renames of a publication are delivered once they are done; one that came
    earlier (and was lost) stops the publication before anything is replaced."""
    if _INTERRUPTS:
        raise KeyboardInterrupt
    blocked = {signal.SIGINT, signal.SIGTERM}
    try:  # library use without the guard: block them in this thread, best effort
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    except (AttributeError, ValueError, OSError):  # not the main thread, or no such call
        old = None
    _PUBLISHING[0] = True
    try:
        yield
    finally:
        _PUBLISHING[0] = False
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if _INTERRUPTS:
        raise KeyboardInterrupt


class Stage:
    """A staging folder beside the outputs; `publish` moves what was written there into place.

        with Stage(folder, protect=input_files) as st:
            write(os.path.join(st.folder, "model.onnx"))
            st.publish([(staged, final)])

    Leaving the block without `publish` (or by an exception) removes everything staged; a full disk
    becomes one CkptkitError line."""

    def __init__(self, folder: str, *, protect: Iterable[str] = (), what: str = "the output"):
        self.target = os.path.abspath(folder)
        self.protect = list(protect)
        self.what = what
        self.folder = ""
        self.created: Optional[str] = None
        self.published = False

    def __enter__(self) -> "Stage":
        ensure_parent(os.path.join(self.target, "x"))
        self.created = _make_folders(self.target)
        self.published = False
        try:
            _lock(self.target)
        except CkptkitError:
            self._remove_created()
            raise
        self.folder = make_stage(self.target)
        return self

    def __exit__(self, kind, err, tb) -> bool:
        shutil.rmtree(self.folder, ignore_errors=True)
        _unlock(self.target)
        self._remove_created()
        if err is not None and not isinstance(err, CkptkitError) and is_disk_full(err):
            raise CkptkitError(f"no space left writing {self.what} in {self.target}: free some space or choose "
                               "another -o; nothing was written") from None
        return False

    def _remove_created(self) -> None:
        if self.created and not self.published:  # folders made for an output that never came
            folder = self.target
            while True:
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                if folder == self.created:
                    break
                folder = os.path.dirname(folder)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, os.path.basename(name))

    def publish(self, files: Sequence[tuple[str, str]], replaces: Iterable[str] = ()) -> list[str]:
        """Move staged files to their final paths: files[0] is the key. `replaces` are other existing files
        of the old set (shards of another count, an obsolete record) removed before anything is placed."""
        return self.publish_sets([list(files)], replaces)

    def publish_sets(self, sets: Sequence[Sequence[tuple[str, str]]], replaces: Iterable[str] = ()) -> list[str]:
        """Publish several sets (one per format) as one: every old key goes first, then the rest of every
        old set, then each new set's other files and its key. Interrupted, the folder holds no old file
        beside a new one; Ctrl-C waits for the renames."""
        sets = [list(s) for s in sets if s]
        finals = [os.path.abspath(f) for s in sets for _, f in s]
        keys = [os.path.abspath(s[0][1]) for s in sets]
        if any(os.path.dirname(f) != self.target for f in finals):
            raise ValueError("every file of one publication lives in its staging folder's parent")
        refuse_input_files(finals + list(replaces), self.protect)  # checked again: the folder may have changed
        folders = {os.path.abspath(f) for s in sets for src, f in s if os.path.isdir(src)}  # staged whole
        for f in finals:
            if os.path.isdir(f) and not os.path.islink(f) and f not in folders:
                raise CkptkitError(f"output {f} is a folder: give a file name")
            if f in folders:
                _refuse_protected_inside(f, self.protect)
        with _signals_deferred():
            for old in keys + [f for f in list(replaces) + finals if f not in keys]:
                if old in folders and os.path.isdir(old) and not os.path.islink(old):
                    # an older folder output (its writer checked it is one): out of the way into the stage,
                    # removed with it
                    os.replace(old, os.path.join(self.folder, ".replaced-" + os.path.basename(old)))
                elif os.path.lexists(old):
                    os.remove(old)
            for files in sets:
                for src, dst in list(files[1:]) + [files[0]]:
                    os.replace(src, dst)
            self.published = True
            PUBLISHED.extend(finals)
        return finals


def publish_file(path: str, write, *, protect: Iterable[str] = (), what: Optional[str] = None) -> str:
    """Write one file atomically: `write(staged_path)` fills it, then it replaces `path`."""
    path = check_outputs([path], protect)[0]
    with Stage(os.path.dirname(path), protect=protect, what=what or path) as st:
        staged = st.path(path)
        write(staged)
        st.publish([(staged, path)])
    return path
