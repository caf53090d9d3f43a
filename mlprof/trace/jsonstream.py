"""Stream a Kineto Chrome-trace JSON file as batches of typed events.

A trace is one JSON object whose ``traceEvents`` array holds almost all of its
bytes. Decoding it whole needs the file and every event in memory at once (HTA's
4-6x RSS). Instead we read the (optionally gzipped) file in blocks on a background
thread, cut the ``traceEvents`` array at event boundaries into slices of a few MB,
and decode each slice on its own as ``{"traceEvents": [ ... ]}``. Peak memory is one
slice of events plus the compact columns built so far.

Cutting is safe without a full tokenizer because a cut is only accepted if the slice
decodes: a cut inside a string or a nested object leaves unbalanced JSON and is
rejected by the decoder, so we try an earlier cut or read on. The header keys before
``traceEvents`` (``deviceProperties``, ``distributedInfo``) and the ones after it
are decoded from small reconstructed documents.
"""

from __future__ import annotations

import gzip
import io
import os
import queue
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from mlprof.errors import BadInputError
from mlprof.trace.schema import HEADER_FIELDS, RAW_NONE, EventArgs, Scalar, TraceDocument, TraceEvent

BLOCK_BYTES = 1 << 20
SLICE_BYTES = 1 << 20
"""Decoded events take ~2.5x their JSON. 1 MB slices read df_index_resolver (54 MB) at 163 MB/s against
88 MB/s for 4 MB ones (one process, same run): the events of a slice are built into columns and freed
while they are still in the CPU cache. Larger slices also put more on the peak (16 MB: ~100 MB more)."""
PARALLEL_SLICE_BYTES = 4 << 20
"""Smaller slices when workers decode: results come back sooner and the pipe stays short."""
_KEY = b'"traceEvents"'
_AFTER_KEY = re.compile(rb"\s*:\s*\[")
_AFTER_KEY_SO_FAR = re.compile(rb"\s*(?::\s*)?")
_FIRST_BYTE = re.compile(rb"\S")
HEADER_LIMIT = 64 << 20
"""Bytes read without finding ``traceEvents`` (or a bare ``[``) before the file is refused:
Kineto writes a header of a few KB, so this is garbage, or a gzip bomb of whitespace."""
PENDING_LIMIT = 256 << 20
"""Bytes of ``traceEvents`` held without one event boundary before the file is refused."""
GZIP_RATIO_LIMIT = 200
"""Most a gzip input may inflate (decompressed / compressed bytes so far) past
:data:`GZIP_RATIO_FROM`: Kineto JSON gzips 10-40x; whitespace and other bombs ~1000x."""
GZIP_RATIO_FROM = 64 << 20
_EVENT_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes of the input file consumed, total bytes of the input file)."""


class StreamStats(msgspec.Struct):
    """What the reader saw, for throughput and for the report's trace metadata."""

    file_bytes: int = 0
    json_bytes: int = 0
    events: int = 0
    repaired_utf8: bool = False
    not_events: int = 0
    """Elements of ``traceEvents`` that are not JSON objects (skipped)."""


_DECODER = msgspec.json.Decoder(TraceDocument)


def is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def gunzip(fileobj: IO[bytes]) -> gzip.GzipFile:
    """A decompressing reader of the gzip stream ``fileobj``: python-isal's where it is installed, else :mod:`gzip`'s.

    ISA-L's inflate is 3-6x zlib's on trace JSON (resnet50's 35 MB: 6 ms against 24-34 ms of CPU),
    and its reader has :class:`gzip.GzipFile`'s interface and output (multi-member files, padding).
    python-isal has wheels for x86-64 and ARM64 Linux, macOS and Windows; elsewhere it is not
    installed (pyproject.toml) and the standard library reads.
    """
    try:
        from isal import igzip
    except ImportError:
        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    return igzip.GzipFile(fileobj=_SmallReads(fileobj), mode="rb")


