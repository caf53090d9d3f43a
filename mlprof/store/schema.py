"""The run store's tables and their versions; an older store is upgraded in place.

A store is built by running the migrations in order, so a new store and an upgraded
one have exactly the same tables. ``schema_version`` holds one row with the version.
Upgrades run in one transaction under a lock (``BEGIN IMMEDIATE`` on SQLite, an
advisory lock on PostgreSQL), so processes that open an old store at once upgrade it
once. Times in ``steps`` are int64 ns; figures on ``runs`` are ms, % or hours as named.

Tables (version 2):

``runs``               one row per ingested run; ``run_key`` is the SHA-256 of the inputs
                       (unique: the same inputs are one run); ``report_json`` is the full
                       ``mlprof analyze --format json`` report; ``extra_json`` the run's
                       meta.json facts and the memory curve fit
``run_tags``           key/value tags (from meta.json and ``--tag``)
``steps``              per step and rank (rank -1: the job's view, averaged over ranks):
                       start, duration and the seven attribution categories, ns
``findings``           ranked findings (position 0 first) with speedup, plan saving and the
                       full finding (evidence, fix) as JSON
``counter_summaries``  per GPU: NVML/DCGM utilisation, memory, SM activity, throttling
``ops``                (v2) per kernel and per host op name: count, total and per-step ns
                       inside the analysed steps (the Compare page's "what changed")
``runs.model_flops_per_step`` (v2) the model's FLOPs per step when known (MFU)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.errors import MlprofError
from mlprof.store.identity import check_store_tables, stamp_sqlite

SCHEMA_VERSION = 2
_PG_LOCK_KEY = 0x6D6C70726F66  # "mlprof": serialises schema upgrades on a shared server


def define_tables(metadata: MetaData, version: int = SCHEMA_VERSION) -> dict[str, Table]:
    """The tables as they are at ``version`` (migrations create older shapes from here)."""
    version_table = Table(
        "schema_version",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("version", Integer, nullable=False),
        Column("upgraded_at", DateTime(timezone=True), nullable=False),
    )
    run_columns: list[Column[Any]] = [
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_key", String(64), nullable=False, unique=True),
        Column("name", Text, nullable=False),
        Column("ingested_at", DateTime(timezone=True), nullable=False),
        Column("started_at", DateTime(timezone=True), nullable=True),
        Column("source_path", Text, nullable=False),
        Column("source_kind", String(16), nullable=False),
        Column("trace_format", String(32), nullable=True),
        Column("gpu", Text, nullable=False),
        Column("gpu_count", Integer, nullable=False),
        Column("world_size", Integer, nullable=False),
        Column("ranks", Integer, nullable=False),
        Column("steps_analysed", Integer, nullable=False),
        Column("step_source", String(64), nullable=True),
        Column("step_ms_median", Float, nullable=True),
        Column("step_ms_mean", Float, nullable=True),
        Column("gpu_busy_pct", Float, nullable=True),
        Column("wall_s", Float, nullable=True),
        Column("gpu_hours", Float, nullable=True),
        Column("gpu_hours_source", String(32), nullable=True),
        Column("top_rule", String(32), nullable=True),
        Column("top_title", Text, nullable=True),
        Column("top_speedup", Float, nullable=True),
        Column("plan_speedup", Float, nullable=True),
        Column("plan_step_ms", Float, nullable=True),
        Column("git_commit", String(64), nullable=True),
        Column("mlprof_version", String(32), nullable=False),
        Column("report_json", Text, nullable=False),
        Column("extra_json", Text, nullable=False),
    ]
    if version >= 2:
        run_columns.append(Column("model_flops_per_step", Float, nullable=True))
    runs = Table("runs", metadata, *run_columns, Index("ix_runs_started", "started_at"))
    run_tags = Table(
        "run_tags",
        metadata,
        Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        Column("key", String(200), primary_key=True),
        Column("value", Text, nullable=False),
        Index("ix_run_tags_kv", "key", "value"),
    )
    steps = Table(
        "steps",
        metadata,
        Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        Column("rank", Integer, primary_key=True),
        Column("step", BigInteger, primary_key=True),
        Column("start_ns", BigInteger, nullable=False),
        Column("dur_ns", BigInteger, nullable=False),
        *(Column(f"{c}_ns", BigInteger, nullable=False) for c in CATEGORIES),
    )
    findings = Table(
        "findings",
        metadata,
        Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        Column("position", Integer, primary_key=True),
        Column("rule", String(32), nullable=False),
        Column("name", Text, nullable=False),
        Column("category", String(64), nullable=False),
        Column("severity", String(16), nullable=False),
        Column("title", Text, nullable=False),
        Column("expected_speedup", Float, nullable=False),
        Column("time_lost_ms_per_step", Float, nullable=False),
        Column("confidence", String(16), nullable=False),
        Column("saves_ms_per_step", Float, nullable=True),
        Column("cumulative_speedup", Float, nullable=True),
        Column("source", String(16), nullable=False),
        Column("detail_json", Text, nullable=False),
    )
    counters = Table(
        "counter_summaries",
        metadata,
        Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        Column("device", Integer, primary_key=True),
        Column("samples", Integer, nullable=False),
        Column("span_s", Float, nullable=True),
        Column("util_mean_pct", Float, nullable=True),
        Column("util_p5_pct", Float, nullable=True),
        Column("util_p95_pct", Float, nullable=True),
        Column("mem_used_max_mib", Float, nullable=True),
        Column("mem_total_mib", Float, nullable=True),
        Column("mem_growth_mib_per_min", Float, nullable=True),
        Column("sm_active_mean", Float, nullable=True),
        Column("throttle_json", Text, nullable=False),
    )
    tables = {
        "schema_version": version_table,
        "runs": runs,
        "run_tags": run_tags,
        "steps": steps,
        "findings": findings,
        "counter_summaries": counters,
    }
    if version >= 2:
        tables["ops"] = Table(
            "ops",
            metadata,
            Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
            Column("kind", String(16), primary_key=True),
            Column("position", Integer, primary_key=True),
            Column("name", Text, nullable=False),
            Column("count", BigInteger, nullable=False),
            Column("total_ns", BigInteger, nullable=False),
            Column("ns_per_step", Float, nullable=False),
        )
    return tables


METADATA = MetaData()
TABLES = define_tables(METADATA)
runs_t = TABLES["runs"]
run_tags_t = TABLES["run_tags"]
steps_t = TABLES["steps"]
findings_t = TABLES["findings"]
counters_t = TABLES["counter_summaries"]
ops_t = TABLES["ops"]
version_t = TABLES["schema_version"]


def _migrate_1(conn: Connection) -> None:
    """The first schema: runs, tags, steps, findings, counter summaries."""
    md = MetaData()
    define_tables(md, version=1)
    md.create_all(conn)


def _migrate_2(conn: Connection) -> None:
    """Per-kernel/op totals for Compare, and the model's FLOPs per step for MFU."""
    ops_t.create(conn)
    conn.execute(text("ALTER TABLE runs ADD COLUMN model_flops_per_step DOUBLE PRECISION"))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_1, 2: _migrate_2}
