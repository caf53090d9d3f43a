"""Splice finding events into a copy of a Chrome/Kineto JSON trace; every original byte is kept.

The output is the input with the new events inserted after the last event of
``traceEvents`` (or of a bare top-level array of events): numbers Python could not
hold (ns-precision float timestamps, ids above int64), key order, whitespace and every
other top-level key stay as written (invalid UTF-8 becomes U+FFFD, so that the copy is
valid JSON). Nothing is held whole: where the kernels the arrows point at sit in the
file (their ``pid``/``tid`` exactly as written) is read with mlprof's streaming
reader, one slice at a time; then the input is copied in chunks (gunzipped and
gzipped on the fly) through :class:`~mlprof.annotate.splice.EventsSplicer`, which
finds the array's closing bracket by scanning JSON structure. Peak memory is one
chunk plus the reader's slice, so annotating costs no more memory than analysing.
The copy is written through :func:`mlprof.safe_write.open_output`: a temporary file
renamed into place (a failed write leaves nothing half-written), or a stream for a
character device or FIFO; the input is never opened for writing.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec
import numpy as np

from mlprof.annotate.events import KernelRef, finding_arrows, finding_events
from mlprof.annotate.splice import EventsSplicer, SpliceError
from mlprof.errors import BadInputError, UsageError
from mlprof.rules.base import Finding
from mlprof.safe_write import open_output, same_file
from mlprof.trace.jsonstream import read_trace_events
from mlprof.trace.model import Trace
from mlprof.trace.numbers import raw_us_to_ns
from mlprof.trace.schema import TraceEvent

_GPU_CATS = {"kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset", "mtia_ccp_events"}
MAX_PID = 2**31 - 1
COPY_CHUNK_BYTES = 4 << 20
GZIP_LEVEL = 6


@dataclass
class AnnotateResult:
    output: Path
    findings: int
    events_added: int
    flows: int
    notes: list[str] = field(default_factory=list)


def annotate_file(
    source: Path, output: Path, findings: list[Finding], trace: Trace, marks: list[str] | None = None
) -> AnnotateResult:
    """Write ``output``: ``source`` plus the findings as events (gzipped when ``output`` ends in ``.gz``).

    ``marks``: job-level notes for this rank's copy (``straggler: rank 7, ...``), drawn apart from the findings.
    """
    if same_file(source, output):
        raise UsageError(f"-o {output}: that is the input trace; mlprof never overwrites it, choose another file")
    arrows = finding_arrows(findings, trace)
    refs, pid, repaired_utf8 = _kernel_refs(source, trace, sorted({arrow.row for _, arrow in arrows}))
    added = finding_events(findings, trace, refs, pid, arrows, marks)
    notes = []
    if repaired_utf8:
        notes.append("the input has invalid UTF-8; the copy has U+FFFD in its place, so that it is valid JSON")
    _copy_with_events(source, output, msgspec.json.encode(added)[1:-1], repair_utf8=repaired_utf8)
    flows = sum(1 for e in added if e.get("ph") == "s")
    return AnnotateResult(output=output, findings=len(findings), events_added=len(added), flows=flows, notes=notes)


def _kernel_refs(source: Path, trace: Trace, rows: list[int]) -> tuple[dict[int, KernelRef], int, bool]:
    """pid/tid as written of the device events at these ``trace.gpu`` rows, a pid no event uses, and
    whether the reader met invalid UTF-8.

    A row is found in the file by its CUPTI correlation id; where several device events share one
    (the kernels of a CUDA graph launch), by its place among them in time.
    """
    gpu = trace.gpu
    corr_col = gpu["correlation"].to_numpy(np.int64) if len(gpu) else np.zeros(0, dtype=np.int64)
    device = (gpu["kind"] != "sync").to_numpy() if len(gpu) else np.zeros(0, dtype=bool)
    wanted: dict[int, list[tuple[int, int]]] = {}  # correlation -> (place among its device events, row)
    for row in rows:
        corr = int(corr_col[row])
        if corr >= 0:
            same = np.flatnonzero((corr_col == corr) & device)
            wanted.setdefault(corr, []).append((int(np.searchsorted(same, row)), row))
    found: dict[int, list[tuple[int, int, KernelRef]]] = {}
    pids: set[int] = set()
    seen = 0

    def on_batch(events: list[TraceEvent]) -> None:
        nonlocal seen
        for e in events:
            seen += 1
            if type(e.pid) is int:
                pids.add(e.pid)
            if e.args is None or e.cat not in _GPU_CATS or e.ph != "X":
                continue
            corr = e.args.correlation
            if type(corr) is int and corr in wanted:
                ts = int(raw_us_to_ns([bytes(e.ts)])[0])
                found.setdefault(corr, []).append((ts, seen, KernelRef(e.pid, e.tid)))

    _, stats = read_trace_events(source, on_batch)
    refs: dict[int, KernelRef] = {}
    for corr, places in wanted.items():
        events = sorted(found.get(corr, []), key=lambda t: (t[0], t[1]))
        for place, row in places:
            if events:
                refs[row] = events[min(place, len(events) - 1)][2]
    pid = max((p for p in pids if p < MAX_PID), default=0) + 1
    return refs, pid, stats.repaired_utf8


def _copy_with_events(source: Path, output: Path, extra: bytes, *, repair_utf8: bool = False) -> None:
    """Stream ``source`` into ``output`` with ``extra`` spliced in (a temporary file renamed into place, or a
    stream for ``/dev/null``-like outputs; see :mod:`mlprof.safe_write`).

    ``repair_utf8``: invalid UTF-8 is written as U+FFFD, so that the copy is valid JSON
    (RFC 8259 requires UTF-8); every other byte stays as written.
    """
    try:
        with open_output(output) as fh:
            sink: IO[bytes] | gzip.GzipFile = fh
            if output.name.endswith(".gz"):
                sink = gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=GZIP_LEVEL, mtime=0)
            splicer = EventsSplicer(sink.write, extra)
            chunks = _chunks(source)
            for chunk in _valid_utf8(chunks) if repair_utf8 else chunks:
                splicer.feed(chunk)
            splicer.finish()
            if sink is not fh:
                sink.close()
    except SpliceError as exc:
        raise BadInputError(f"{source}: {exc}; annotate writes Chrome/Kineto JSON traces") from None


def _valid_utf8(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks with each invalid UTF-8 sequence replaced by U+FFFD (a sequence split across chunks is kept)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for chunk in chunks:
        yield decoder.decode(chunk).encode("utf-8")
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail.encode("utf-8")


def _chunks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` in chunks of :data:`COPY_CHUNK_BYTES`."""
    try:
        with path.open("rb") as fh:
            stream: IO[bytes] | gzip.GzipFile = gzip.GzipFile(fileobj=fh) if fh.read(2) == b"\x1f\x8b" else fh
            fh.seek(0)
            while chunk := stream.read(COPY_CHUNK_BYTES):
                yield chunk
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise BadInputError(f"{path}: cannot read ({exc})") from None