class _SmallReads(io.RawIOBase):
    """``raw`` read as :mod:`gzip` reads it: at most :data:`_GZIP_READ_BYTES` a time (python-isal asks for 512 KB).

    The compressed bytes taken so far (``raw.tell()``) then follow the inflated ones closely: the
    gzip-bomb ratio and the read's progress bar measure with it, as they do with :mod:`gzip`.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(min(len(buffer), _GZIP_READ_BYTES))
        buffer[: len(data)] = data
        return len(data)


_GZIP_READ_BYTES: int = getattr(gzip, "READ_BUFFER_SIZE", io.DEFAULT_BUFFER_SIZE)
"""What the running Python's :mod:`gzip` reads at a time (8 KB to 3.11, 128 KB from 3.12)."""


class _BlockReader:
    """Reads decompressed blocks on a thread, so gunzip overlaps JSON decoding."""

    def __init__(self, path: Path, on_progress: ProgressCallback | None, data: bytes | None = None) -> None:
        self._path = path
        if data is None:
            self._raw: IO[bytes] = path.open("rb")
            self.file_bytes = path.stat().st_size
            gzipped = is_gzip(path)
        else:
            self._raw, self.file_bytes, gzipped = io.BytesIO(data), len(data), data.startswith(_GZIP_MAGIC)
        self._stream: IO[bytes] | gzip.GzipFile = gunzip(self._raw) if gzipped else self._raw
        self.plain_file = data is None and not gzipped
        """The blocks are the file's own bytes: a position in them is an offset in the file."""
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlprof-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        inflated = 0
        gzipped = self._stream is not self._raw
        try:
            while not self._stop.is_set():
                block = self._stream.read(BLOCK_BYTES)
                if not block:
                    break
                inflated += len(block)
                if gzipped and inflated > GZIP_RATIO_FROM and inflated > GZIP_RATIO_LIMIT * self._raw.tell():
                    self._queue.put(
                        BadInputError(
                            f"{self._path}: not a trace (the gzip data inflates more than {GZIP_RATIO_LIMIT}x: "
                            f"{inflated >> 20} MB from {self._raw.tell() >> 10} KB; trace JSON compresses 10-40x)"
                        )
                    )
                    return
                self._queue.put(block)
            self._queue.put(None)
        except BaseException as exc:  # all of them: a thread that ended silently would leave blocks() waiting
            self._queue.put(self._standard_error(exc) if gzipped else exc)

    def _standard_error(self, exc: BaseException) -> BaseException:
        """What the standard library's gzip raises on the same file, for a failure of :func:`gunzip`'s reader.

        python-isal's messages differ from zlib's (decimal CRCs, its own inflate errors; trailing
        garbage read as a truncation): the file is read again by :mod:`gzip` (only on this path) so the
        user sees the message of either reader; ``exc`` where that read fails no other way.
        """
        if type(self._stream) is gzip.GzipFile or not isinstance(exc, Exception):
            return exc
        try:
            self._raw.seek(0)
            inflated = 0
            with gzip.GzipFile(fileobj=self._raw, mode="rb") as again:
                while not self._stop.is_set():
                    block = again.read(BLOCK_BYTES)
                    inflated += len(block)
                    if not block or (inflated > GZIP_RATIO_FROM and inflated > GZIP_RATIO_LIMIT * self._raw.tell()):
                        break
        except (OSError, EOFError, zlib.error) as standard:
            return standard
        except Exception:
            pass
        return exc

    def blocks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BadInputError):
                raise item
            if isinstance(item, BaseException) and _read_error(item):
                raise BadInputError(f"{self._path}: cannot read compressed data ({_describe(item)})")
            if isinstance(item, BaseException):
                raise item
            if self._on_progress is not None:
                self._on_progress(self._raw.tell(), self.file_bytes)
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._stream.close()
        self._raw.close()