"""Migration to version N, run on a store at version N - 1 (0: empty database)."""


def stored_version(conn: Connection) -> int:
    """The store's schema version; 0 for a database without mlprof tables."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    row = conn.execute(select(version_t.c.version).where(version_t.c.id == 1)).first()
    return int(row[0]) if row else 0


def ensure_schema(conn: Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the store to ``target`` inside the caller's transaction; returns the version found."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    check_store_tables(conn, _where(conn))
    stamp_sqlite(conn)
    found = stored_version(conn)
    if found > SCHEMA_VERSION:
        raise MlprofError(
            f"the run store is at schema version {found}, newer than this mlprof understands ({SCHEMA_VERSION}); "
            "upgrade mlprof"
        )
    now = datetime.now(timezone.utc)
    for version in range(found + 1, target + 1):
        MIGRATIONS[version](conn)
        if version == 1:
            conn.execute(insert(version_t).values(id=1, version=1, upgraded_at=now))
        else:
            conn.execute(update(version_t).where(version_t.c.id == 1).values(version=version, upgraded_at=now))
    return found


def check_readable(conn: Connection) -> None:
    """Raise a clear error when a read-only viewer meets a store it cannot read as is."""
    check_store_tables(conn, _where(conn))
    found = stored_version(conn)
    if found == 0:
        raise MlprofError("the run store is empty; record runs with 'mlprof ingest PATH' first")
    if found != SCHEMA_VERSION:
        newer = "newer than this mlprof; upgrade mlprof" if found > SCHEMA_VERSION else "older; run 'mlprof ingest'"
        raise MlprofError(f"the run store is at schema version {found} ({newer} to upgrade it in place)")


def _where(conn: Connection) -> str:
    """The database a connection is on, for messages (no password)."""
    return conn.engine.url.render_as_string(hide_password=True)
