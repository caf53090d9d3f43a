"""``mlprof ingest``: analyse a trace, run folder or rank directory and record it in the run store.

One run is one set of input files, keyed by the SHA-256 of their names and bytes
(``run_key``): ingesting the same inputs again finds the stored run and does nothing.
Everything a run owns is written in one transaction, after the slow part (parsing,
analysis, Parquet) is done: a process killed mid-ingest leaves no run behind, and
concurrent ingests only hold the database for the few milliseconds of their inserts.
Two processes racing on the same inputs insert one run: the unique ``run_key`` and
``INSERT ... ON CONFLICT DO NOTHING`` let the second find the first's run.

An ``mlprof.profile`` run folder with several profiling cycles (``cycles/<K>/``) is
one run per cycle: each is keyed, analysed and written on its own, so a repeat skips
the cycles already stored and records only the new ones.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from mlprof import __version__
from mlprof.api import analyze
from mlprof.errors import BadInputError, UsageError
from mlprof.interrupts import signals_deferred
from mlprof.results.schema import job_step_summary
from mlprof.store import parquet_cache
from mlprof.store.engine import open_engine, store_errors
from mlprof.store.location import StoreLocation, resolve_store
from mlprof.store.schema import (
    counters_t,
    ensure_schema,
    findings_t,
    ops_t,
    run_tags_t,
    runs_t,
    steps_t,
)
from mlprof.store.summary import counter_rows, finding_rows, memory_summary, op_rows, step_rows
from mlprof.trace.loader import RUN_FOLDER_SIDE_FILES, trace_files_in

EPOCH_MIN_NS = 10**18
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestResult:
    run_id: int
    run_key: str
    name: str
    created: bool
    """False when the same inputs were already in the store (nothing was written)."""
    store: str
    seconds: float
    cycle: int | None = None
    """The profiling cycle of a run folder that has several (``cycles/<K>/``); None otherwise."""


def parse_tags(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; a malformed item is a usage error."""
    tags: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--tag {item!r}: write tags as key=value")
        tags[key.strip()] = value.strip()
    return tags


def input_files(path: Path) -> tuple[str, list[Path]]:
    """The kind of input (``file``, ``run_folder``, ``directory``) and every file its run key covers."""
    from mlprof.trace.path_errors import not_found, not_regular

    if not path.exists():
        raise not_found(path)
    if not path.is_dir():
        if not path.is_file():  # a FIFO or a device (/dev/zero) would be hashed forever
            try:
                mode = path.stat().st_mode
            except OSError as exc:  # gone since (a race): as a missing path
                raise not_found(path) from exc
            raise not_regular(path, mode)
        return "file", [path]
    try:
        traces = trace_files_in(path)
        side = sorted(p for p in path.iterdir() if p.is_file() and RUN_FOLDER_SIDE_FILES.match(p.name))
    except OSError as exc:
        raise BadInputError(f"{path}: cannot list the directory ({exc.strerror})") from None
    kind = "run_folder" if (path / "meta.json").is_file() else "directory"
    return kind, sorted([*traces, *side])


CYCLES_DIR = "cycles"
_CYCLE_NAME = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class RunInput:
    """What one stored run is made of.

    ``root`` is what the user named (its ``meta.json`` and counters, if a run folder);
    ``traces`` the file or folder the traces are loaded from (``root``, or
    ``root/cycles/<K>`` for a later profiling cycle); ``files`` every file the run key
    covers, named relative to ``root`` in the key.
    """

    root: Path
    traces: Path
    kind: str
    files: list[Path]
    cycle: int | None = None


def profiling_cycles(path: Path) -> list[tuple[int, Path]]:
    """Later cycles of an ``mlprof.profile`` run folder: ``(K, cycles/K)`` for each that holds traces, by K."""
    folder = path / CYCLES_DIR
    if not folder.is_dir():
        return []
    try:
        found = [
            (int(p.name), p)
            for p in folder.iterdir()
            if _CYCLE_NAME.match(p.name) and int(p.name) >= 2 and p.is_dir() and trace_files_in(p)
        ]
    except OSError as exc:
        raise BadInputError(f"{folder}: cannot list the directory ({exc.strerror})") from None
    return sorted(found)


