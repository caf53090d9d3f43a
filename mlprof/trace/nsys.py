"""Nsight Systems SQLite exports (``nsys export --type sqlite``) -> the same :class:`Trace` model.

Kineto and Nsight Systems both record CUPTI activity, so the tables line up: a
kernel is a kernel, ``cudaLaunchKernel`` is a runtime call, an NVTX range is a host
range. This reader maps the export onto the Kineto conventions (kernel names are
the demangled names, memcpy names read ``Memcpy HtoD (Pageable -> Device)``, runtime
names lose nsys' ``_v7000`` API-version suffix) so every analyzer and rule works
on both without knowing where a trace came from.

What nsys does differently, and how it is handled:

* Times are ns since the session start; ``TARGET_INFO_SESSION_START_TIME.utcEpochNs``
  moves them onto the epoch (a note says so when that table is missing).
* Strings are ids into ``StringIds``; threads are ``globalTid`` =
  ``(pid << 24) | tid`` (plus a host id above bit 48).
* Tables exist only for what was traced, and columns changed between versions, so
  every table and column is looked up (``PRAGMA table_info``) before it is read.
* Enum values (memory kinds, sync types, NVTX event types) are read from the file's
  own ``ENUM_*`` tables when present: nsys' memory-kind numbering is not CUPTI's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlprof.errors import BadInputError
from mlprof.trace.build import GPU, HOST, RUNTIME, TableBuilder
from mlprof.trace.model import DeviceInfo, Trace, TraceMeta
from mlprof.trace.steps import find_steps

if TYPE_CHECKING:  # imported where an export is opened: the JSON reader's path imports this module
    import sqlite3

SQLITE_MAGIC = b"SQLite format 3\x00"
REPORT_SUFFIXES = (".nsys-rep", ".qdrep")

_TID_MASK = 0xFFFFFF
_NO_ID = 0xFFFFFFFF  # CUPTI's "none" for stream/event ids, stored unsigned
_API_VERSION = re.compile(r"_v\d{4,}$")
"""nsys appends the API version to runtime names (``cudaLaunchKernel_v7000``); Kineto does not."""
_EMIT_NVTX_ARGS = re.compile(r", (?:op_id|seq|sizes|input_op_ids) = .*$", re.DOTALL)
"""``torch.autograd.profiler.emit_nvtx`` appends ``, seq = N, sizes = [...]`` to op names."""

EVENT_TABLES: tuple[str, ...] = (
    "CUPTI_ACTIVITY_KIND_KERNEL",
    "CUPTI_ACTIVITY_KIND_MEMCPY",
    "CUPTI_ACTIVITY_KIND_MEMSET",
    "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION",
    "CUPTI_ACTIVITY_KIND_RUNTIME",
    "NVTX_EVENTS",
    "OSRT_API",
)

# Fallback enums, as written by nsys 2024.5 (schema 3.13) in its ENUM_* tables.
MEMCPY_KINDS: dict[int, str] = {
    0: "Unknown",
    1: "HtoD",
    2: "DtoH",
    3: "HtoA",
    4: "AtoH",
    5: "AtoA",
    6: "AtoD",
    7: "DtoA",
    8: "DtoD",
    9: "HtoH",
    10: "PtoP",
    11: "HtoD",  # unified memory migrations: Kineto has no separate names
    12: "DtoH",
    13: "DtoD",
}
"""``ENUM_CUDA_MEMCPY_OPER`` id -> the short kind Kineto writes (``Memcpy HtoD (...)``)."""
MEM_KINDS: dict[int, str] = {
    0: "Pageable",
    1: "Pinned",
    2: "Device",
    3: "Array",
    4: "Managed",
    5: "Device Static",
    6: "Managed Static",
    7: "Unknown",
}
"""``ENUM_CUDA_MEM_KIND`` id -> label (nsys numbering; CUPTI's starts with Unknown = 0)."""
SYNC_TYPES: dict[int, str] = {
    0: "Unknown Sync",
    1: "Event Sync",
    2: "Stream Wait Event",
    3: "Stream Sync",
    4: "Context Sync",
}
"""``ENUM_CUPTI_SYNC_TYPE`` id -> the name Kineto gives ``cuda_sync`` events."""
_SYNC_BY_ENUM_NAME = {
    "UNKNOWN": "Unknown Sync",
    "EVENT_SYNCHRONIZE": "Event Sync",
    "STREAM_WAIT_EVENT": "Stream Wait Event",
    "STREAM_SYNCHRONIZE": "Stream Sync",
    "CONTEXT_SYNCHRONIZE": "Context Sync",
}
NVTX_RANGE_TYPES: frozenset[str] = frozenset(
    {"NvtxPushPopRange", "NvtxStartEndRange", "NvtxtPushPopRange", "NvtxtStartEndRange"}
)
_NVTX_RANGE_IDS = (59, 60, 70, 71)
_NVTX_DOMAIN_CREATE = 75


# ---- opening -------------------------------------------------------------------------


def is_sqlite(path: Path) -> bool:
    """True when the file starts with the SQLite header."""
    with path.open("rb") as fh:
        return fh.read(16) == SQLITE_MAGIC


@contextmanager
def open_export(path: Path) -> Iterator[sqlite3.Connection]:
    """Open an export read-only without touching it (no journal, no lock files, works on read-only media)."""
    import sqlite3

    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro&immutable=1"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise BadInputError(f"{path}: cannot open as SQLite ({exc})") from None
    with closing(con):
        yield con


def table_columns(con: sqlite3.Connection) -> dict[str, set[str]]:
    """Every table of the database and its column names."""
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: {r[1] for r in con.execute(f'PRAGMA table_info("{n}")')} for n in names}


