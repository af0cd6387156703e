"""What surrounds a graph is data too: files checked before they are read, private shared folders, and text
made safe to print.

* `read_bounded` reads a file only when it is a regular file no bigger than the bound: a record that is a link to
  `/dev/zero`, a FIFO named `model.ckpt.meta` or a 40 GB "state file" is one clear error, never a hang or an
  allocation. The file is opened non-blocking (a FIFO does not wait for a writer) and judged on the open
  descriptor (no swap between the check and the read).
* `private_dir` is the one way ckptkit uses a folder other users could reach (locks in the temp dir, the graph
  cache): created owner-only, then verified on every use -- a real folder (not a link), owned by this user,
  with no group or other access, under parents that no other user can rename it out of.
* `printable` escapes control characters (ESC, CSI, OSC, CR, bidi overrides) visibly as `\\x1b`; `shell_word`
  quotes a word so that a pasted command reproduces it exactly and holds no control byte.
"""
from __future__ import annotations

import os
import re
import shlex
import stat

from ckptkit.core.errors import CkptkitError

MAX_RECORD_BYTES = 1 << 20  # a `.ckptkit.json` record or a `checkpoint` state file: a few hundred bytes in practice
MAX_GRAPH_BYTES = 2**31 - 1  # protobuf cannot parse a bigger message
# one tensor a graph may make ckptkit or TensorFlow materialise (a Const, a folded constant, a static shape)
MAX_TENSOR_BYTES = int(float(os.environ.get("CKPTKIT_MAX_TENSOR_BYTES", 4 * 2**30)))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str, what: str, limit: int | None = None) -> os.stat_result:
    """The stat of `path` (links followed) when it is a regular file within `limit` bytes, else one error."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise CkptkitError(f"cannot read {what} {printable(path)}: {err.strerror or err}") from None
    _judge(path, what, st, limit)
    return st


def _judge(path: str, what: str, st: os.stat_result, limit: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CkptkitError(f"{what} {printable(path)} is {_kind(st.st_mode)}, not a regular file: ckptkit reads only "
                           "regular files (replace it with the file itself)")
    if limit is not None and st.st_size > limit:
        raise CkptkitError(f"{what} {printable(path)} holds {st.st_size} bytes, over the {limit} a valid one can "
                           "hold: the file is damaged or not what its name says")


def read_bounded(path: str, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, judged on the open descriptor before reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise CkptkitError(f"cannot read {what} {printable(path)}: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        _judge(path, what, st, limit)
        chunks, left = [], st.st_size + 1  # one byte more than declared: a file growing while read is refused
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > min(st.st_size, limit):
            raise CkptkitError(f"{what} {printable(path)} grew while it was read: read it when nothing writes to it")
        return data
    except OSError as err:
        raise CkptkitError(f"cannot read {what} {printable(path)}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def read_optional(path: str, what: str, limit: int = MAX_RECORD_BYTES) -> bytes | None:
    """`read_bounded` for a file that may be absent (None); anything present that is not a small regular file
    is refused, never waited on or read without end."""
    if not os.path.lexists(path):
        return None
    return read_bounded(path, what, limit)


def check_npz_members(path: str, what: str, limit: int = MAX_TENSOR_BYTES) -> None:
    """Refuse a .npz whose members would unpack past `limit` bytes each (a compressed zip bomb), from the sizes
    its zip directory declares (zipfile reads no more than declared)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.file_size > limit:
                    raise CkptkitError(f"{what} {printable(path)}: member {printable(info.filename)} unpacks to "
                                       f"{info.file_size} bytes, over ckptkit's bound of {limit}: the file is "
                                       "damaged or hostile (CKPTKIT_MAX_TENSOR_BYTES raises the bound)")
    except (zipfile.BadZipFile, OSError) as err:
        raise CkptkitError(f"{what} {printable(path)} cannot be read ({err})") from None


# ---- private folders ------------------------------------------------------------------------------------------
def private_dir(path: str, what: str) -> str:
    """Create `path` owner-only if missing (its parents as usual), then verify it: a folder, not a link,
    owned by this user, mode without group/other bits, under parents only this user or root can change
    (a sticky world-writable parent such as /tmp is fine). Anything else is one error naming it."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    uid = os.geteuid()
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder"
    elif st.st_uid != uid:
        problem = f"belongs to uid {st.st_uid}, not to you (uid {uid})"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):o}, open to other users"
    else:
        problem = _unsafe_parent(parent, uid)
    if problem:
        raise CkptkitError(f"{what} {printable(path)} {problem}: ckptkit uses it only when it is a private folder "
                           "of yours; remove it (another user may have made it) or point ckptkit elsewhere")
    return path


def _unsafe_parent(folder: str, uid: int) -> str | None:
    """Why some parent lets another user replace what it holds (None when none does)."""
    folder = os.path.realpath(folder)
    while True:
        st = os.stat(folder)
        writable_by_others = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
        if st.st_uid not in (0, uid) or writable_by_others:
            return (f"lies in {printable(folder)}, which another user "
                    f"{'owns' if st.st_uid not in (0, uid) else 'may write'}")
        up = os.path.dirname(folder)
        if up == folder:
            return None
        folder = up


def open_private_file(path: str, flags: int, mode: int = 0o600) -> int:
    """os.open without following a link at the last component (in a folder `private_dir` verified)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


# ---- text made safe to print ----------------------------------------------------------------------------------
# C0 controls but newline and tab, DEL, C1 controls, and the Unicode bidi embeddings/overrides/isolates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_NEWLINE = re.compile(_CONTROL.pattern[:-1] + "\n\t]")


def _escape(match: re.Match) -> str:
    c = ord(match.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: object, newlines: bool = False) -> str:
    """`text` with every control character shown escaped (`\\x1b`), newlines too unless `newlines`."""
    pattern = _CONTROL if newlines else _CONTROL_OR_NEWLINE
    return pattern.sub(_escape, str(text))


def shell_word(word: str) -> str:
    """`word` quoted for a POSIX shell with no control byte in the result: shlex.quote when it has none, else
    bash's $'...' with the controls escaped (pasted, it is the same word)."""
    if not _CONTROL_OR_NEWLINE.search(word):
        return shlex.quote(word)
    out = []
    for ch in word:
        if ch in "\\'":
            out.append("\\" + ch)
        elif _CONTROL_OR_NEWLINE.match(ch):
            out.append("".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape")))
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"
