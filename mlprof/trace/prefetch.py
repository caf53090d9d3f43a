"""Read a trace in a forked process while ``mlprof analyze`` imports pandas and the analysis.

On a small trace the command's wall time is mostly start-up: the interpreter, typer, numpy,
pandas and the analysis modules take ~0.4 s before the trace's first byte is read, and the
read (~0.2 s for a 35 MB trace) follows them on one core. The CLI calls :func:`start` first
thing, before pandas is imported: it imports the reader (numpy, msgspec, the column builder:
the command needs them anyway) and forks, so the child has them without importing them again;
the child decodes the file into columns (the same :class:`~mlprof.trace.build.TableBuilder`
as a plain read) and sends them back through a pipe, so on a second core the read overlaps
the parent's imports of pandas and the analysis.
:func:`take` in the loader picks the columns up if they are for the same file (device, inode,
size and modification time), and otherwise a plain read happens as before. Anything that goes
wrong in the child (a bad file, an interrupt) only means the main process reads the file
itself, so errors and their messages are the plain read's.

A large trace (:data:`~mlprof.trace.sizes.PARALLEL_MIN_JSON_BYTES` of JSON or more) is read by
the child as the loader would read it: by worker processes (forked by the child, after it has
imported the reader), the child cutting the file and merging their columns. The ~0.6 s of the
parent's imports then overlap the read instead of preceding it; the columns come back joined
(~46 MB for a 217 MB trace). On Linux the child writes the columns' bytes into a memory file
(``memfd``) made before the fork, which the parent maps: only their pickled description goes
through the pipe (taking the columns: 0.04-0.08 s of pipe and unpickling before, ~1 ms now). The
workers write the columns of their slices there themselves (:func:`mlprof.trace.parallel._share`), so
they do not come to the child at all (pickled, piped, unpickled and written again: ~0.1 s of CPU and
~30 MB of the child's memory on a 217 MB trace);
elsewhere, or if that fails, they are pickled through the pipe. The child runs in its own process
group, so stopping it (:func:`take` of another file, an error, Ctrl-C) stops its workers too,
and it relays the read's progress for the parent's progress bar.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlprof.trace.children import reap, reap_soon
from mlprof.trace.sizes import PARALLEL_MIN_JSON_BYTES, expected_json_bytes

if TYPE_CHECKING:  # imported by start() only when a trace is read ahead
    from mlprof.trace.build import TableBuilder
    from mlprof.trace.jsonstream import ProgressCallback, StreamStats

PREFETCH_MAX_FILE_BYTES = 16 << 20
"""Largest file (bytes on disk) read ahead in one process (a larger one is read ahead only with workers)."""


@dataclass
class _Pending:
    identity: tuple[int, int, int, int]
    pid: int
    fd: int
    shm: int | None = None
    """A memory file (``memfd``) the child writes the columns' bytes into, None where there is none."""


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


def _worth_reading(path: str, size: int, workers: int) -> bool:
    """A JSON or gzip file (not SQLite, zip, a counters CSV ...) that the loader reads in one process
    (and no larger than :data:`PREFETCH_MAX_FILE_BYTES`) or, with ``workers`` > 1, by worker processes."""
    if size == 0:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    gzipped = head.startswith(b"\x1f\x8b")
    if not gzipped and head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] not in (b"{", b"["):
        return False
    if expected_json_bytes(size, gzipped) >= PARALLEL_MIN_JSON_BYTES:
        return workers > 1
    return size <= PREFETCH_MAX_FILE_BYTES


def default_workers() -> int:
    """The loader's number of worker processes (:func:`mlprof.trace.parallel.default_workers`, which imports numpy)."""
    return max(1, min(4, (os.cpu_count() or 1)))


def start(path: str, workers: int | None = None, shows_progress: Callable[[int], bool] | None = None) -> bool:
    """Fork a process reading ``path`` if it is a trace file; whether one was started.

    ``workers``: the loader's (``--jobs``; None: the default), for a large trace. ``shows_progress``: whether
    the command will show a progress bar for a file of this many bytes; where it will not, the child reads
    without following its position (each look at it waits for the reading thread's lock: ~5-10 ms of a
    35 MB read) and sends no progress records. None: it sends them.
    """
    global _pending
    if _pending is not None or not hasattr(os, "fork"):
        return False
    workers = default_workers() if workers is None else workers
    identity = _identity(path)
    if identity is None or not _worth_reading(path, identity[2], workers):
        return False
    _import_reader()
    progress = shows_progress is None or shows_progress(identity[2])
    read_fd, write_fd = os.pipe()
    shm = _memory_file()
    # Ctrl-C and SIGTERM held back over the fork (as interrupts.signals_deferred): one landing
    # mid-fork is raised just after it, in the parent, not in an at-fork hook that drops it.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        for fd in (read_fd, write_fd, shm):
            if fd is not None:
                os.close(fd)
        return False
    if pid == 0:  # pragma: no cover - the child's coverage is not collected (it leaves by os._exit)
        os.close(read_fd)
        _child(path, write_fd, workers, shm, progress)
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    os.close(write_fd)
    _pending = _Pending(identity, pid, read_fd, shm)
    atexit.register(_discard)
    return True