def check_nsys(path: Path, schema: dict[str, set[str]]) -> None:
    """Refuse SQLite files that are not Nsight Systems exports, in one line."""
    if "StringIds" not in schema:
        found = ", ".join(sorted(schema)[:5]) or "no tables"
        raise BadInputError(
            f"{path}: an SQLite file but not an Nsight Systems export (no StringIds table; has {found})"
        )


def session_start_ns(con: sqlite3.Connection, schema: dict[str, set[str]]) -> int | None:
    """Epoch ns of the session start (the zero of every nsys timestamp), when recorded."""
    if "utcEpochNs" not in schema.get("TARGET_INFO_SESSION_START_TIME", set()):
        return None
    row = con.execute("SELECT utcEpochNs FROM TARGET_INFO_SESSION_START_TIME LIMIT 1").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _query(con: sqlite3.Connection, sql: str) -> pd.DataFrame:
    return pd.read_sql_query(sql, con)


def _int_col(frame: pd.DataFrame, col: str, missing: int = -1) -> np.ndarray:
    if col not in frame:
        return np.full(len(frame), missing, dtype=np.int64)
    return pd.to_numeric(frame[col], errors="coerce").fillna(missing).to_numpy(np.int64)


def _pid_tid(global_tid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = global_tid >= 0
    pid = np.where(valid, (global_tid >> 24) & _TID_MASK, -1)
    tid = np.where(valid, global_tid & _TID_MASK, -1)
    return pid, tid


def _enum(con: sqlite3.Connection, schema: dict[str, set[str]], table: str) -> dict[int, tuple[str, str]]:
    """``ENUM_*`` table as id -> (name, label); empty when the export has none."""
    if not {"id", "name", "label"} <= schema.get(table, set()):
        return {}
    return {int(i): (str(n), str(lab)) for i, n, lab in con.execute(f'SELECT id, name, label FROM "{table}"')}


class _Strings:
    """``StringIds`` lookups, resolved once per distinct id."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._map: dict[int, str] = dict(con.execute("SELECT id, value FROM StringIds"))

    def names(self, ids: pd.Series) -> np.ndarray:
        """Strings for a column of ids (text columns, as some exports write, pass through)."""
        codes, uniques = pd.factorize(ids, use_na_sentinel=True)
        lookup = np.array([self._text(u) for u in uniques] + [""], dtype=object)
        return lookup[codes]

    def _text(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        try:
            return self._map.get(int(value), "")
        except (TypeError, ValueError):
            return ""


# ---- reading -------------------------------------------------------------------------


def load_nsys(path: str | Path, *, step_marker: str | None = None) -> Trace:
    """Read an ``nsys export --type sqlite`` file (or convert a ``.nsys-rep`` first).

    Raises :class:`BadInputError` (one line) for files that are not readable exports.
    """
    import sqlite3

    path = Path(path)
    if path.name.endswith(REPORT_SUFFIXES):
        with exported_sqlite(path) as sqlite_path:
            trace = load_nsys(sqlite_path, step_marker=step_marker)
        trace.meta.path = str(path)
        trace.meta.file_bytes = path.stat().st_size
        return trace
    try:
        with open_export(path) as con:
            return _read(path, con, step_marker)
    except sqlite3.Error as exc:  # truncated or corrupt pages surface only when read
        raise BadInputError(f"{path}: unreadable SQLite file ({exc})") from None


def _read(path: Path, con: sqlite3.Connection, step_marker: str | None) -> Trace:
    schema = table_columns(con)
    check_nsys(path, schema)
    strings = _Strings(con)
    start = session_start_ns(con, schema)
    offset = start or 0
    builder = TableBuilder()
    meta = TraceMeta(path=str(path), format="nsys", file_bytes=path.stat().st_size, base_time_ns=start)
    if start is None:
        meta.notes.append(
            "nsys export has no TARGET_INFO_SESSION_START_TIME: times are ns since the session start, not epoch"
        )
    events = 0
    events += _kernels(con, schema, strings, builder, offset)
    events += _memcpy(con, schema, builder, offset)
    events += _memset(con, schema, builder, offset)
    events += _sync(con, schema, builder, offset)
    events += _runtime(con, schema, strings, builder, offset)
    events += _nvtx(con, schema, strings, builder, offset, meta)
    events += _osrt(con, schema, strings, builder, offset)
    tables = builder.finish()
    tables["threads"] = _threads(con, schema, strings, tables)
    meta.num_events = events
    meta.devices = _devices(con, schema)
    _export_facts(con, schema, meta)
    if not any(t in schema for t in EVENT_TABLES):
        meta.notes.append("nsys export holds no CUDA, NVTX or OS runtime events (was anything traced?)")
    rank = re.search(r"(?:rank|worker)[-_]?(\d+)", path.name, re.IGNORECASE)
    if rank:
        meta.rank, meta.rank_source = int(rank.group(1)), "file name"
    ends = [int(tables[t]["end"].max()) for t in ("host", "gpu", "runtime") if len(tables[t])]
    steps, source = find_steps(tables["host"], max(ends) if ends else 0, step_marker)
    meta.step_source = source
    return Trace(meta=meta, steps=steps, **tables)


def _times(frame: pd.DataFrame, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    start = _int_col(frame, "start")
    end = _int_col(frame, "end")
    end = np.where(end < start, start, end)
    return start + offset, end - start, end + offset


def _kernels(
    con: sqlite3.Connection, schema: dict[str, set[str]], strings: _Strings, builder: TableBuilder, offset: int
) -> int:
    cols = schema.get("CUPTI_ACTIVITY_KIND_KERNEL")
    if not cols or not {"start", "end"} <= cols:
        return 0
    name_col = next((c for c in ("demangledName", "shortName", "mangledName", "name") if c in cols), None)
    wanted = [c for c in ("start", "end", "deviceId", "streamId", "correlationId", name_col) if c and c in cols]
    frame = _query(con, f"SELECT {', '.join(wanted)} FROM CUPTI_ACTIVITY_KIND_KERNEL")
    names = strings.names(frame[name_col]) if name_col else np.full(len(frame), "unknown kernel", dtype=object)
    _add_gpu(builder, frame, "kernel", names, offset, np.full(len(frame), -1, np.int64))
    return len(frame)


def _memcpy(con: sqlite3.Connection, schema: dict[str, set[str]], builder: TableBuilder, offset: int) -> int:
    cols = schema.get("CUPTI_ACTIVITY_KIND_MEMCPY")
    if not cols or not {"start", "end"} <= cols:
        return 0
    wanted = [
        c
        for c in ("start", "end", "deviceId", "streamId", "correlationId", "bytes", "copyKind", "srcKind", "dstKind")
        if c in cols
    ]
    frame = _query(con, f"SELECT {', '.join(wanted)} FROM CUPTI_ACTIVITY_KIND_MEMCPY")
    copy_kinds = _copy_kinds(con, schema)
    mem_kinds = _mem_kinds(con, schema)
    kind = _labels(_int_col(frame, "copyKind", 0), copy_kinds, "Unknown")
    if "srcKind" in frame and "dstKind" in frame:
        src = _labels(_int_col(frame, "srcKind", -1), mem_kinds, "Unknown")
        dst = _labels(_int_col(frame, "dstKind", -1), mem_kinds, "Unknown")
        names = "Memcpy " + kind + " (" + src + " -> " + dst + ")"
    else:
        names = "Memcpy " + kind
    _add_gpu(builder, frame, "memcpy", names, offset, _int_col(frame, "bytes"))
    return len(frame)


def _memset(con: sqlite3.Connection, schema: dict[str, set[str]], builder: TableBuilder, offset: int) -> int:
    cols = schema.get("CUPTI_ACTIVITY_KIND_MEMSET")
    if not cols or not {"start", "end"} <= cols:
        return 0
    wanted = [c for c in ("start", "end", "deviceId", "streamId", "correlationId", "bytes", "memKind") if c in cols]
    frame = _query(con, f"SELECT {', '.join(wanted)} FROM CUPTI_ACTIVITY_KIND_MEMSET")
    mem = _labels(_int_col(frame, "memKind", -1), _mem_kinds(con, schema), "Unknown")
    names = "Memset (" + mem + ")"
    _add_gpu(builder, frame, "memset", names, offset, _int_col(frame, "bytes"))
    return len(frame)


def _sync(con: sqlite3.Connection, schema: dict[str, set[str]], builder: TableBuilder, offset: int) -> int:
    cols = schema.get("CUPTI_ACTIVITY_KIND_SYNCHRONIZATION")
    if not cols or not {"start", "end"} <= cols:
        return 0
    wanted = [c for c in ("start", "end", "deviceId", "streamId", "correlationId", "syncType") if c in cols]
    frame = _query(con, f"SELECT {', '.join(wanted)} FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION")
    table = {
        i: _SYNC_BY_ENUM_NAME.get(name.removeprefix("CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_"), label)
        for i, (name, label) in _enum(con, schema, "ENUM_CUPTI_SYNC_TYPE").items()
    } or SYNC_TYPES
    names = _labels(_int_col(frame, "syncType", 0), table, "Unknown Sync")
    _add_gpu(builder, frame, "sync", names, offset, np.full(len(frame), -1, np.int64))
    return len(frame)


def _copy_kinds(con: sqlite3.Connection, schema: dict[str, set[str]]) -> dict[int, str]:
    found = _enum(con, schema, "ENUM_CUDA_MEMCPY_OPER")
    if not found:
        return MEMCPY_KINDS
    out: dict[int, str] = {}
    for i, (name, _label) in found.items():
        short = name.removeprefix("CUDA_MEMCPY_KIND_").removeprefix("UVM_")
        m = re.fullmatch(r"([A-Z])TO([A-Z])", short)
        out[i] = f"{m.group(1)}to{m.group(2)}" if m else "Unknown"
    return out


def _mem_kinds(con: sqlite3.Connection, schema: dict[str, set[str]]) -> dict[int, str]:
    found = _enum(con, schema, "ENUM_CUDA_MEM_KIND")
    return {i: label for i, (_name, label) in found.items()} or MEM_KINDS


def _labels(ids: np.ndarray, table: dict[int, str], default: str) -> np.ndarray:
    """Vectorised enum lookup: one dict access per distinct id."""
    uniques, inverse = np.unique(ids, return_inverse=True)
    labels = np.array([table.get(int(u), default) for u in uniques], dtype=object)
    return labels[inverse.reshape(-1)] if len(ids) else np.empty(0, dtype=object)


def _add_gpu(
    builder: TableBuilder, frame: pd.DataFrame, kind: str, names: np.ndarray, offset: int, nbytes: np.ndarray
) -> None:
    if len(frame) == 0:
        return
    ts, dur, _ = _times(frame, offset)
    stream = _int_col(frame, "streamId")
    stream = np.where(stream == _NO_ID, -1, stream)
    builder._append(
        GPU,
        kind=builder.symbols.encode([kind] * len(frame)),
        name=builder.symbols.encode(list(names)),
        ts=ts,
        dur=dur,
        device=_int_col(frame, "deviceId"),
        stream=stream,
        correlation=_int_col(frame, "correlationId"),
        external_id=np.full(len(frame), -1, np.int64),
        bytes=nbytes,
    )


def _runtime(
    con: sqlite3.Connection, schema: dict[str, set[str]], strings: _Strings, builder: TableBuilder, offset: int
) -> int:
    cols = schema.get("CUPTI_ACTIVITY_KIND_RUNTIME")
    if not cols or not {"start", "end", "nameId"} <= cols:
        return 0
    wanted = [c for c in ("start", "end", "globalTid", "correlationId", "nameId") if c in cols]
    frame = _query(con, f"SELECT {', '.join(wanted)} FROM CUPTI_ACTIVITY_KIND_RUNTIME")
    if len(frame) == 0:
        return 0
    names = _strip_api_version(strings.names(frame["nameId"]))
    ts, dur, _ = _times(frame, offset)
    pid, tid = _pid_tid(_int_col(frame, "globalTid"))
    builder._append(
        RUNTIME,
        name=builder.symbols.encode(list(names)),
        ts=ts,
        dur=dur,
        pid=pid,
        tid=tid,
        correlation=_int_col(frame, "correlationId"),
        external_id=np.full(len(frame), -1, np.int64),
    )
    return len(frame)


def _strip_api_version(names: np.ndarray) -> np.ndarray:
    uniques, inverse = np.unique(names.astype(str), return_inverse=True)
    stripped = np.array([_API_VERSION.sub("", u) for u in uniques], dtype=object)
    return stripped[inverse.reshape(-1)]


def _nvtx(
    con: sqlite3.Connection,
    schema: dict[str, set[str]],
    strings: _Strings,
    builder: TableBuilder,
    offset: int,
    meta: TraceMeta,
) -> int:
    cols = schema.get("NVTX_EVENTS")
    if not cols or not {"start", "end"} <= cols:
        return 0
    wanted = [c for c in ("start", "end", "eventType", "text", "textId", "globalTid", "domainId") if c in cols]
    frame = _query(con, f"SELECT {', '.join(wanted)} FROM NVTX_EVENTS")
    text = frame["text"].astype(object) if "text" in frame else pd.Series([None] * len(frame), dtype=object)
    if "textId" in frame:
        by_id = pd.Series(strings.names(frame["textId"]), index=frame.index)
        text = text.where(text.notna(), by_id.where(frame["textId"].notna()))
    text = text.fillna("").astype(str).to_numpy(dtype=object)
    etype = _int_col(frame, "eventType")
    kinds = _enum(con, schema, "ENUM_NSYS_EVENT_TYPE")
    range_ids = [i for i, (name, _) in kinds.items() if name in NVTX_RANGE_TYPES] or list(_NVTX_RANGE_IDS)
    domain_create = next((i for i, (n, _) in kinds.items() if n == "NvtxDomainCreate"), _NVTX_DOMAIN_CREATE)
    domain = _int_col(frame, "domainId", 0)
    is_domain = etype == domain_create
    domains = dict(zip(domain[is_domain].tolist(), text[is_domain].tolist(), strict=True))
    has_end = frame["end"].notna().to_numpy()
    keep = has_end & (np.isin(etype, range_ids) if "eventType" in frame else True)
    sub = frame[keep]
    if len(sub) == 0:
        return 0
    names = text[keep]
    # emit_nvtx op ranges carry ", seq = N, sizes = [...]": keep the op name so vocabularies match.
    uniques, inverse = np.unique(names.astype(str), return_inverse=True)
    clean = np.array([_EMIT_NVTX_ARGS.sub("", u) for u in uniques], dtype=object)
    is_op = np.array([u != c or c.startswith("aten::") for u, c in zip(uniques, clean, strict=True)])
    inverse = inverse.reshape(-1)
    cat = np.where(is_op[inverse], "cpu_op", "user_annotation")
    ts, dur, _ = _times(sub, offset)
    pid, tid = _pid_tid(_int_col(sub, "globalTid"))
    builder._append(
        HOST,
        cat=builder.symbols.encode(list(cat)),
        name=builder.symbols.encode(list(clean[inverse])),
        ts=ts,
        dur=dur,
        pid=pid,
        tid=tid,
        external_id=np.full(len(sub), -1, np.int64),
        call_stack=np.zeros(len(sub), np.int32),
        input_dims=np.zeros(len(sub), np.int32),
    )
    counts = pd.Series(domain[keep]).value_counts()
    meta.extra["nvtx_domains"] = {
        domains.get(int(d), "default" if d == 0 else f"domain {d}"): int(n) for d, n in counts.items()
    }
    return len(sub)


def _osrt(
    con: sqlite3.Connection, schema: dict[str, set[str]], strings: _Strings, builder: TableBuilder, offset: int
) -> int:
    cols = schema.get("OSRT_API")
    if not cols or not {"start", "end", "nameId"} <= cols:
        return 0
    wanted = [c for c in ("start", "end", "globalTid", "nameId") if c in cols]
    frame = _query(con, f"SELECT {', '.join(wanted)} FROM OSRT_API")
    if len(frame) == 0:
        return 0
    ts, dur, _ = _times(frame, offset)
    pid, tid = _pid_tid(_int_col(frame, "globalTid"))
    builder._append(
        HOST,
        cat=builder.symbols.encode(["os_runtime"] * len(frame)),
        name=builder.symbols.encode(list(strings.names(frame["nameId"]))),
        ts=ts,
        dur=dur,
        pid=pid,
        tid=tid,
        external_id=np.full(len(frame), -1, np.int64),
        call_stack=np.zeros(len(frame), np.int32),
        input_dims=np.zeros(len(frame), np.int32),
    )
    return len(frame)


def _threads(
    con: sqlite3.Connection, schema: dict[str, set[str]], strings: _Strings, tables: dict[str, pd.DataFrame]
) -> pd.DataFrame:
    """Process and thread names of the traced processes (nsys lists every process on the host)."""
    rows: list[tuple[str, int, int, str]] = []
    traced = set(tables["host"]["pid"].tolist()) | set(tables["runtime"]["pid"].tolist())
    if {"pid", "name"} <= schema.get("PROCESSES", set()):
        for pid, name in con.execute("SELECT pid, name FROM PROCESSES"):
            if pid in traced and name:
                rows.append(("process_name", int(pid), 0, str(name)))
    if {"nameId", "globalTid"} <= schema.get("ThreadNames", set()):
        frame = _query(con, "SELECT nameId, globalTid FROM ThreadNames")
        pid, tid = _pid_tid(_int_col(frame, "globalTid"))
        for p, t, n in zip(pid.tolist(), tid.tolist(), strings.names(frame["nameId"]).tolist(), strict=True):
            if p in traced:
                rows.append(("thread_name", p, t, n))
    return pd.DataFrame(rows, columns=["kind", "pid", "tid", "value"])


def _devices(con: sqlite3.Connection, schema: dict[str, set[str]]) -> list[DeviceInfo]:
    """GPUs from ``TARGET_INFO_GPU`` (recent) or ``TARGET_INFO_CUDA_DEVICE`` (older); ids are CUDA ordinals."""
    for table, id_cols in (("TARGET_INFO_GPU", ("cuDevice", "id")), ("TARGET_INFO_CUDA_DEVICE", ("cudaId", "id"))):
        cols = schema.get(table)
        if not cols:
            continue
        id_col = next((c for c in id_cols if c in cols), None)
        if id_col is None:
            continue
        frame = _query(con, f'SELECT * FROM "{table}"')
        out = []
        for row in frame.to_dict("records"):
            major, minor = row.get("computeMajor"), row.get("computeMinor")
            mem = row.get("totalMemory", row.get("totalGlobalMem"))
            sms = row.get("smCount", row.get("numMultiprocessors"))
            out.append(
                DeviceInfo(
                    id=int(row[id_col]),
                    name=str(row.get("name") or "unknown"),
                    total_memory_bytes=int(mem) if pd.notna(mem) else None,
                    num_sms=int(sms) if pd.notna(sms) else None,
                    compute_capability=f"{int(major)}.{int(minor)}" if pd.notna(major) and pd.notna(minor) else None,
                )
            )
        return sorted(out, key=lambda d: d.id)
    return []


def _export_facts(con: sqlite3.Connection, schema: dict[str, set[str]], meta: TraceMeta) -> None:
    if {"name", "value"} <= schema.get("META_DATA_EXPORT", set()):
        facts = dict(con.execute("SELECT name, value FROM META_DATA_EXPORT"))
        for key, label in (("EXPORT_PRODUCT_VERSION", "nsys_version"), ("EXPORT_SCHEMA_VERSION", "nsys_schema")):
            if facts.get(key):
                meta.extra[label] = str(facts[key])
    if "GPU_METRICS" in schema:
        meta.extra["gpu_metrics_samples"] = int(con.execute("SELECT COUNT(*) FROM GPU_METRICS").fetchone()[0])


# ---- .nsys-rep -----------------------------------------------------------------------


@contextmanager
def exported_sqlite(report: Path) -> Iterator[Path]:
    """Convert a ``.nsys-rep`` with ``nsys export`` into a temporary SQLite file (never beside the report)."""
    exe = shutil.which("nsys")
    if exe is None:
        raise BadInputError(
            f"{report}: an Nsight Systems report; export it first with "
            f"`nsys export --type sqlite --output report.sqlite {report.name}` and pass the .sqlite file"
        )
    with tempfile.TemporaryDirectory(prefix="mlprof-nsys-") as tmp:
        out = Path(tmp) / "report.sqlite"
        try:
            proc = subprocess.run(
                [exe, "export", "--type", "sqlite", "--output", str(out), str(report)],
                capture_output=True,
                text=True,
                timeout=3600,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BadInputError(f"{report}: nsys export failed ({exc})") from None
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr or proc.stdout or "").strip().splitlines()
            reason = last[-1] if last else f"exit code {proc.returncode}"
            raise BadInputError(f"{report}: nsys export failed ({reason})")
        yield out


__all__ = ["exported_sqlite", "is_sqlite", "load_nsys", "open_export", "session_start_ns", "table_columns"]