def run_inputs(path: Path) -> list[RunInput]:
    """The runs ``path`` records: one, or one per profiling cycle of a run folder with later cycles.

    A cycle folder named on its own (``<run folder>/cycles/<K>``) is that cycle of its run
    folder: the same key, name and tags as when the whole folder is ingested.
    """
    if _is_cycle_folder(path):
        same = [run for run in run_inputs(path.parent.parent) if run.traces == path]
        if same:
            return same
    kind, files = input_files(path)
    cycles = profiling_cycles(path) if kind == "run_folder" else []
    if not cycles:
        return [RunInput(path, path, kind, files)]
    side = [f for f in files if f.parent == path and RUN_FOLDER_SIDE_FILES.match(f.name)]
    runs = [RunInput(path, path, kind, files, 1)] if len(files) > len(side) else []
    for k, folder in cycles:
        try:
            traces = trace_files_in(folder)
        except OSError as exc:
            raise BadInputError(f"{folder}: cannot list the directory ({exc.strerror})") from None
        runs.append(RunInput(path, folder, "run_cycle", sorted([*traces, *side]), k))
    return runs


def stored_run_key(source: Path) -> str:
    """The run key of what a stored run's ``source_path`` holds now (to check it is unchanged).

    A later profiling cycle is stored with ``source_path`` ``<run folder>/cycles/<K>``;
    its key also covers the run folder's ``meta.json`` and counters.
    """
    runs = run_inputs(source)
    run = next((r for r in runs if r.traces == source), runs[0])
    return content_key(run.root, run.files)


def _is_cycle_folder(path: Path) -> bool:
    parent = path.parent
    return (
        parent.name == CYCLES_DIR
        and bool(_CYCLE_NAME.match(path.name))
        and path.is_dir()
        and (parent.parent / "meta.json").is_file()
    )


