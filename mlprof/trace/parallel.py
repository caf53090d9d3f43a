"""Decode the slices of one large trace in worker processes.

Building columns from decoded events is Python-bound (~60-80 MB/s on one core), so
for a large file the main process only reads, gunzips and cuts the text, and
worker processes decode and build each slice with their own symbol table; the
main process remaps their string codes into one table. From a plain (not gzipped)
file the workers are sent only each slice's offsets and read its bytes themselves:
sending the text through the pool's pipe cost the main process ~0.5 s of copies and
system time per GB (pickle, write) and the workers as much again, on cores the workers
need (1 GB trace). Cuts here are textual
guesses (``}, {``); if any slice fails to decode, the caller re-reads the file
sequentially, where every cut is validated and every error is reported properly.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from mlprof.interrupts import worker_pool
from mlprof.trace.build import Partial, SharedPart, TableBuilder
from mlprof.trace.jsonstream import _EVENT_BOUNDARY as _BOUNDARY
from mlprof.trace.jsonstream import (
    ProgressCallback,
    StreamStats,
    decode_in_place,
    decode_slice,
    decode_slice_leniently,
    is_utf8,
    read_range_into,
    read_trace_events,
)
from mlprof.trace.schema import TraceEvent

if TYPE_CHECKING:  # imported by the pool itself: a small trace is read without concurrent.futures
    from concurrent.futures import Future


class SliceFailed(Exception):
    """A textual cut did not decode; read the file sequentially instead."""


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


SUB_SLICE_BYTES = 1 << 20
"""A worker decodes and builds its slice in pieces of about this size: the events of a piece are built
into columns and freed while still in the CPU cache (as the sequential reader's 1 MB slices). Decode and
build of tiled x4's 4 MB slices, one process: 0.26-0.31 s CPU for 16 slices whole, 0.23 s in 1 MB pieces."""

_OPEN = b'{"traceEvents":['


def _build_slice(piece: bytes | bytearray) -> Partial:
    """Decode and build one slice (``{"traceEvents":[...]}``); only a slice that is not well-formed JSON fails.

    In pieces of :data:`SUB_SLICE_BYTES` cut at textual event boundaries; if a piece does not decode
    (a cut inside a string) the slice is decoded whole, which validates it as before.
    """
    if len(piece) > SUB_SLICE_BYTES + SUB_SLICE_BYTES // 2 and piece.startswith(_OPEN) and piece.endswith(b"]}"):
        partial = _build_in_pieces(piece)
        if partial is not None:
            return partial
    return _build_whole(piece)


def _build_in_pieces(piece: bytes | bytearray) -> Partial | None:
    """:func:`_build_whole` of ``piece`` cut at the first event boundary after every :data:`SUB_SLICE_BYTES`,
    or None if a piece does not decode.

    Each piece is decoded where it lies (:func:`mlprof.trace.jsonstream.decode_in_place`: brackets written
    over the bytes around it and put back) instead of being copied into ``{"traceEvents":[`` ... ``]}``
    (~0.04 s of copies per 217 MB). The events' raw texts (``ts``, ``dur``) are views of the buffer, never
    over a written byte, and are freed before the next piece is decoded. A piece that does not decode so
    (bad UTF-8, odd types, a cut inside a string) is decoded as before, from a copy.
    """
    stats = StreamStats()
    builder = TableBuilder()
    events = 0
    buf = piece if isinstance(piece, bytearray) else bytearray(piece)
    view = memoryview(buf)  # the copies of pieces that do not decode in place are made from it
    body_end = len(buf) - 2  # before the closing ``]}``
    pos = len(_OPEN)  # the byte before the first event is the ``[`` of ``_OPEN``; after the last, ``]``
    while pos < body_end:
        match = _BOUNDARY.search(buf, pos + SUB_SLICE_BYTES, body_end)
        cut, after = (body_end, body_end) if match is None else (match.start() + 1, match.end() - 1)
        decoded: list[TraceEvent] | None = decode_in_place(buf, pos - 1, cut)
        if decoded is None:
            copied = b"".join((_OPEN, view[pos:cut], b"]}"))
            try:
                try:
                    doc = decode_slice(copied, stats)
                except msgspec.ValidationError:
                    doc = decode_slice_leniently(copied, stats)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return None
            decoded = doc.traceEvents
            del doc, copied
        builder.add(decoded)
        events += len(decoded)
        del decoded  # with its raw texts, before the next piece's brackets are written
        pos = after
    partial = builder.export_partial()
    partial.events = events
    # invalid UTF-8 anywhere in the slice, as the slice decoded whole says it (see jsonstream.decode_slice)
    partial.repaired_utf8 = stats.repaired_utf8 or not is_utf8(buf)
    partial.not_events = stats.not_events
    return partial


def _build_whole(piece: bytes | bytearray) -> Partial:
    """Decode and build one slice in one piece; raises :class:`SliceFailed` if it is not well-formed JSON."""
    stats = StreamStats()
    piece = bytes(piece)  # as it always was (a bytearray from read_range_into: the rare path, one copy)
    try:
        try:
            doc = decode_slice(piece, stats)
        except msgspec.ValidationError:  # odd types in some event: keep the good ones
            doc = decode_slice_leniently(piece, stats)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise SliceFailed(str(exc)) from None
    builder = TableBuilder()
    builder.add(doc.traceEvents)
    partial = builder.export_partial()
    partial.events = len(doc.traceEvents)
    partial.repaired_utf8 = stats.repaired_utf8
    partial.not_events = stats.not_events
    return partial


def _build_range(path: Path, start: int, end: int, shared: int | None = None) -> Partial:
    """:func:`_build_slice` of the file's bytes ``start:end``, read here.

    ``shared``: a memory file (the read-ahead's) where the columns are written (:func:`_share`) rather than
    sent back through the pool's pipe."""
    try:
        piece = read_range_into(path, start, end, _OPEN, b"]}")
    except OSError as exc:
        raise SliceFailed(str(exc)) from None
    partial = _build_slice(piece)
    del piece
    if shared is not None:
        _share(partial, shared, start * SHARED_BYTES_PER_JSON_BYTE, (end - start) * SHARED_BYTES_PER_JSON_BYTE)
    return partial


SHARED_BYTES_PER_JSON_BYTE = 8
"""Room in the memory file for the columns of each byte of a slice's JSON (:func:`_share`): a slice's columns go
to ``[8 * start, 8 * end)``, so the workers' never overlap. Columns take ~0.2 bytes per JSON byte on tiled x4
and at most ~3 for the smallest events mlprof keeps (``{"ph":"i","name":"[memory]"}``: nine 8-byte columns);
a slice whose columns do not fit is sent through the pipe."""


def _share(partial: Partial, fd: int, base: int, room: int) -> None:
    """Write the partial's column parts into the memory file ``fd`` from byte ``base`` (at most ``room`` bytes),
    each replaced by its :class:`~mlprof.trace.build.SharedPart`: the pool then pickles a few numbers per part,
    not its bytes (pickled, piped, unpickled and written again by the read-ahead: ~0.1 s of CPU per 217 MB).
    The partial is left as it is where they do not fit or a write fails."""
    placed: list[tuple[list[Any], int, np.ndarray, int]] = []
    at = base
    for store in (*partial.cols.values(), partial.collectives):
        for parts in store.values():
            for i, part in enumerate(parts):
                if not isinstance(part, np.ndarray) or not part.flags.c_contiguous:
                    return
                at = -(-at // 64) * 64
                placed.append((parts, i, part, at))
                at += part.nbytes
    if at > base + room:
        return
    try:
        for _, _, part, offset in placed:
            with part.data.cast("B") as data:
                done = 0
                while done < len(data):
                    done += os.pwrite(fd, data[done:], offset + done)
    except (OSError, ValueError, TypeError):
        return
    for holder, i, part, offset in placed:
        holder[i] = SharedPart(offset, part.dtype.str, len(part))  # the lists hold either (see Partial.resolve)


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _noop() -> int:
    return os.getpid()


def read_parallel(
    path: Path, builder: TableBuilder, on_progress: ProgressCallback | None, workers: int, shared: int | None = None
) -> tuple[dict[str, Any], StreamStats]:
    """Fill ``builder`` from ``path`` using ``workers`` processes; raises :class:`SliceFailed`.

    ``shared``: a memory file the workers write the columns of a plain file's slices into (:func:`_share`); the
    builder then holds :class:`~mlprof.trace.build.SharedPart` parts, made arrays by
    :meth:`~mlprof.trace.build.Partial.resolve` of its exported partial, from that file's bytes."""
    with worker_pool(workers) as pool:  # Ctrl-C, SIGTERM or an error: the workers are stopped
        # Fork every worker now, before the reader thread exists.
        for started in [pool.submit(_noop) for _ in range(workers)]:
            started.result()
        pending: deque[Future[Partial]] = deque()
        extra_events = 0
        flags = StreamStats()

        def drain(limit: int) -> None:
            nonlocal extra_events
            while len(pending) > limit:
                partial = pending.popleft().result()
                extra_events += partial.events
                flags.repaired_utf8 |= partial.repaired_utf8
                flags.not_events += partial.not_events
                builder.merge_partial(partial)

        def on_slice(piece: bytes) -> None:
            pending.append(pool.submit(_build_slice, piece))
            drain(workers + 1)

        def on_range(start: int, end: int) -> None:
            pending.append(pool.submit(_build_range, path, start, end, shared))
            drain(workers + 1)

        def on_batch(events: list[Any]) -> None:  # the tail: keep file order, slices first
            drain(0)
            builder.add(events)

        by_offset = hasattr(os, "pread")
        before = _identity(path) if by_offset else None
        try:
            header, stats = read_trace_events(
                path, on_batch, on_progress, on_slice=on_slice, on_range=on_range if by_offset else None
            )
            drain(0)
            if before is not None and _identity(path) != before:  # rewritten while read: the workers' bytes may differ
                raise SliceFailed(f"{path}: changed while it was read")
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    stats.events += extra_events
    stats.repaired_utf8 |= flags.repaired_utf8
    stats.not_events += flags.not_events
    return header, stats
