"""Writing a file the user named, without ever losing one they have.

* Files are compared by device and inode, not by path: a hard link or a symlink to an
  input is the input (:func:`same_file`, :func:`inside`).
* A regular file is written to a temporary file beside it and renamed into place, so
  an interrupted or failed write (Ctrl-C, a full disk) leaves the old file or none,
  never half a file. A new file gets the mode the umask gives (``0o666 & ~umask``), an
  existing one keeps its mode; a symlink is followed and its target replaced.
* A character device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe) is
  written as a stream: opened and written, never replaced by a regular file (as root,
  ``-o /dev/null`` used to replace ``/dev/null``).
* Anything else (a folder, a socket, a block device) is refused with one line.

Library code (annotate, reports) writes through :func:`open_output`; commands check
their ``-o`` with :mod:`mlprof.commands._files` before reading anything.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mlprof.errors import MlprofError, UsageError


def file_id(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of what ``path`` names (symlinks followed); None when it does not exist or is unusable."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are one file (hard links, symlinks and ``..`` included)."""
    ida = file_id(a)
    return ida is not None and ida == file_id(b)


def inside(output: Path, folder: Path) -> bool:
    """True when ``output`` (existing or not) would be ``folder`` or lie inside it, by device and inode."""
    target = file_id(folder)
    if target is None:
        return False
    try:
        here = Path(os.path.abspath(output))
    except (OSError, ValueError):
        return False
    return any(file_id(candidate) == target for candidate in (here, *here.parents))


def is_stream(path: Path) -> bool:
    """True for a character device or a FIFO: written as a stream, never replaced."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def check_writable_kind(output: Path) -> None:
    """Refuse an output that is neither a regular file, a new name, a character device nor a FIFO."""
    try:
        mode = output.stat().st_mode
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        return  # the write reports it in its own words
    if stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return
    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
    raise UsageError(f"-o {output}: {kind}; name a file to write")


@contextmanager
def open_output(output: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``output`` through; on success it is in place, on any failure nothing changed.

    An ``OSError`` (no such folder, no space, no permission) is one error line.
    """
    check_writable_kind(output)
    if is_stream(output):
        try:
            with open(output, "wb") as fh:
                yield fh
        except OSError as exc:
            raise MlprofError(f"{output}: cannot write ({exc.strerror or exc})") from None
        return
    target = Path(os.path.realpath(output))  # a symlink's target is replaced, not the link
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mode = None
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        except OSError as exc:
            raise MlprofError(f"{output}: cannot write ({exc.strerror or exc})") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
        except OSError as exc:
            raise MlprofError(f"{output}: cannot write ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # gone already when it was renamed into place


_CHUNK = 1 << 18
"""Characters of text encoded at a time: a 4 MB report is never held twice (as text and as bytes)."""


def write_output(output: Path, data: str | bytes | Iterable[str]) -> None:
    """Write ``data`` (text as UTF-8, or pieces of text written as they come) to ``output`` through
    :func:`open_output`.

    Text is encoded a chunk at a time; a Python string holds code points, so a chunk
    boundary never splits a character and the bytes are those of encoding it whole
    (a lone surrogate is "?" either way).
    """
    with open_output(output) as fh:
        if isinstance(data, bytes):
            fh.write(data)
            return
        if not isinstance(data, str):
            for piece in data:
                fh.write(piece.encode("utf-8", "replace"))
            return
        for start in range(0, len(data), _CHUNK):
            fh.write(data[start : start + _CHUNK].encode("utf-8", "replace"))