def content_key(path: Path, files: list[Path]) -> str:
    """SHA-256 over each file's name (relative to the input) and bytes, in name order."""
    digest = hashlib.sha256()
    base = path if path.is_dir() else path.parent
    for f in files:
        rel = f.relative_to(base).as_posix().encode()
        digest.update(len(rel).to_bytes(8, "little") + rel)
        try:
            size = f.stat().st_size
            digest.update(size.to_bytes(8, "little"))
            with f.open("rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise BadInputError(f"{f}: cannot read ({exc.strerror})") from None
    return digest.hexdigest()


def ingest(
    path: str | Path,
    name: str | None = None,
    tags: dict[str, str] | None = None,
    store_url: str | None = None,
    *,
    config_path: Path | None = None,
    gpu_hours: float | None = None,
    model_flops_per_step: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    _before_commit: Callable[[], None] | None = None,
) -> IngestResult:
    """Analyse ``path`` and record it; returns the stored run (existing or new).

    A run folder with several profiling cycles records one run per cycle (see
    :func:`ingest_runs`); this returns the first.
    """
    return ingest_runs(
        path,
        name,
        tags,
        store_url,
        config_path=config_path,
        gpu_hours=gpu_hours,
        model_flops_per_step=model_flops_per_step,
        on_progress=on_progress,
        _before_commit=_before_commit,
    )[0]


def ingest_runs(
    path: str | Path,
    name: str | None = None,
    tags: dict[str, str] | None = None,
    store_url: str | None = None,
    *,
    config_path: Path | None = None,
    gpu_hours: float | None = None,
    model_flops_per_step: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    _before_commit: Callable[[], None] | None = None,
) -> list[IngestResult]:
    """Analyse ``path`` and record it: one run, or one per profiling cycle of a run folder with ``cycles/<K>/``.

    Cycle K's run is named ``NAME #cycle K`` and tagged ``cycle=K``, with the run
    folder's other tags and meta. Each cycle is keyed and written in its own
    transaction: a repeat records only cycles not stored yet, and an error in one
    cycle leaves the cycles before it recorded.

    ``gpu_hours`` overrides what the run cost (e.g. from the scheduler) instead of the
    recorded wall time times the GPUs. ``on_progress(done, total)`` reports bytes read.
    ``_before_commit`` is a test hook run inside the
    transaction, after every row is written, to simulate a crash there.
    """
    path = Path(path)
    location = resolve_store(store_url)
    options = _Options(name, tags or {}, config_path, gpu_hours, model_flops_per_step, on_progress)
    runs = run_inputs(path)
    new_store = location.sqlite_path is not None and not location.sqlite_path.exists()
    new_cache = not location.cache_dir.exists()
    engine: Engine | None = None
    results = []
    try:
        # Opened inside the try: Ctrl-C while the new SQLite file is being set up removes it too.
        engine = open_engine(location)
        with store_errors(location):
            for run in runs:
                t0 = time.perf_counter()
                run_key = content_key(run.root, run.files)
                results.append(_record(engine, location, run, run_key, options, _before_commit, t0))
    except BaseException:
        if engine is not None:
            engine.dispose()
        if not results:  # an error, Ctrl-C or SIGTERM before the first run: leave no store behind
            _remove_new_store(location, new_store, new_cache)
        raise
    engine.dispose()
    return results


def _remove_new_store(location: StoreLocation, new_store: bool, new_cache: bool) -> None:
    """Remove the SQLite store and cache folder this ingest created, if they hold nothing."""
    path = location.sqlite_path
    if new_store and path is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    if new_cache and new_store:  # the cache of a store removed above (a run committed as Ctrl-C came)
        shutil.rmtree(location.cache_dir, ignore_errors=True)
    elif new_cache:
        try:
            location.cache_dir.rmdir()  # only when empty: a failed run's temporary tables are gone already
        except OSError:
            pass


@dataclass(frozen=True)
class _Options:
    name: str | None
    tags: dict[str, str]
    config_path: Path | None
    gpu_hours: float | None
    model_flops_per_step: float | None
    on_progress: Callable[[int, int], None] | None


def _record(
    engine: Engine,
    location: StoreLocation,
    source: RunInput,
    run_key: str,
    options: _Options,
    before_commit: Callable[[], None] | None,
    t0: float,
) -> IngestResult:
    """Check for the run, analyse, write the Parquet cache, then insert everything in one transaction."""
    store = location.display()
    with engine.begin() as conn:
        ensure_schema(conn)
        existing = _find(conn, run_key)
    cycle = source.cycle
    if existing is not None:
        return IngestResult(existing[0], run_key, existing[1], False, store, time.perf_counter() - t0, cycle)

    run, children, traces, counters = _analyse(
        source, options.name, options.tags, options.config_path, options.gpu_hours, options.on_progress
    )
    run["run_key"] = run_key
    run["model_flops_per_step"] = options.model_flops_per_step
    tmp = parquet_cache.write_tables(location.cache_dir, traces, counters)
    del traces
    try:
        with engine.begin() as conn:
            run_id = _insert_run(conn, run)
            if run_id is None:  # another process stored the same inputs meanwhile
                found = _find(conn, run_key)
                assert found is not None
                return IngestResult(found[0], run_key, found[1], False, store, time.perf_counter() - t0, cycle)
            _insert_children(conn, run_id, children)
            if before_commit is not None:
                before_commit()
            # The run's Parquet folder and the commit go together: a Ctrl-C or SIGTERM waits for both
            # (milliseconds: the write lock is held since BEGIN IMMEDIATE). Landing between them, it rolled
            # the rows back and left the folder in the cache with no run.
            target = parquet_cache.run_dir(location.cache_dir, run_key)
            with signals_deferred():
                parquet_cache.publish(tmp, target)
                try:
                    conn.commit()
                except BaseException:
                    parquet_cache.discard(target)
                    raise
    finally:
        parquet_cache.discard(tmp)  # no-op once published
    return IngestResult(run_id, run_key, run["name"], True, store, time.perf_counter() - t0, cycle)


def _find(conn: Connection, run_key: str) -> tuple[int, str] | None:
    row = conn.execute(select(runs_t.c.id, runs_t.c.name).where(runs_t.c.run_key == run_key)).first()
    return (int(row[0]), str(row[1])) if row else None


def _insert_run(conn: Connection, run: dict[str, Any]) -> int | None:
    maker = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = maker(runs_t).values(**run).on_conflict_do_nothing(index_elements=["run_key"]).returning(runs_t.c.id)
    row = conn.execute(stmt).first()
    return int(row[0]) if row else None


def _insert_children(conn: Connection, run_id: int, children: dict[str, list[dict[str, Any]]]) -> None:
    for table, rows in (
        (run_tags_t, children["tags"]),
        (steps_t, children["steps"]),
        (findings_t, children["findings"]),
        (counters_t, children["counters"]),
        (ops_t, children["ops"]),
    ):
        if rows:
            conn.execute(table.insert(), [{"run_id": run_id, **r} for r in rows])


_RUN_FOLDER_KINDS = ("run_folder", "run_cycle")


def _read_meta(path: Path, kind: str) -> dict[str, Any]:
    if kind not in _RUN_FOLDER_KINDS:
        return {}
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path / 'meta.json'}: not a readable run meta.json ({exc})") from None
    return meta if isinstance(meta, dict) else {}


