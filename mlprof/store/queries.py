"""Reading the run store: the queries behind ``mlprof runs`` and the dashboard.

Every query is built with SQLAlchemy Core, so values (tags, dates, GPU text, run ids)
travel as bound parameters, never as SQL text. Functions take an open connection and
return plain pandas frames or dicts; they never write.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import and_, exists, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.store.schema import TABLES, counters_t, findings_t, ops_t, run_tags_t, runs_t, steps_t

SORT_KEYS = {
    "date": runs_t.c.started_at,
    "step_time": runs_t.c.step_ms_median,
    "gpu_busy": runs_t.c.gpu_busy_pct,
    "speedup": runs_t.c.top_speedup,
    "name": runs_t.c.name,
    "ingested": runs_t.c.ingested_at,
}
"""``--sort`` keys: column each sorts by (descending for figures and dates, ascending for names)."""

LIST_COLUMNS = (
    "id",
    "name",
    "started_at",
    "ingested_at",
    "gpu",
    "gpu_count",
    "world_size",
    "ranks",
    "steps_analysed",
    "step_ms_median",
    "step_ms_mean",
    "gpu_busy_pct",
    "top_rule",
    "top_title",
    "top_speedup",
    "plan_speedup",
    "plan_step_ms",
    "gpu_hours",
    "git_commit",
    "source_kind",
)

FLOAT_COLUMNS = (
    "step_ms_median",
    "step_ms_mean",
    "gpu_busy_pct",
    "top_speedup",
    "plan_speedup",
    "plan_step_ms",
    "gpu_hours",
)


MAX_LIMIT = 2**62
"""The largest ``LIMIT`` passed to the database; a larger one (``--limit 10**30``) means all rows."""


def list_runs(
    conn: Connection,
    *,
    tags: dict[str, str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    gpu: str | None = None,
    name: str | None = None,
    sort: str = "date",
    limit: int | None = None,
) -> pd.DataFrame:
    """Runs matching every filter, with a ``tags`` column (dict); ``gpu``/``name`` match a substring."""
    cols = [runs_t.c[c] for c in LIST_COLUMNS]
    stmt = select(*cols)
    conditions: list[ColumnElement[bool]] = []
    for key, value in (tags or {}).items():
        conditions.append(_has_tag(key, value))
    if since is not None:
        conditions.append(runs_t.c.started_at >= since)
    if until is not None:
        conditions.append(runs_t.c.started_at < until)
    if gpu:
        conditions.append(func.lower(runs_t.c.gpu).contains(gpu.lower(), autoescape=True))
    if name:
        conditions.append(func.lower(runs_t.c.name).contains(name.lower(), autoescape=True))
    if conditions:
        stmt = stmt.where(and_(*conditions))
    if sort not in SORT_KEYS:
        raise KeyError(sort)
    column = SORT_KEYS[sort]
    order = column.asc() if sort == "name" else column.desc()
    stmt = stmt.order_by(order.nulls_last(), runs_t.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(min(limit, MAX_LIMIT))  # SQLite and PostgreSQL take a 64-bit LIMIT at most
    frame = pd.DataFrame(conn.execute(stmt).mappings().all(), columns=list(LIST_COLUMNS))
    for col in FLOAT_COLUMNS:  # all-NULL columns (e.g. GPU busy of CPU-only runs) come back as object
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["tags"] = _tags_of(conn, [int(i) for i in frame["id"]])
    return frame


def _tags_of(conn: Connection, run_ids: list[int]) -> list[dict[str, str]]:
    """Each run's tags, in the order of ``run_ids``, in one query per 500 runs."""
    found: dict[int, dict[str, str]] = {i: {} for i in run_ids}
    for lo in range(0, len(run_ids), 500):
        chunk = run_ids[lo : lo + 500]
        stmt = (
            select(run_tags_t.c.run_id, run_tags_t.c.key, run_tags_t.c.value)
            .where(run_tags_t.c.run_id.in_(chunk))
            .order_by(run_tags_t.c.run_id, run_tags_t.c.key)
        )
        for run_id, key, value in conn.execute(stmt):
            found[int(run_id)][str(key)] = str(value)
    return [found[i] for i in run_ids]


