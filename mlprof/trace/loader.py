"""Entry point of the trace model: a path in, :class:`Trace` objects out.

Validates the path first so every bad input becomes one :class:`BadInputError` line,
picks the reader by content (gzip magic, JSON, SQLite), and fills :class:`TraceMeta`
from ``distributedInfo``/``deviceProperties`` or, failing that, the file name.
"""

from __future__ import annotations

import errno
import gc
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlprof.errors import BadInputError
from mlprof.trace.build import OLD_FORMAT_CATS, TableBuilder
from mlprof.trace.jsonstream import ProgressCallback, StreamStats, is_gzip, read_trace_events
from mlprof.trace.memory import keep_freed_memory, release_freed_memory
from mlprof.trace.model import DeviceInfo, Trace, TraceMeta
from mlprof.trace.nsys import REPORT_SUFFIXES as NSYS_REPORT_SUFFIXES
from mlprof.trace.nsys import load_nsys
from mlprof.trace.parallel import SliceFailed, default_workers, read_parallel
from mlprof.trace.sizes import PARALLEL_MIN_JSON_BYTES, expected_json_bytes
from mlprof.trace.steps import find_steps

TRACE_SUFFIXES = (".json", ".json.gz", ".gz")
_RANK_IN_NAME = re.compile(r"(?:rank|worker)[-_]?(\d+)", re.IGNORECASE)
_SQLITE_MAGIC = b"SQLite format 3\x00"


def load_trace(
    path: str | Path,
    *,
    on_progress: ProgressCallback | None = None,
    step_marker: str | None = None,
    workers: int | None = None,
) -> Trace:
    """Read one trace file (``.json``, ``.json.gz``, an Nsight Systems ``.sqlite`` export) into the columnar model.

    SQLite files (by their magic bytes) and ``.nsys-rep`` reports go to
    :func:`mlprof.trace.nsys.load_nsys`. Large JSON files are decoded by ``workers``
    processes (default: up to 4, one per core); ``workers=1`` reads in this process only.
    """
    path = Path(path)
    _check_file(path)
    with path.open("rb") as fh:
        magic = fh.read(16)
    if magic.startswith(_SQLITE_MAGIC) or path.name.endswith(NSYS_REPORT_SUFFIXES):
        return load_nsys(path, step_marker=step_marker)
    if magic.startswith(b"PK\x03\x04"):
        raise BadInputError(f"{path}: a zip archive, not a trace; unpack it first")
    return _load(path, lambda: _read_tables(path, on_progress, workers), step_marker)


def load_trace_bytes(data: bytes, name: str | Path, *, step_marker: str | None = None) -> Trace:
    """:func:`load_trace` of a Kineto JSON document held in memory (``name`` stands for its path)."""
    path = Path(name)

    def read() -> tuple[TableBuilder, dict[str, Any], StreamStats]:
        builder = TableBuilder()
        header, stats = read_trace_events(path, builder.add, data=data)
        return builder, header, stats

    return _load(path, read, step_marker)


def _load(
    path: Path, read: Callable[[], tuple[TableBuilder, dict[str, Any], StreamStats]], step_marker: str | None
) -> Trace:
    # Millions of short-lived objects, no cycles: generational GC passes only cost time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        builder, header, stats = read()
        tables = builder.finish()
    finally:
        if gc_was_enabled:
            gc.enable()
    meta = _meta(path, header, stats.file_bytes, stats.json_bytes, stats.events, builder)
    if stats.repaired_utf8:
        meta.notes.append("invalid UTF-8 in the file was replaced with U+FFFD")
    if builder.dropped_no_time:
        meta.notes.append(f"{builder.dropped_no_time} range events without a readable ts/dur were skipped")
    trace_end = _trace_end(tables)
    steps, source = find_steps(tables["host"], trace_end, step_marker)
    meta.step_source = source
    del builder
    release_freed_memory()  # the decoded events and column parts are freed: hand their pages back
    return Trace(meta=meta, steps=steps, **tables)