def _analyse(
    source: RunInput,
    name: str | None,
    tags: dict[str, str],
    config_path: Path | None,
    gpu_hours: float | None,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], list[Any], pd.DataFrame | None]:
    path, kind, cycle = source.root, source.kind, source.cycle
    meta = _read_meta(path, kind)
    # The same analysis as `mlprof analyze` of the same input: a run folder's counters are
    # joined (files without a sample left out with a note), the traces stay in memory for
    # the per-name totals and the Parquet cache.
    result = analyze(
        source.traces,
        config=config_path,
        counters="auto" if kind in _RUN_FOLDER_KINDS else None,
        keep_traces=True,
        on_progress=on_progress,
    )
    analysis = result.analysis
    traces = [ra.trace for ra in analysis.ranks]
    counters = analysis.counters
    summary = job_step_summary(analysis)

    all_tags = (
        {str(k): str(v) for k, v in (meta.get("tags") or {}).items()} if isinstance(meta.get("tags"), dict) else {}
    )
    all_tags.update(tags)
    if cycle is not None:
        all_tags["cycle"] = str(cycle)
    gpu_names, gpu_count = _gpus(analysis, meta)
    wall_s, wall_source = _wall_s(analysis, meta)
    if gpu_hours is not None:
        if gpu_hours < 0:
            raise UsageError("--gpu-hours: must be zero or more")
        hours: float | None = float(gpu_hours)
        hours_source = "given"
    else:
        hours = wall_s * gpu_count / 3600.0 if wall_s is not None else None
        hours_source = wall_source
    started, started_source = _started_at(analysis, meta, source.traces, prefer_trace=cycle is not None)
    findings = finding_rows(analysis)
    trace_findings = [f for f in findings if f["source"] == "trace"]
    top = trace_findings[0] if trace_findings else (findings[0] if findings else None)
    diagnosis = analysis.diagnosis
    plan = diagnosis.plan if diagnosis is not None else []
    step_ms_now = round(diagnosis.step_ms, 6) if diagnosis is not None else None
    first = traces[0].meta
    git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
    extra: dict[str, Any] = {
        "meta": {k: meta[k] for k in _META_KEYS if k in meta},
        "memory": memory_summary(analysis),
        "started_at_source": started_source,
        "inputs": [str(p) for p in source.files],
        "cached_ranks": [t.meta.rank if t.meta.rank is not None else 0 for t in traces],
    }
    if cycle is not None:
        extra["cycle"] = cycle
    run_name = name or str(meta.get("run") or _default_name(path))
    run = {
        "name": f"{run_name} #cycle {cycle}" if cycle is not None else run_name,
        "ingested_at": datetime.now(timezone.utc),
        "started_at": started,
        "source_path": str(source.traces.resolve()),
        "source_kind": kind,
        "trace_format": first.format,
        "gpu": gpu_names,
        "gpu_count": gpu_count,
        "world_size": int(first.world_size or meta.get("world_size") or len(traces)),
        "ranks": len(traces),
        "steps_analysed": summary.steps_analysed,
        "step_source": first.step_source,
        "step_ms_median": summary.median_ms,
        "step_ms_mean": summary.mean_ms,
        "gpu_busy_pct": summary.gpu_busy_pct,
        "wall_s": wall_s,
        "gpu_hours": hours,
        "gpu_hours_source": hours_source,
        "top_rule": top["rule"] if top else None,
        "top_title": top["title"] if top else None,
        "top_speedup": top["expected_speedup"] if top else None,
        "plan_speedup": plan[-1].cumulative_speedup if plan else 1.0,
        "plan_step_ms": plan[-1].step_ms_after if plan else step_ms_now,
        "git_commit": (git or {}).get("commit"),
        "mlprof_version": __version__,
        "report_json": _json(result.data),  # the report itself, as `mlprof analyze -f json` has it
        "extra_json": _json(extra),
    }
    children = {
        "tags": [{"key": k, "value": v} for k, v in sorted(all_tags.items())],
        "steps": step_rows(analysis),
        "findings": [
            {**{k: v for k, v in f.items() if k != "detail"}, "detail_json": _json(f["detail"])} for f in findings
        ],
        "counters": [
            {**{k: v for k, v in c.items() if k != "throttle"}, "throttle_json": _json(c["throttle"])}
            for c in counter_rows(analysis.counter_summary)
        ],
        "ops": op_rows(analysis),
    }
    return run, children, traces, counters


