"""Splice finding events into a copy of a Chrome/Kineto JSON trace; every original byte is kept.

The output is the input with the new events inserted before the closing bracket of
``traceEvents``: numbers Python could not hold (ns-precision float timestamps, ids
above int64), key order, whitespace and every other top-level key stay as written.
The array is located by decoding the top-level object with its values as raw JSON
(``msgspec.Raw``, zero-copy views of the input), so a ``"traceEvents"`` inside a
string cannot fool it. Where the kernels the arrows point at sit in the file (their
``pid``/``tid`` exactly as written) is read with mlprof's streaming reader, one slice
at a time. Peak memory is about one decompressed copy of the input. The copy is
written to a temporary file next to the output and renamed into place, so a failed
write leaves nothing half-written; the input is never opened for writing.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec
import numpy as np

from mlprof.annotate.events import KernelRef, finding_events, target_correlations
from mlprof.errors import BadInputError, MlprofError, UsageError
from mlprof.rules.base import Finding
from mlprof.trace.jsonstream import read_trace_events
from mlprof.trace.model import Trace
from mlprof.trace.schema import TraceEvent

_GPU_CATS = {"kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset", "mtia_ccp_events"}
_SPACE = b" \t\r\n"
MAX_PID = 2**31 - 1


@dataclass
class AnnotateResult:
    output: Path
    findings: int
    events_added: int
    flows: int
    notes: list[str] = field(default_factory=list)


def annotate_file(source: Path, output: Path, findings: list[Finding], trace: Trace) -> AnnotateResult:
    """Write ``output``: ``source`` plus the findings as events (gzipped when ``output`` ends in ``.gz``)."""
    if _same_file(source, output):
        raise UsageError(f"-o {output}: that is the input trace; mlprof never overwrites it, choose another file")
    data = _read(source)
    notes: list[str] = []
    try:
        start, close = _events_array(data, source)
    except UnicodeError:
        data = data.decode("utf-8", errors="replace").encode()
        start, close = _events_array(data, source)
        notes.append("invalid UTF-8 in the input was replaced with U+FFFD in the copy")
    refs, pid = _kernel_refs(source, target_correlations(findings, trace))
    added = finding_events(findings, trace, refs, pid)
    inner_end = close
    while inner_end > start + 1 and data[inner_end - 1] in _SPACE:
        inner_end -= 1
    glue = b"" if inner_end == start + 1 else b","
    extra = msgspec.json.encode(added)[1:-1]
    view = memoryview(data)
    _write(output, [view[:inner_end], glue if extra else b"", extra, view[close:]])
    flows = sum(1 for e in added if e.get("ph") == "s")
    return AnnotateResult(output=output, findings=len(findings), events_added=len(added), flows=flows, notes=notes)


def _events_array(data: bytes, source: Path) -> tuple[int, int]:
    """Offsets of the ``[`` and the ``]`` of the top-level ``traceEvents`` array."""
    try:
        top = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    except msgspec.DecodeError as exc:
        if "utf-8" in str(exc).lower():
            raise UnicodeError(str(exc)) from None
        raise BadInputError(f"{source}: not a JSON trace object ({exc})") from None
    raw = top.get("traceEvents")
    if raw is None:
        raise BadInputError(f"{source}: no traceEvents array; annotate writes Chrome/Kineto JSON traces")
    size = len(memoryview(raw))
    start = int(np.frombuffer(raw, dtype=np.uint8).ctypes.data - np.frombuffer(data, dtype=np.uint8).ctypes.data)
    if not (0 <= start <= len(data) - size and data[start : start + size] == bytes(raw)):
        raise BadInputError(f"{source}: cannot locate traceEvents in the file")  # pragma: no cover (Raw is a view)
    if data[start : start + 1] != b"[" or data[start + size - 1 : start + size] != b"]":
        raise BadInputError(f"{source}: traceEvents is not a JSON array")
    return start, start + size - 1


def _kernel_refs(source: Path, wanted: set[int]) -> tuple[dict[int, KernelRef], int]:
    """pid/tid as written of the device events with the wanted correlation ids; and a pid no event uses."""
    refs: dict[int, KernelRef] = {}
    pids: set[int] = set()

    def on_batch(events: list[TraceEvent]) -> None:
        for e in events:
            if type(e.pid) is int:
                pids.add(e.pid)
            if e.args is None or e.cat not in _GPU_CATS or e.ph != "X":
                continue
            corr = e.args.correlation
            if type(corr) is int and corr in wanted and corr not in refs:
                refs[corr] = KernelRef(e.pid, e.tid)

    read_trace_events(source, on_batch)
    pid = max((p for p in pids if p < MAX_PID), default=0) + 1
    return refs, pid


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == b"\x1f\x8b":
                return gzip.GzipFile(fileobj=fh).read()
            return fh.read()
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except (OSError, EOFError) as exc:
        raise BadInputError(f"{path}: cannot read ({exc})") from None


def _write(output: Path, parts: list[bytes | memoryview]) -> None:
    folder = output.parent if str(output.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise MlprofError(f"{output}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            sink: IO[bytes] | gzip.GzipFile = fh
            if output.name.endswith(".gz"):
                sink = gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=6, mtime=0)
            for part in parts:
                sink.write(part)
            if sink is not fh:
                sink.close()
        os.replace(tmp, output)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MlprofError(f"{output}: cannot write ({exc.strerror})") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False