def _read_tables(
    path: Path, on_progress: ProgressCallback | None, workers: int | None
) -> tuple[TableBuilder, dict[str, Any], StreamStats]:
    from mlprof.trace import prefetch

    workers = default_workers() if workers is None else workers
    large = _expected_json_bytes(path) >= PARALLEL_MIN_JSON_BYTES
    if large:
        keep_freed_memory()  # its analysis reuses its freed memory instead of faulting it in again (trace.memory)
    read_ahead = prefetch.take(path, on_progress)  # the CLI's read-ahead process, if it read this file
    if read_ahead is not None:
        if on_progress is not None:
            on_progress(read_ahead[2].file_bytes, read_ahead[2].file_bytes)
        return read_ahead
    if workers > 1 and large:
        from concurrent.futures.process import BrokenProcessPool  # here: a small trace is read without a pool

        builder = TableBuilder()
        try:
            header, stats = read_parallel(path, builder, on_progress, workers)
            return builder, header, stats
        except (SliceFailed, BrokenProcessPool, OSError):
            # A textual cut was wrong, or no worker could be started: the sequential
            # reader validates every cut and reports real read errors itself.
            pass
    builder = TableBuilder()
    header, stats = read_trace_events(path, builder.add, on_progress)
    return builder, header, stats


def _expected_json_bytes(path: Path) -> int:
    return expected_json_bytes(path.stat().st_size, is_gzip(path))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError) as exc:  # name too long, embedded NUL ...
        raise BadInputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def _check_file(path: Path) -> None:
    import stat

    from mlprof.trace.path_errors import not_found, not_regular

    if not _exists(path):
        raise not_found(path)
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory; pass a trace file")
    try:
        st = path.stat()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(path, st.st_mode)
    size = st.st_size
    if size == 0:
        raise BadInputError(f"{path}: empty file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None


def _trace_end(tables: dict[str, Any]) -> int:
    ends = [int(tables[t]["end"].max()) for t in ("host", "gpu", "runtime") if len(tables[t])]
    return max(ends) if ends else 0


def _meta(
    path: Path, header: dict[str, Any], file_bytes: int, json_bytes: int, events: int, builder: TableBuilder
) -> TraceMeta:
    fmt = "kineto-2021" if builder.categories_seen & OLD_FORMAT_CATS else "kineto"
    meta = TraceMeta(path=str(path), format=fmt, file_bytes=file_bytes, json_bytes=json_bytes, num_events=events)
    dist = header.get("distributedInfo")
    if isinstance(dist, dict):
        meta.rank = _int(dist.get("rank"))
        meta.world_size = _int(dist.get("world_size"))
        backend = dist.get("backend")
        meta.backend = backend if isinstance(backend, str) else None
        if meta.rank is not None:
            meta.rank_source = "distributedInfo"
    if meta.rank is None:
        match = _RANK_IN_NAME.search(path.name)
        if match:
            meta.rank = int(match.group(1))
            meta.rank_source = "file name"
    props = header.get("deviceProperties")
    if isinstance(props, list):
        for p in props:
            if not isinstance(p, dict):
                continue
            major, minor = p.get("computeMajor"), p.get("computeMinor")
            meta.devices.append(
                DeviceInfo(
                    id=_int(p.get("id")) or 0,
                    name=str(p.get("name", "unknown")),
                    total_memory_bytes=_int(p.get("totalGlobalMem")),
                    num_sms=_int(p.get("numSms")),
                    compute_capability=f"{major}.{minor}" if major is not None else None,
                )
            )
    meta.base_time_ns = _int(header.get("baseTimeNanoseconds"))
    for key in (
        "cuda_runtime_version",
        "cuda_driver_version",
        "hip_runtime_version",
        "with_stack",
        "profile_memory",
    ):
        if header.get(key) is not None:
            meta.extra[key] = header[key]
    return meta


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


MAX_RANK = 2**31 - 1
"""Largest rank a job's trace may have (torch.distributed ranks are C ints)."""


def check_rank(meta: TraceMeta) -> None:
    """BadInputError unless a job's rank is a process index (a huge one overflowed the int64 cross-rank tables)."""
    if meta.rank is not None and not 0 <= meta.rank <= MAX_RANK:
        rank = str(meta.rank)
        shown = rank if len(rank) <= 24 else rank[:20] + "..."
        raise BadInputError(f"{meta.path}: rank {shown} ({meta.rank_source}) is not a process rank (0 to {MAX_RANK})")


RUN_FOLDER_SIDE_FILES = re.compile(r"^(meta\.json|manifest\.json|counters[^/]*)$")
"""Files an ``mlprof.profile`` run folder holds beside its traces (run facts, counter samples)."""


def trace_files_in(directory: Path) -> list[Path]:
    """Trace files directly inside ``directory`` (not recursive), sorted by name.

    In a run folder written by ``mlprof.profile`` the traces are ``trace.rank<N>.json.gz``;
    ``meta.json`` and counter files beside them are not traces.
    """
    return [directory / name for name in trace_names_in(directory)]


def trace_names_in(directory: Path) -> list[str]:
    """The names of :func:`trace_files_in`, sorted (by name, as the paths of one folder sort), read without a
    ``Path`` a file: a job's client lists its 1,024 rank files, and the ``Path`` objects and their sort made a
    transient ~0.35 MB that grew its peak by ~0.25 MB at 1,024 ranks."""
    with os.scandir(directory) as entries:
        names = [
            entry.name
            for entry in entries
            if entry.name.endswith(TRACE_SUFFIXES)
            and not entry.name.startswith(".")
            and not RUN_FOLDER_SIDE_FILES.match(entry.name)
            and _is_file(entry)
        ]
    names.sort()
    return names


_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)
"""Errors :meth:`pathlib.Path.is_file` takes for "not a file" (any other is raised)."""