def _has_tag(key: str, value: str) -> ColumnElement[bool]:
    cond = and_(run_tags_t.c.run_id == runs_t.c.id, run_tags_t.c.key == key, run_tags_t.c.value == value)
    return exists().where(cond)


def all_tags(conn: Connection) -> pd.DataFrame:
    """Every (key, value) tag pair with how many runs carry it."""
    stmt = (
        select(run_tags_t.c.key, run_tags_t.c.value, func.count().label("runs"))
        .group_by(run_tags_t.c.key, run_tags_t.c.value)
        .order_by(run_tags_t.c.key, run_tags_t.c.value)
    )
    return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=["key", "value", "runs"])


def run_tags(conn: Connection, run_id: int) -> dict[str, str]:
    rows = conn.execute(
        select(run_tags_t.c.key, run_tags_t.c.value).where(run_tags_t.c.run_id == run_id).order_by(run_tags_t.c.key)
    )
    return {str(k): str(v) for k, v in rows}


def get_run(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """The run's row with ``report`` and ``extra`` decoded and its ``tags``; None if there is no such run."""
    row = conn.execute(select(runs_t).where(runs_t.c.id == run_id)).mappings().first()
    if row is None:
        return None
    run = dict(row)
    run["report"] = json.loads(run.pop("report_json"))
    run["extra"] = json.loads(run.pop("extra_json"))
    run["tags"] = run_tags(conn, run_id)
    return run


def run_steps(conn: Connection, run_id: int, rank: int | None = -1) -> pd.DataFrame:
    """Per-step attribution in ns (rank -1: the job's view; None: every rank and the job)."""
    stmt = select(steps_t).where(steps_t.c.run_id == run_id)
    if rank is not None:
        stmt = stmt.where(steps_t.c.rank == rank)
    stmt = stmt.order_by(steps_t.c.rank, steps_t.c.step)
    cols = ["run_id", "rank", "step", "start_ns", "dur_ns", *(f"{c}_ns" for c in CATEGORIES)]
    return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=cols)


def run_findings(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """Findings in ranked order, each with its full JSON finding under ``detail``."""
    rows = conn.execute(select(findings_t).where(findings_t.c.run_id == run_id).order_by(findings_t.c.position))
    out = []
    for row in rows.mappings():
        item = dict(row)
        item["detail"] = json.loads(item.pop("detail_json"))
        out.append(item)
    return out


def run_ops(conn: Connection, run_id: int) -> pd.DataFrame:
    stmt = select(ops_t).where(ops_t.c.run_id == run_id).order_by(ops_t.c.kind, ops_t.c.position)
    cols = ["run_id", "kind", "position", "name", "count", "total_ns", "ns_per_step"]
    return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=cols)


def run_counters(conn: Connection, run_id: int) -> pd.DataFrame:
    stmt = select(counters_t).where(counters_t.c.run_id == run_id).order_by(counters_t.c.device)
    frame = pd.DataFrame(conn.execute(stmt).mappings().all())
    return frame


def run_key(conn: Connection, run_id: int) -> str | None:
    row = conn.execute(select(runs_t.c.run_key).where(runs_t.c.id == run_id)).first()
    return str(row[0]) if row else None


def count_rows(conn: Connection) -> dict[str, int]:
    """Rows per table (what tests and ``mlprof runs`` check for consistency)."""
    return {
        name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
        for name, table in TABLES.items()
        if name != "schema_version"
    }


__all__ = [
    "LIST_COLUMNS",
    "SORT_KEYS",
    "all_tags",
    "count_rows",
    "get_run",
    "list_runs",
    "run_counters",
    "run_findings",
    "run_key",
    "run_ops",
    "run_steps",
    "run_tags",
]
