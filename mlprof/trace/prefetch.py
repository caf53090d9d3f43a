"""Read a small trace in a forked process while ``mlprof analyze`` imports pandas and the analysis.

On a small trace the command's wall time is mostly start-up: the interpreter, typer, numpy,
pandas and the analysis modules take ~0.4 s before the trace's first byte is read, and the
read (~0.2 s for a 35 MB trace) follows them on one core. The CLI calls :func:`start` first
thing, before numpy is imported: the fork is of a small, single-threaded process (few pages
for either side to copy on write), and the child imports the reader (numpy, msgspec),
decodes the file into columns (the same :class:`~mlprof.trace.build.TableBuilder` as a plain
read) and sends them back through a pipe, so on a second core the read overlaps the
parent's imports of numpy, pandas and the analysis.
:func:`take` in the loader picks the columns up if they are for the same file (device, inode,
size and modification time), and otherwise a plain read happens as before. Anything that goes
wrong in the child (a bad file, an interrupt) only means the main process reads the file
itself, so errors and their messages are the plain read's.

Only files the plain read would read in this process are read ahead: under
:data:`PREFETCH_MAX_FILE_BYTES` on disk (the progress bar's threshold: the child cannot draw
it) and under the worker processes' threshold of JSON.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlprof.trace.sizes import PARALLEL_MIN_JSON_BYTES, expected_json_bytes

if TYPE_CHECKING:  # nothing but the standard library before the fork: the child imports what it needs
    from mlprof.trace.build import TableBuilder
    from mlprof.trace.jsonstream import StreamStats

PREFETCH_MAX_FILE_BYTES = 16 << 20
"""Largest file (bytes on disk) read ahead: larger ones show a progress bar, which the child cannot draw."""


@dataclass
class _Pending:
    identity: tuple[int, int, int, int]
    pid: int
    fd: int


_pending: _Pending | None = None


def _identity(path: str | Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime) of a regular file, None for anything else or a path that cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _worth_reading(path: str, size: int) -> bool:
    """A JSON or gzip file small enough for one process (not SQLite, zip, a counters CSV ...)."""
    if size == 0 or size > PREFETCH_MAX_FILE_BYTES:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    gzipped = head.startswith(b"\x1f\x8b")
    if not gzipped and head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] not in (b"{", b"["):
        return False
    return expected_json_bytes(size, gzipped) < PARALLEL_MIN_JSON_BYTES


def start(path: str) -> bool:
    """Fork a process reading ``path`` if it is a small trace file; whether one was started."""
    global _pending
    if _pending is not None or not hasattr(os, "fork"):
        return False
    identity = _identity(path)
    if identity is None or not _worth_reading(path, identity[2]):
        return False
    read_fd, write_fd = os.pipe()
    # Ctrl-C and SIGTERM held back over the fork (as interrupts.signals_deferred): one landing
    # mid-fork is raised just after it, in the parent, not in an at-fork hook that drops it.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(read_fd)
        os.close(write_fd)
        return False
    if pid == 0:  # pragma: no cover - the child's coverage is not collected (it leaves by os._exit)
        os.close(read_fd)
        _child(path, write_fd)
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    os.close(write_fd)
    _pending = _Pending(identity, pid, read_fd)
    atexit.register(_discard)
    return True


def _child(path: str, fd: int) -> None:  # pragma: no cover - runs in the forked process
    """Read ``path`` and send (header, stats, columns) to ``fd``; never returns, never prints."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        import gc

        gc.disable()  # as the plain read (loader._load): millions of short-lived objects, no cycles
        from mlprof.trace.build import TableBuilder
        from mlprof.trace.jsonstream import read_trace_events

        builder = TableBuilder()
        header, stats = read_trace_events(Path(path), builder.add)
        payload: tuple[Any, ...] = ("ok", header, stats, builder.export_partial(joined=True))
    except BaseException:  # the parent reads the file itself and reports what is wrong with it
        payload = ("failed",)
    try:
        with os.fdopen(fd, "wb") as out:
            pickle.dump(payload, out, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:  # the parent is gone or did not want it
        code = 1
    os._exit(code)


def take(path: str | Path) -> tuple[TableBuilder, dict[str, Any], StreamStats] | None:
    """The columns read ahead for ``path``, or None (nothing read ahead for this file, or the child failed)."""
    global _pending
    pending, _pending = _pending, None
    if pending is None:
        return None
    if _identity(path) != pending.identity:
        _stop(pending)
        return None
    try:
        with os.fdopen(pending.fd, "rb") as fh:
            payload = pickle.load(fh)
    except (EOFError, OSError, pickle.UnpicklingError):
        payload = ("failed",)
    finally:
        _reap(pending.pid)
    if payload[0] != "ok":
        return None
    from mlprof.trace.build import TableBuilder

    _, header, stats, partial = payload
    return TableBuilder.from_partial(partial), header, stats


def _stop(pending: _Pending) -> None:
    with contextlib.suppress(OSError):
        os.close(pending.fd)
    with contextlib.suppress(OSError):
        os.kill(pending.pid, signal.SIGKILL)
    _reap(pending.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)


def _discard() -> None:
    """At exit: a read-ahead nobody took (an error before the read, another input) is stopped."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        _stop(pending)


__all__ = ["PREFETCH_MAX_FILE_BYTES", "start", "take"]