def _is_file(entry: os.DirEntry[str]) -> bool:
    """``entry`` is a file or a link to one, as :meth:`pathlib.Path.is_file` tells."""
    try:
        return entry.is_file()
    except OSError as exc:
        if exc.errno in _MISSING:
            return False
        raise


def job_files(path: Path) -> list[Path]:
    """The trace files ``path`` names: itself, or the rank traces of a directory; bad paths are one error."""
    names = _job_names(path)
    return [path] if names is None else [path / name for name in names]


def job_paths(path: Path) -> list[str]:
    """:func:`job_files` as strings (``str(path / name)``), without a ``Path`` a file (:func:`trace_names_in`)."""
    names = _job_names(path)
    if names is None:
        return [str(path)]
    prefix = str(path / "x")[:-1]  # the folder as a path joined to a name prints it ("" for ".")
    for k, name in enumerate(names):
        names[k] = prefix + name  # in place: the names and the paths are not both held
    return names


def _job_names(path: Path) -> list[str] | None:
    """The trace names in directory ``path``, None where ``path`` is a file; bad paths are one error."""
    if not _exists(path):
        from mlprof.trace.path_errors import not_found

        raise not_found(path)
    if not path.is_dir():
        return None
    try:
        names = trace_names_in(path)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot list the directory ({exc.strerror})") from None
    if not names:
        raise BadInputError(f"{path}: directory holds no trace files (*.json, *.json.gz)")
    return names


def load_job(
    path: str | Path,
    *,
    on_progress: ProgressCallback | None = None,
    step_marker: str | None = None,
    workers: int | None = None,
) -> list[Trace]:
    """A file is one rank; a directory is one job of per-rank trace files (``workers``: see :func:`load_trace`)."""
    path = Path(path)
    files = job_files(path)
    if not path.is_dir():
        return [load_trace(path, on_progress=on_progress, step_marker=step_marker, workers=workers)]
    traces = [load_trace(f, on_progress=on_progress, step_marker=step_marker, workers=workers) for f in files]
    seen: dict[int, str] = {}
    for i, tr in enumerate(traces):
        if tr.meta.rank is None:
            if len(traces) == 1:
                tr.meta.rank = 0
                tr.meta.rank_source = "single file"
                continue
            raise BadInputError(
                f"{tr.meta.path}: cannot tell its rank (no distributedInfo.rank); name rank files like rank-3.json.gz"
            )
        check_rank(tr.meta)
        if tr.meta.rank in seen:
            raise BadInputError(f"{path}: rank {tr.meta.rank} appears twice ({seen[tr.meta.rank]} and {tr.meta.path})")
        seen[tr.meta.rank] = tr.meta.path
        del i
    return sorted(traces, key=lambda t: t.meta.rank if t.meta.rank is not None else -1)


__all__ = [
    "check_rank",
    "job_files",
    "job_paths",
    "load_job",
    "load_trace",
    "load_trace_bytes",
    "trace_files_in",
    "trace_names_in",
]