_META_KEYS = (
    "run",
    "tags",
    "start_time",
    "command_line",
    "hostname",
    "git",
    "versions",
    "gpus",
    "duration_s",
    "steps_taken",
    "world_size",
    "notes",
)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _default_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".json", ".pt.trace", ".sqlite"):
        name = name.removesuffix(suffix)
    return name or str(path)


def _gpus(analysis: Any, meta: dict[str, Any]) -> tuple[str, int]:
    """GPU model(s) that ran kernels, and how many GPUs the job used (0: a CPU-only recording)."""
    names: list[str] = []
    count = 0
    for ra in analysis.ranks:
        gpu = ra.trace.gpu
        used = set(gpu.loc[(gpu["kind"] != "sync").to_numpy(), "device"].unique().tolist()) if len(gpu) else set()
        count += len(used)
        for d in ra.trace.meta.devices:
            if d.id in used and d.name not in names:
                names.append(d.name)
        if used and not names and ra.trace.meta.devices:
            names.append(ra.trace.meta.devices[0].name)
    models = (meta.get("gpus") or {}).get("models") if isinstance(meta.get("gpus"), dict) else None
    if not names and models:
        names = [str(m) for m in dict.fromkeys(models)]
    if count == 0:
        return (", ".join(names) + " (no kernels recorded)" if names else "none (CPU only)"), 0
    return ", ".join(names) or "unknown GPU", count


def _wall_s(analysis: Any, meta: dict[str, Any]) -> tuple[float | None, str]:
    duration = meta.get("duration_s")
    if isinstance(duration, (int, float)) and duration > 0:
        return float(duration), "meta.json duration_s"
    spans = [ra.span for ra in analysis.ranks if ra.span[1] > ra.span[0]]
    if not spans:
        return None, "unknown"
    return (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e9, "trace span"


def _started_at(analysis: Any, meta: dict[str, Any], path: Path, *, prefer_trace: bool = False) -> tuple[datetime, str]:
    """When the run started; for one profiling cycle of several, when that cycle's trace starts."""
    ns = meta.get("start_time_ns")
    starts = [s for s in (_epoch_start_ns(ra) for ra in analysis.ranks) if s is not None]
    if prefer_trace and starts:
        return _dt(min(starts)), "trace clock"
    if isinstance(ns, int) and ns >= EPOCH_MIN_NS:
        return _dt(ns), "meta.json start_time_ns"
    if starts:
        return _dt(min(starts)), "trace clock"
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc), "file modification time"


def _epoch_start_ns(rank_analysis: Any) -> int | None:
    """A rank's first event on the Unix-epoch clock: its ``ts`` when already epoch, else ``ts +
    baseTimeNanoseconds`` (Kineto traces whose timestamps count from a base time); None when neither."""
    start = int(rank_analysis.span[0])
    if start >= EPOCH_MIN_NS:
        return start
    base = rank_analysis.trace.meta.base_time_ns
    if base and start + int(base) >= EPOCH_MIN_NS:
        return start + int(base)
    return None


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