def _import_reader() -> None:
    """Import the reader (numpy, msgspec, the column builder) in this process, before the fork.

    The command imports them anyway; imported here, the child inherits them instead of importing them
    again while this process imports numpy: on a 2-core VM two processes slow each other, and the
    child's numpy was ~0.08 s of CPU spent twice (resnet50 35 MB: numpy's import 0.11-0.22 -> 0.05-0.06 s
    of wall, the whole command's CPU ~0.08 s less). Imported as the command's other imports are
    (:func:`mlprof.lazy.imports_held`): a Ctrl-C or SIGTERM landing here is raised before the fork.
    """
    from mlprof.lazy import imports_held

    with imports_held():
        import mlprof.trace.build
        import mlprof.trace.jsonstream  # noqa: F401


def _memory_file() -> int | None:
    """An anonymous memory file for the columns' bytes (Linux ``memfd_create``), None where there is none."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    try:
        return int(create("mlprof-read-ahead", getattr(os, "MFD_CLOEXEC", 0)))
    except OSError:
        return None


def _child(
    path: str, fd: int, workers: int, shm: int | None = None, progress: bool = True
) -> None:  # pragma: no cover - runs in the forked process
    """Send progress records (with ``progress``), then ``path``'s (header, stats, columns), to ``fd``; never
    returns, never prints.

    With a memory file ``shm``, the columns' arrays are written into it and only their pickled
    description goes through the pipe (:func:`_out_of_band`)."""
    code = 1
    try:
        out = os.fdopen(fd, "wb")
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
            signal.signal(signal.SIGTERM, _stopped)  # the parent's stop: the workers' pool stops them on the way out
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            import gc

            gc.disable()  # as the plain read (loader._load): millions of short-lived objects, no cycles
            builder, header, stats = _read(Path(path), workers, _relay(out) if progress else None, shm)
            # Through a memory file each part of a column is written as it is (the parent joins them as it makes
            # the tables): joined here first they were copied twice, ~46 MB more of this process's memory.
            payload: tuple[Any, ...] = ("ok", header, stats, builder.export_partial(joined=shm is None))
            del builder
        except BaseException:  # the parent reads the file itself and reports what is wrong with it
            payload = ("failed",)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # nothing raises past this point
        if shm is not None and payload[0] == "ok":
            payload = _out_of_band(payload, shm, _shared_end(path))
        with out:
            pickle.dump(payload, out, protocol=pickle.HIGHEST_PROTOCOL)
        code = 0
    except BaseException:  # the parent is gone or did not want it
        pass
    finally:
        os._exit(code)


def _shared_end(path: str) -> int:  # pragma: no cover - in the child
    """Where the workers' columns end in the memory file (:data:`~mlprof.trace.parallel.SHARED_BYTES_PER_JSON_BYTE`
    per byte of the file at most), rounded up to a page: the child's own arrays go after."""
    from mlprof.trace.parallel import SHARED_BYTES_PER_JSON_BYTE

    try:
        end = os.stat(path).st_size * SHARED_BYTES_PER_JSON_BYTE
    except OSError:
        return -1
    return -(-end // 65536) * 65536


def _out_of_band(payload: tuple[Any, ...], shm: int, at: int = 0) -> tuple[Any, ...]:  # pragma: no cover - in child
    """("shm", pickle, sizes, at): ``payload`` pickled with its arrays' bytes out of band, written one after another
    into the memory file ``shm`` from byte ``at`` (after the workers' columns, which they wrote there themselves:
    :mod:`mlprof.trace.parallel`), which the parent maps (the columns are not copied through the pipe, ~46 MB
    for a 217 MB trace, nor held twice by the parent while they are unpickled). ``payload`` itself where
    that cannot be done (a buffer that is not contiguous, a write that fails; then the columns written by the
    workers cannot be read: ``("failed",)``)."""
    try:
        if at < 0:
            raise ValueError("no room")
        buffers: list[pickle.PickleBuffer] = []
        meta = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
        raws = [b.raw() for b in buffers]
        start = at
        for raw in raws:
            while len(raw):
                n = os.pwrite(shm, raw, at)
                raw, at = raw[n:], at + n
        if os.fstat(shm).st_size < at:  # the parent maps up to here: no array of the child's own after the workers'
            os.ftruncate(shm, at)
        return ("shm", meta, [raw.nbytes for raw in raws], start)
    except (BufferError, OSError, ValueError):
        return ("failed",) if _has_shared_parts(payload) else payload


def _has_shared_parts(payload: tuple[Any, ...]) -> bool:  # pragma: no cover - in the child
    from mlprof.trace.build import SharedPart

    partial = payload[3]
    stores = (*partial.cols.values(), partial.collectives)
    return any(isinstance(p, SharedPart) for store in stores for parts in store.values() for p in parts)


def _in_band(payload: tuple[Any, ...], shm: int | None) -> tuple[Any, ...]:
    """The child's payload, its arrays' bytes read from the memory file (mapped, not copied) if it sent them so,
    the workers' columns among them."""
    if payload[0] != "shm":
        return payload
    if shm is None:
        return ("failed",)
    import mmap

    _, meta, sizes, start = payload
    total = start + sum(sizes)
    view = memoryview(mmap.mmap(shm, total) if total else bytearray())
    buffers, at = [], start
    for size in sizes:
        buffers.append(view[at : at + size])
        at += size
    out: tuple[Any, ...] = pickle.loads(meta, buffers=buffers)
    if out[0] == "ok":
        out[3].resolve(view)
    return out


class _Stopped(BaseException):
    """SIGTERM in the child: raised so that the worker pool's clean-up stops the workers."""


def _stopped(signum: int, frame: object) -> None:  # pragma: no cover - runs in the forked process
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # raised once: not again inside the clean-up
    raise _Stopped


def _read(
    path: Path, workers: int, on_progress: ProgressCallback | None, shm: int | None = None
) -> tuple[TableBuilder, dict[str, Any], StreamStats]:  # pragma: no cover - runs in the forked process
    """The loader's read (``loader._read_tables``): by ``workers`` processes for a large trace, else here.

    ``shm``: the memory file the workers write their columns into (:func:`mlprof.trace.parallel.read_parallel`)."""
    from mlprof.trace.build import TableBuilder
    from mlprof.trace.jsonstream import is_gzip, read_trace_events

    if workers > 1 and expected_json_bytes(path.stat().st_size, is_gzip(path)) >= PARALLEL_MIN_JSON_BYTES:
        from concurrent.futures.process import BrokenProcessPool

        from mlprof.trace.memory import keep_freed_memory
        from mlprof.trace.parallel import SliceFailed, read_parallel

        keep_freed_memory()  # as the loader (mlprof.trace.memory); the workers forked next inherit it
        builder = TableBuilder()
        try:
            header, stats = read_parallel(path, builder, on_progress, workers, shm)
            return builder, header, stats
        except (SliceFailed, BrokenProcessPool, OSError):
            pass  # as the loader: the sequential reader validates every cut
    builder = TableBuilder()
    header, stats = read_trace_events(path, builder.add, on_progress)
    return builder, header, stats


PROGRESS_STEPS = 100
"""Progress records the child sends at most (each a few dozen bytes: all fit in the pipe while the parent imports)."""


def _relay(out: IO[bytes]) -> ProgressCallback:  # pragma: no cover - runs in the forked process
    """An ``on_progress`` that sends ("progress", done, total) each time another 1/100 of the file is read.

    Only forward steps: the reader's position is read while its thread reads on, and a gzip
    file's raw position can be seen a little behind one seen before.
    """
    sent = -1

    def on_progress(done: int, total: int) -> None:
        nonlocal sent
        step = done * PROGRESS_STEPS // max(total, 1)
        if step > sent:
            sent = step
            pickle.dump(("progress", done, total), out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()

    return on_progress


def take(
    path: str | Path, on_progress: ProgressCallback | None = None
) -> tuple[TableBuilder, dict[str, Any], StreamStats] | None:
    """The columns read ahead for ``path``, or None (nothing read ahead for this file, or the child failed).

    The child's progress records go to ``on_progress`` while it reads. An exception while waiting
    (Ctrl-C, SIGTERM) stops the child and its workers before it propagates.
    """
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
            while payload[0] == "progress":
                if on_progress is not None:
                    on_progress(payload[1], payload[2])
                payload = pickle.load(fh)
        payload = _in_band(payload, pending.shm)
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):
        payload = ("failed",)
    except BaseException:
        _stop(pending, closed=True)
        raise
    finally:
        _close_shm(pending)
    reap_soon(pending.pid)
    if payload[0] != "ok":
        return None
    from mlprof.trace.build import TableBuilder

    _, header, stats, partial = payload
    return TableBuilder.from_partial(partial), header, stats


STOP_GRACE_S = 10.0
"""How long a stopped child may take to stop its workers (SIGTERM, then ~0.05 s) before it is killed."""


def _close_shm(pending: _Pending) -> None:
    """Close the memory file (a mapping of it stays valid)."""
    shm, pending.shm = pending.shm, None
    if shm is not None:
        with contextlib.suppress(OSError):
            os.close(shm)


def _stop(pending: _Pending, closed: bool = False) -> None:
    """Stop the child and reap it: SIGTERM (it stops its workers and leaves), SIGKILL after :data:`STOP_GRACE_S`."""
    _close_shm(pending)
    if not closed:
        with contextlib.suppress(OSError):
            os.close(pending.fd)
    with contextlib.suppress(OSError):
        os.kill(pending.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pending.pid, os.WNOHANG)[0] != 0:
                return
        except OSError:  # already reaped
            return
        time.sleep(0.005)
    with contextlib.suppress(OSError):
        os.kill(pending.pid, signal.SIGKILL)
    reap(pending.pid)


def _discard() -> None:
    """At exit: a read-ahead nobody took (an error before the read, another input) is stopped."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        _stop(pending)


__all__ = ["PREFETCH_MAX_FILE_BYTES", "start", "take"]