def _read_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to read or decompress the file (a bad input), not of the process."""
    if isinstance(exc, (OSError, EOFError, zlib.error)):
        return True
    try:
        from isal import isal_zlib
    except ImportError:
        return False
    isal_error: type[BaseException] = isal_zlib.error  # type: ignore[assignment]  # its stub calls it an instance
    return isinstance(exc, isal_error)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the file is truncated"
    return str(exc) or type(exc).__name__


def read_trace_events(
    path: Path,
    on_batch: Callable[[list[TraceEvent]], None],
    on_progress: ProgressCallback | None = None,
    on_slice: Callable[[bytes], None] | None = None,
    data: bytes | None = None,
    on_range: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], StreamStats]:
    """Decode ``path`` (or ``data``, the bytes of a trace named ``path``) and hand its events to ``on_batch``.

    With ``on_slice``, middle slices are not decoded here but handed over as
    ``{"traceEvents": [...]}`` documents cut at a textual event boundary (for
    decoding in worker processes); the consumer must check that each decodes and
    fall back to a plain read if one does not. With ``on_range`` as well, a plain
    (not gzipped) file's middle slices are handed over as ``(start, end)`` byte offsets
    in the file instead (see :func:`read_range_into`): the consumer reads them itself, and the
    text is not copied into another process, and this process reads only the header, the tail and a
    window before each cut (:func:`_plan_ranges`). Returns the top-level keys other
    than ``traceEvents`` and the reader's stats. Raises :class:`BadInputError` for
    anything that is not a readable trace.
    """
    planned = _plan_ranges(path) if on_slice is not None and on_range is not None and data is None else None
    if planned is not None and on_range is not None:  # cut from windows: only the header and tail are read here
        stats = StreamStats(file_bytes=planned.size, json_bytes=planned.size)
        try:
            header = _read_planned(path, planned, on_batch, on_progress, on_range, stats)
        except RecursionError:  # msgspec's depth limit: 100k nested [ or {
            raise BadInputError(f"{path}: not a trace (JSON nested too deeply to read)") from None
    else:
        reader = _BlockReader(path, on_progress, data)
        stats = StreamStats(file_bytes=reader.file_bytes)
        try:
            header = _read(path, reader, on_batch, stats, on_slice, on_range if reader.plain_file else None)
        except RecursionError:  # msgspec's depth limit: 100k nested [ or {
            raise BadInputError(f"{path}: not a trace (JSON nested too deeply to read)") from None
        finally:
            reader.close()
    if stats.events == 0 and stats.not_events:
        raise BadInputError(f"{path}: not a trace (`traceEvents` holds no event objects)")
    return header, stats


def _read(
    path: Path,
    reader: _BlockReader,
    on_batch: Callable[[list[TraceEvent]], None],
    stats: StreamStats,
    on_slice: Callable[[bytes], None] | None = None,
    on_range: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    buf = bytearray()
    header: bytes | None = None
    bare = False  # a bare JSON array of events (``[{...}, ...]``), a valid Chrome trace form
    searched = 0  # bytes of ``buf`` already searched for the key (so the search is linear)
    failed_cut_at = 0  # buffer length at which the last cut attempt failed
    lead = 0  # 1 once ``buf[0]`` is the byte before the first event (see _cut_and_decode): the ``[`` or a separator
    checked = False
    probed = 0  # events of a bare array looked at so far (the first 100, across batches)

    def not_events() -> BadInputError:
        return BadInputError(f"{path}: not a trace (a JSON array, but not of trace events)")

    def emit(events: list[TraceEvent]) -> None:
        # A bare array is a trace when one of its first 100 elements has a ph or name. They may
        # arrive over several batches (small slices), so the verdict waits for 100 or the end:
        # the sliced read must accept exactly what the whole read accepts.
        nonlocal checked, probed
        if bare and not checked and events:
            head = events[: 100 - probed]
            probed += len(head)
            if any(ev.ph is not None or ev.name is not None for ev in head):
                checked = True
            elif probed >= 100:
                raise not_events()
        stats.events += len(events)
        on_batch(events)

    for block in reader.blocks():
        stats.json_bytes += len(block)
        buf += block
        if stats.json_bytes == len(block) and buf.startswith(_UTF8_BOM):  # saved by a Windows editor
            del buf[: len(_UTF8_BOM)]
        if header is None:
            first = _FIRST_BYTE.search(buf)
            if first is not None and buf[first.start()] == ord("["):
                header, bare, on_slice = b"{", True, None  # the consumer decodes it: it checks the events
                del buf[: first.start()]
                lead = 1
            else:
                key_at, key_end, searched = _find_key(buf, searched)
                if key_end is None:
                    if len(buf) > HEADER_LIMIT:
                        raise BadInputError(
                            f"{path}: not a trace (no `traceEvents` list in the first {HEADER_LIMIT >> 20} MB)"
                        )
                    continue
                header = bytes(buf[:key_at])
                if not header.lstrip().startswith(b"{"):
                    raise BadInputError(f"{path}: not a trace (JSON with no top-level object)")
                lead = 1 if on_slice is None else 0
                del buf[: key_end - lead]
        if len(buf) - lead > PENDING_LIMIT:
            raise BadInputError(
                f"{path}: not a trace ({PENDING_LIMIT >> 20} MB inside `traceEvents` without the end of an event)"
            )
        if on_slice is not None:
            if len(buf) < PARALLEL_SLICE_BYTES:
                continue
            boundary = _last_boundary(buf)
            if boundary is not None:
                if on_range is not None:  # ``buf`` holds the file's bytes up to those read so far
                    start = stats.json_bytes - len(buf)
                    on_range(start, start + boundary + 1)
                else:
                    on_slice(_wrap(buf, boundary + 1, b"]}"))
                del buf[: buf.index(b"{", boundary + 1)]
            continue
        if len(buf) - lead < SLICE_BYTES or len(buf) < failed_cut_at + SLICE_BYTES // 2:
            continue
        cut = _cut_and_decode(buf, stats)
        if cut is None:
            failed_cut_at = len(buf)
            continue
        events, consumed = cut
        del cut
        failed_cut_at = 0
        emit(events)
        del events  # and with them the views of ``buf`` their raw texts hold, before ``buf`` is resized
        buf = _drop_front(buf, consumed)

    buf = _drop_front(buf, lead)
    if header is None:
        return _decode_whole_without_key(path, bytes(buf), emit, stats)
    if bare:
        tail = bytes(buf).strip()
        if not tail.endswith(b"]"):  # the Chrome format allows an unterminated array
            tail = tail.rstrip(b", \n\r\t") + b"]"
        emit(_decode_piece(b'{"traceEvents":[' + tail + b"}", path, stats).traceEvents)
        if not checked and probed:
            raise not_events()
        return {}
    return _read_tail(path, header, buf, emit, stats)


def _read_tail(
    path: Path, header: bytes, buf: bytearray, emit: Callable[[list[TraceEvent]], None], stats: StreamStats
) -> dict[str, Any]:
    """Decode the rest of ``traceEvents`` after the last cut (and the keys after it), then the header."""
    tail_doc = _decode_piece(_wrap(buf, len(buf), b""), path, stats)
    emit(tail_doc.traceEvents)
    head_doc = _decode_piece(header + b'"traceEvents":[]}', path, stats)
    meta = _header_fields(head_doc)
    meta.update({k: v for k, v in _header_fields(tail_doc).items() if v is not None})
    return meta


class _Plan(msgspec.Struct):
    """Where the streaming read of a plain file would cut it, found from windows around each cut."""

    size: int
    header: bytes
    ranges: list[tuple[int, int]]
    tail_start: int


PLAN_HEADER_BLOCKS = 4
"""Blocks read for the header before the planned read gives up (Kineto's header is a few KB)."""


def _plan_ranges(path: Path) -> _Plan | None:
    """The slices :func:`_read` would hand to ``on_range`` for this plain file, without reading their bytes.

    :func:`_read` reads the whole file in blocks only to find the cuts: the last event boundary
    in the last MB of the buffer each time the buffer holds :data:`PARALLEL_SLICE_BYTES` at a
    block's end. The same cuts follow from the file's size and a ``pread`` of the last 64 KB
    (up to 1 MB, as :func:`_last_boundaries` searches) before each such block end. None
    (read the file as before: the same errors, the same cuts) for anything else: gzip, a bare
    array, no ``traceEvents`` in the first blocks, a bad header, no boundary in a window, a
    read error, a file shorter than its size.
    """
    block, slice_bytes = BLOCK_BYTES, PARALLEL_SLICE_BYTES
    try:
        with path.open("rb") as fh:
            fd = fh.fileno()
            size = os.fstat(fd).st_size
            buf = bytearray()
            header_at = None
            searched = 0
            end = 0
            while header_at is None:
                if end >= size or end >= PLAN_HEADER_BLOCKS * block:
                    return None
                piece = os.pread(fd, block, end)
                if len(piece) != min(block, size - end):
                    return None
                end += len(piece)
                buf += piece
                if end == len(piece):
                    if buf.startswith(_GZIP_MAGIC):
                        return None
                    if buf.startswith(_UTF8_BOM):
                        del buf[: len(_UTF8_BOM)]
                first = _FIRST_BYTE.search(buf)
                if first is not None and buf[first.start()] == ord("["):
                    return None
                key_at, key_end, searched = _find_key(buf, searched)
                if key_end is not None:
                    header_at = key_at
                    header = bytes(buf[:key_at])
                    if not header.lstrip().startswith(b"{"):
                        return None
                    start = end - (len(buf) - key_end)
            ranges = []
            while True:
                if end - start > PENDING_LIMIT:
                    return None
                if end - start >= slice_bytes:
                    cut = _window_cut(fd, start, end)
                    if cut is None and end - start > _BOUNDARY_WINDOW + slice_bytes:
                        return None  # an event of over a MB: rare, read as before
                    if cut is not None:
                        boundary, next_open = cut
                        ranges.append((start, boundary + 1))
                        start = next_open
                if end >= size:
                    break
                end = min(end + block, size)
    except OSError:
        return None
    return _Plan(size=size, header=header, ranges=ranges, tail_start=start)


def _window_cut(fd: int, start: int, end: int) -> tuple[int, int] | None:
    """(``}`` of the last event boundary in the file's bytes ``start:end``, the ``{`` after it), as
    :func:`_last_boundaries` finds it in a buffer holding those bytes, or None."""
    limit = max(start, end - _BOUNDARY_WINDOW)
    span = 1 << 16
    while True:
        lo = max(limit, end - span)
        window = os.pread(fd, end - lo, lo)
        if len(window) != end - lo:
            raise OSError("short read")
        found = list(_EVENT_BOUNDARY.finditer(window))
        if found:
            return lo + found[-1].start(), lo + found[-1].end() - 1
        if lo == limit:
            return None
        span *= 2


def _read_planned(
    path: Path,
    plan: _Plan,
    on_batch: Callable[[list[TraceEvent]], None],
    on_progress: ProgressCallback | None,
    on_range: Callable[[int, int], None],
    stats: StreamStats,
) -> dict[str, Any]:
    """:func:`_read` of a plain file by its plan: each slice to ``on_range``, then the tail and header here."""
    for start, end in plan.ranges:
        on_range(start, end)
        if on_progress is not None:
            on_progress(end, plan.size)
    with path.open("rb") as fh:
        tail = os.pread(fh.fileno(), plan.size - plan.tail_start, plan.tail_start)
    if len(tail) != plan.size - plan.tail_start:
        raise OSError(f"{path}: shorter than when it was cut")

    def emit(events: list[TraceEvent]) -> None:
        stats.events += len(events)
        on_batch(events)

    header = _read_tail(path, plan.header, bytearray(tail), emit, stats)
    if on_progress is not None:
        on_progress(plan.size, plan.size)
    return header


def _find_key(buf: bytearray, searched: int) -> tuple[int, int | None, int]:
    """Start and end of the first ``"traceEvents" : [`` in ``buf`` (end ``None``: not there yet), and how far searched.

    Only bytes not searched before are scanned (plus the overlap a key can straddle):
    searching the whole buffer again per block was quadratic in the size of a file without the key.
    """
    pos = buf.find(_KEY, max(0, searched - len(_KEY) + 1))
    while pos != -1:
        after = pos + len(_KEY)
        match = _AFTER_KEY.match(buf, after)
        if match is not None:
            return pos, match.end(), len(buf)
        if _AFTER_KEY_SO_FAR.fullmatch(buf, after) is not None:  # ``"traceEvents" :`` cut at the block end
            return pos, None, pos
        pos = buf.find(_KEY, pos + 1)
    return -1, None, len(buf)


def _wrap(buf: bytearray, end: int, close: bytes, start: int = 0) -> bytes:
    """``{"traceEvents":[`` + ``buf[start:end]`` + ``close`` in one copy.

    ``bytes(buf[:end])`` copies twice and ``+`` once more: ~13 ms per 16 MB slice on a
    2-core VM, against ~1.5 ms here. The view is released before ``buf`` is resized.
    """
    with memoryview(buf) as view, view[start:end] as head:
        return b"".join((b'{"traceEvents":[', head, close))


def read_range_into(path: Path, start: int, end: int, head: bytes, tail: bytes) -> bytearray:
    """``head`` + the file's bytes ``start:end`` + ``tail`` (``{"traceEvents":[`` and ``]}``: a slice handed
    over by ``on_range``) in one writable buffer.

    The bytes are read straight into it (pread and a join copied them once more) and a worker decodes it in
    place (:func:`mlprof.trace.parallel._build_in_pieces`). Raises :class:`OSError` if the file no longer has
    those bytes (the caller falls back to a plain read).
    """
    size = end - start
    buf = bytearray(len(head) + size + len(tail))
    buf[: len(head)] = head
    buf[len(head) + size :] = tail
    with path.open("rb", buffering=0) as fh, memoryview(buf) as view:
        at = 0
        fh.seek(start)
        while at < size:
            got = fh.readinto(view[len(head) + at : len(head) + size])
            if not got:
                raise OSError(f"{path}: shorter than when it was cut")
            at += got
    return buf


def _last_boundary(buf: bytearray) -> int | None:
    """Index of the ``}`` ending the last event that is followed by ``, {`` (textual guess)."""
    found = _last_boundaries(buf, 1)
    return found[-1] if found else None


_BOUNDARY_WINDOW = 1 << 20
"""How far back from the end of the buffer a cut is looked for."""


def _last_boundaries(buf: bytearray, count: int) -> list[int]:
    """Starts of the last ``count`` event boundaries in the last :data:`_BOUNDARY_WINDOW` bytes, in order.

    The tail is searched first (64 KB, doubling up to the window) and in place: scanning
    the whole window per cut, on a copy, was ~10% of the reader's time. Boundaries cannot
    overlap (each starts with ``}`` and ends with ``{``), so the last ``count`` found in a
    tail are the last ``count`` of the whole window.
    """
    limit = max(0, len(buf) - _BOUNDARY_WINDOW)
    span = 1 << 16
    while True:
        start = max(limit, len(buf) - span)
        found = [m.start() for m in _EVENT_BOUNDARY.finditer(buf, start)]
        if len(found) >= count or start == limit:
            return found[-count:]
        span *= 2


def _cut_and_decode(buf: bytearray, stats: StreamStats) -> tuple[list[TraceEvent], int] | None:
    """Decode the longest run of events at the start of ``buf[1:]`` that ends at an event boundary.

    ``buf[0]`` is the byte before the first event (the array's ``[``, or the comma or white space after
    the event cut before) and is not read. Returns the events and how many bytes to drop so that ``buf``
    starts the same way again (at the byte before the next event), or None if no boundary cuts a
    decodable run (a boundary's text inside a string).
    """
    for boundary in reversed(_last_boundaries(buf, 3)):
        events = _decode_in_place(buf, boundary + 1, stats)
        if events is None:  # bad UTF-8, odd types or not JSON: as a copy, as always
            piece = _wrap(buf, boundary + 1, b"]}", start=1)
            try:
                doc = decode_slice(piece, stats)
            except msgspec.ValidationError:
                # Well-formed so far, but an event has unexpected types: keep the slice if it
                # is well-formed JSON, so one odd event does not stop the streaming.
                try:
                    doc = decode_slice_leniently(piece, stats)
                except msgspec.DecodeError:
                    continue
            except msgspec.DecodeError:
                continue
            events = doc.traceEvents
        # Skip the comma and whitespace so that the byte before the next "{" is the first left.
        return events, buf.index(b"{", boundary + 1) - 1
    return None


_EVENTS_DECODER = msgspec.json.Decoder(list[TraceEvent])
_LEFT, _RIGHT = ord("["), ord("]")


def decode_in_place(buf: bytearray, before: int, after: int) -> list[TraceEvent] | None:
    """The events between ``buf[before]`` and ``buf[after]`` decoded where they lie, or None where they do not
    decode so (invalid UTF-8, odd types, not JSON, nested too deeply: the caller decodes a copy its usual way).

    ``[`` is written over ``buf[before]`` and ``]`` over ``buf[after]`` (the bytes around the events: a
    boundary's comma or white space, the array's bracket), both put back after the decode: ``[X]`` decodes
    where ``{"traceEvents":[X]}`` does, to the same events, without the copy into that document (~0.1 s and
    its page faults per 217 MB). The events' raw texts (``ts``, ``dur``) are views of ``buf`` until they are
    freed: ``buf`` cannot be resized before. The sequential reader (:func:`_cut_and_decode`) and the workers
    (:func:`mlprof.trace.parallel._build_in_pieces`) decode so.
    """
    saved = buf[before], buf[after]
    buf[before], buf[after] = _LEFT, _RIGHT
    view = memoryview(buf)  # not released by hand: the events' raw texts hold views of it until they are freed
    try:
        events: list[TraceEvent] = _EVENTS_DECODER.decode(view[before : after + 1])
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
    finally:
        buf[before], buf[after] = saved
        del view
    return events


def _decode_in_place(buf: bytearray, end: int, stats: StreamStats) -> list[TraceEvent] | None:
    """:func:`decode_in_place` of the events of ``buf[1:end]`` (the sequential reader's buffer: its first byte
    is the one before the first event), noting invalid UTF-8 in them as :func:`decode_slice` does."""
    events = decode_in_place(buf, 0, end)
    if events is not None and not buf.isascii() and not _utf8_view(buf, 1, end):
        stats.repaired_utf8 = True  # invalid UTF-8 anywhere in the run, also where the decoder skipped it
    return events


def _utf8_view(buf: bytearray, start: int, end: int) -> bool:
    """Whether ``buf[start:end]`` is valid UTF-8 (decoded from a view: no copy)."""
    with memoryview(buf) as view, view[start:end] as part:
        try:
            str(part, "utf-8")
        except UnicodeDecodeError:
            return False
    return True


def _drop_front(buf: bytearray, count: int) -> bytearray:
    """``buf`` without its first ``count`` bytes: in place, or a copy where something still holds a view of it
    (an ``on_batch`` that kept an event's raw text)."""
    if count:
        try:
            del buf[:count]
        except BufferError:
            return buf[count:]
    return buf


def decode_slice(piece: bytes, stats: StreamStats) -> TraceDocument:
    """A slice of the document decoded strictly, its invalid UTF-8 (if any) replaced with U+FFFD first.

    ``stats.repaired_utf8`` is set when the slice holds invalid UTF-8 anywhere, also where it lies only in what
    the decoder skips (an unknown key, an argument mlprof does not read), so that the note does not depend on
    how the file was cut into slices and pieces (the lenient path repairs the whole piece it is given).
    """
    try:
        doc = _DECODER.decode(piece)
    except (UnicodeDecodeError, msgspec.DecodeError):
        # msgspec < 0.19 raised UnicodeDecodeError on bad UTF-8 in a string; newer
        # releases raise DecodeError("Invalid UTF-8 ..."). Either way: repair and retry,
        # and let a slice that is still broken raise as it is.
        repaired = _repair_utf8(piece)
        if repaired is piece:
            raise
        stats.repaired_utf8 = True
        return _DECODER.decode(repaired)
    if not is_utf8(piece):
        stats.repaired_utf8 = True
    return doc


def is_utf8(data: bytes | bytearray) -> bool:
    """Whether ``data`` is valid UTF-8 (ASCII checked first, without a copy: traces are almost always ASCII)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_piece(piece: bytes, path: Path, stats: StreamStats) -> TraceDocument:
    try:
        try:
            return decode_slice(piece, stats)
        except msgspec.ValidationError:
            return decode_slice_leniently(piece, stats)
    except msgspec.ValidationError as exc:
        raise BadInputError(f"{path}: not a trace ({_short(exc)})") from None
    except msgspec.DecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON ({_short(exc)})") from None


class _LooseDocument(msgspec.Struct, gc=False):
    traceEvents: list[msgspec.Raw] = msgspec.field(default_factory=list)


class _LooseEvent(msgspec.Struct, gc=False):
    """Every field as raw JSON text, so no value can fail validation."""

    ph: msgspec.Raw = RAW_NONE
    cat: msgspec.Raw = RAW_NONE
    name: msgspec.Raw = RAW_NONE
    pid: msgspec.Raw = RAW_NONE
    tid: msgspec.Raw = RAW_NONE
    ts: msgspec.Raw = RAW_NONE
    dur: msgspec.Raw = RAW_NONE
    id: msgspec.Raw = RAW_NONE
    args: msgspec.Raw = RAW_NONE


_LOOSE_DOC_DECODER = msgspec.json.Decoder(_LooseDocument)
_HEADER_DECODER = msgspec.json.Decoder(dict[str, Any])
_EVENT_DECODER = msgspec.json.Decoder(TraceEvent)
_LOOSE_EVENT_DECODER = msgspec.json.Decoder(_LooseEvent)
_RAW_DICT_DECODER = msgspec.json.Decoder(dict[str, msgspec.Raw])
_SCALAR_DECODER = msgspec.json.Decoder(Scalar)


def decode_slice_leniently(piece: bytes, stats: StreamStats) -> TraceDocument:
    """Slow path for a slice whose events have unexpected types: keep what fits.

    Events are decoded one by one, each with the strict decoder first, so the good
    ones come out exactly as on the fast path (``ts``/``dur`` stay raw JSON text,
    never rounded through float64). Raises :class:`msgspec.DecodeError` if the
    piece is not well-formed JSON, :class:`msgspec.ValidationError` if its
    ``traceEvents`` is not a list.
    """
    repaired = _repair_utf8(piece)
    if repaired is not piece:
        stats.repaired_utf8 = True
    doc = _LOOSE_DOC_DECODER.decode(repaired)
    events = []
    for raw in doc.traceEvents:
        event = _event_from_raw(raw)
        if event is None:
            stats.not_events += 1
        else:
            events.append(event)
    try:
        obj = _HEADER_DECODER.decode(repaired)
        header = {k: obj.get(k) for k in HEADER_FIELDS}
    except msgspec.ValidationError:  # a header number out of range: keep the events
        header = {}
    return TraceDocument(traceEvents=events, **header)


def _scalar(raw: msgspec.Raw) -> Any:
    if not raw:
        return None
    try:
        return _SCALAR_DECODER.decode(raw)
    except msgspec.DecodeError:
        return None


_RAW_ARGS = frozenset(f.name for f in msgspec.structs.fields(EventArgs) if f.type is msgspec.Raw)
"""The ``args`` kept as raw JSON text (``Input Dims``): the lenient path keeps them so too, as the strict one does."""


def _event_from_raw(raw: msgspec.Raw) -> TraceEvent | None:
    try:
        return _EVENT_DECODER.decode(raw)
    except msgspec.ValidationError:
        pass
    try:
        loose = _LOOSE_EVENT_DECODER.decode(raw)
    except msgspec.ValidationError:  # not a JSON object
        return None
    args = None
    if loose.args:
        try:
            args_obj: dict[str, msgspec.Raw] | None = _RAW_DICT_DECODER.decode(loose.args)
        except msgspec.ValidationError:
            args_obj = None
        if args_obj is not None:
            fields: dict[str, Any] = {}
            for attr, key in zip(EventArgs.__struct_fields__, EventArgs.__struct_encode_fields__, strict=True):
                if key in args_obj:
                    fields[attr] = args_obj[key] if attr in _RAW_ARGS else _scalar(args_obj[key])
            args = EventArgs(**fields)
    return TraceEvent(
        ph=_scalar(loose.ph),
        cat=_scalar(loose.cat),
        name=_scalar(loose.name),
        pid=_scalar(loose.pid),
        tid=_scalar(loose.tid),
        ts=loose.ts,
        dur=loose.dur,
        id=_scalar(loose.id),
        args=args,
    )


def _decode_whole_without_key(
    path: Path, data: bytes, emit: Callable[[list[TraceEvent]], None], stats: StreamStats
) -> dict[str, Any]:
    """Files without a ``traceEvents`` key (bare arrays are streamed): not a trace."""
    stripped = data.strip()
    if not stripped:
        raise BadInputError(f"{path}: empty file")
    try:
        msgspec.json.decode(_repair_utf8(stripped))
    except msgspec.DecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON ({_short(exc)})") from None
    raise BadInputError(f"{path}: not a trace (valid JSON, but it has no `traceEvents` list)")


def _repair_utf8(data: bytes) -> bytes:
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")


def _header_fields(doc: TraceDocument) -> dict[str, Any]:
    return {k: getattr(doc, k) for k in HEADER_FIELDS}


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


__all__ = ["ProgressCallback", "StreamStats", "read_trace_events"]
