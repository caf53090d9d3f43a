"""Parsed event tables of each run as Parquet files, so the dashboard never re-parses JSON.

Layout: ``<cache>/<run_key>/rank<N>/<table>.parquet`` for the trace tables the
dashboard draws (gpu, runtime, host, memory, steps, threads) and
``<cache>/<run_key>/counters.parquet`` for GPU counters. Tables are sorted by ``ts``
and written in row groups of :data:`ROW_GROUP_ROWS` rows, so a read of one time window
(the timeline around the worst step) only decodes the row groups that overlap it.

Writes go to a temporary folder that is renamed into place as a whole; a reader sees a
run's folder complete or not at all. Readers only ever open folders named by a
``run_key`` from the store (64 hex digits), never a path taken from a request.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlprof.trace.model import Trace

CACHED_TABLES = ("gpu", "runtime", "host", "memory", "steps", "threads")
ROW_GROUP_ROWS = 64_000
_RUN_KEY = re.compile(r"^[0-9a-f]{64}$")


def run_dir(cache_dir: Path, run_key: str) -> Path:
    """The folder of one run; ``run_key`` must be a SHA-256 hex digest."""
    if not _RUN_KEY.match(run_key):
        raise ValueError(f"not a run key: {run_key!r}")
    return cache_dir / run_key


def write_tables(cache_dir: Path, traces: list[Trace], counters: pd.DataFrame | None) -> Path:
    """Write every trace's tables (and the counters) into a new temporary folder under ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(cache_dir)
    tmp = cache_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for trace in traces:
            rank = trace.meta.rank if trace.meta.rank is not None else 0
            folder = tmp / f"rank{rank}"
            folder.mkdir()
            for name in CACHED_TABLES:
                _write(trace.table(name), folder / f"{name}.parquet")
        if counters is not None and len(counters):
            _write(counters, tmp / "counters.parquet")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _write(frame: pd.DataFrame, path: Path) -> None:
    mixed = [c for c in frame.columns if frame[c].dtype == object and pd.api.types.infer_dtype(frame[c]) != "string"]
    if mixed:  # e.g. thread metadata: pid 25045 beside pid "Spans"; Parquet needs one type per column
        frame = frame.assign(**{c: frame[c].astype(str) for c in mixed})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS, compression="zstd")


def publish(tmp: Path, target: Path) -> None:
    """Move a finished temporary folder to ``target`` (replacing a leftover of a crashed ingest)."""
    if target.exists():
        stale = target.with_name(f".stale-{uuid.uuid4().hex}")
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, target)


LEFTOVER_AGE_S = 24 * 3600


def sweep_leftovers(cache_dir: Path, max_age_s: float = LEFTOVER_AGE_S) -> None:
    """Remove temporary folders of ingests that died more than ``max_age_s`` ago (never a live one)."""
    now = time.time()
    for p in cache_dir.glob(".*-*"):
        if p.name.startswith((".tmp-", ".stale-")):
            try:
                if now - p.stat().st_mtime > max_age_s:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def ranks_cached(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = re.fullmatch(r"rank(\d+)", p.name)
        if m and p.is_dir():
            out.append(int(m.group(1)))
    return sorted(out)


def read_table(
    folder: Path,
    rank: int | None,
    name: str,
    columns: list[str] | None = None,
    window: tuple[int, int] | None = None,
) -> pd.DataFrame | None:
    """One cached table (``rank=None`` for the counters), optionally rows with ``end > lo and ts < hi``.

    Returns None when the run has no such cached table.
    """
    path = folder / "counters.parquet" if rank is None else folder / f"rank{int(rank)}" / f"{name}.parquet"
    if not path.is_file():
        return None
    filters = None
    if window is not None:
        lo, hi = window
        schema = pq.read_schema(path)
        filters = [("ts", "<", hi)]
        if "end" in schema.names:
            filters.append(("end", ">", lo))
        else:
            filters.append(("ts", ">=", lo))
    table = pq.read_table(path, columns=columns, filters=filters)
    return table.to_pandas()
