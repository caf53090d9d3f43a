"""Splice finding events into a copy of a Chrome/Kineto JSON trace, byte-for-byte otherwise.

The top-level object is decoded with every value kept as raw JSON text
(``msgspec.Raw``), so numbers Python could not hold (ns-precision float timestamps,
ids above int64), key order and formatting of the original events survive; only the
``traceEvents`` array gets the new events appended before its closing bracket. The
copy is written to a temporary file next to the output and renamed into place, so a
failed write leaves nothing half-written; the input is never opened for writing.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from mlprof.annotate.events import KernelRef, finding_events
from mlprof.errors import BadInputError, MlprofError, UsageError
from mlprof.rules.base import Finding
from mlprof.trace.model import Trace

_GPU_CATS = {"kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset", "mtia_ccp_events"}


class _Args(msgspec.Struct):
    correlation: Any = None


class _Event(msgspec.Struct):
    """Only the fields annotate needs; the C decoder skips the rest (large ``Input Dims``, ids above int64)."""

    ph: Any = None
    cat: Any = None
    pid: Any = None
    tid: Any = None
    args: _Args | None = None


class _LooseEvent(msgspec.Struct):
    ph: Any = None
    cat: Any = None
    pid: Any = None
    tid: Any = None
    args: Any = None


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
        top = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    except msgspec.DecodeError as exc:
        if "utf-8" not in str(exc).lower():
            raise BadInputError(f"{source}: not a JSON trace object ({exc})") from None
        data = data.decode("utf-8", errors="replace").encode()
        top = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
        notes.append("invalid UTF-8 in the input was replaced with U+FFFD in the copy")
    raw_events = top.get("traceEvents")
    if raw_events is None:
        raise BadInputError(f"{source}: no traceEvents array; annotate writes Chrome/Kineto JSON traces")
    try:
        events: list[Any] = msgspec.json.decode(bytes(raw_events), type=list[_Event])
    except msgspec.ValidationError:
        try:  # an event whose args is not an object: read those loosely
            events = msgspec.json.decode(bytes(raw_events), type=list[_LooseEvent])
        except msgspec.ValidationError as exc:
            raise BadInputError(f"{source}: traceEvents is not a list of events ({exc})") from None
    refs, pid = _kernel_refs(events)
    added = finding_events(findings, trace, refs, pid)
    top["traceEvents"] = msgspec.Raw(_append(bytes(raw_events), msgspec.json.encode(added)))
    body = msgspec.json.encode(top)
    _write(output, body)
    flows = sum(1 for e in added if e.get("ph") == "s")
    return AnnotateResult(output=output, findings=len(findings), events_added=len(added), flows=flows, notes=notes)


def _kernel_refs(events: list[Any]) -> tuple[dict[int, KernelRef], int]:
    """Correlation id -> pid/tid of each device event; and a pid no event uses."""
    refs: dict[int, KernelRef] = {}
    pids: set[int] = set()
    for e in events:
        if isinstance(e.pid, int):
            pids.add(e.pid)
        if e.ph != "X" or e.cat not in _GPU_CATS or e.args is None:
            continue
        corr = e.args.get("correlation") if isinstance(e.args, dict) else getattr(e.args, "correlation", None)
        if isinstance(corr, int) and not isinstance(corr, bool):
            refs.setdefault(corr, KernelRef(e.pid, e.tid))
    pid = max((p for p in pids if p < 2**31 - 1), default=0) + 1
    return refs, pid


def _append(array: bytes, extra: bytes) -> bytes:
    """``[a, b]`` + ``[c, d]`` -> ``[a, b, c, d]`` without touching ``a, b``."""
    body = array.rstrip()
    if not body.endswith(b"]") or not extra.startswith(b"["):
        raise BadInputError("traceEvents is not a JSON array")
    inner = body[:-1].rstrip()
    glue = b"" if inner.endswith(b"[") else b","
    return inner + glue + extra[1:-1] + b"]"


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


def _write(output: Path, body: bytes) -> None:
    folder = output.parent if str(output.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise MlprofError(f"{output}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if output.name.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=6, mtime=0) as gz:
                    gz.write(body)
            else:
                fh.write(body)
        os.replace(tmp, output)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MlprofError(f"{output}: cannot write ({exc.strerror})") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False
