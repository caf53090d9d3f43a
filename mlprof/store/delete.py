"""Removing runs from the store: their rows in one transaction, then their Parquet cache folders.

Every row a run owns (tags, steps, findings, counter summaries, op totals, the run
itself) is deleted in one transaction, so a crash leaves the runs whole or gone. Their
cache folders are removed only after the commit (renamed to a ``.stale-`` name first,
so a half-removed folder never sits under a run key): a crash can leave the folder of a
deleted run behind, never a stored run without its folder. Such a leftover is harmless
(nothing refers to it) and is replaced if the same inputs are ingested again.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from mlprof.errors import BadInputError, UsageError
from mlprof.store import parquet_cache
from mlprof.store.engine import open_engine, store_errors
from mlprof.store.location import StoreLocation, resolve_store
from mlprof.store.schema import TABLES, check_readable, runs_t

_RUN_ID = re.compile(r"^(?:run:)?([0-9]+)$")
_CHILD_TABLES = ("run_tags", "steps", "findings", "counter_summaries", "ops")


@dataclass(frozen=True)
class StoredRun:
    """A run as ``mlprof runs delete`` names it before and after deleting."""

    run_id: int
    name: str
    run_key: str
    source_path: str


def parse_run_ids(specs: list[str]) -> list[int]:
    """``["12", "run:7"]`` as ``[12, 7]`` (duplicates dropped, order kept); anything else is a usage error."""
    ids: list[int] = []
    for spec in specs:
        match = _RUN_ID.match(spec.strip())
        if match is None:
            raise UsageError(f"{spec!r}: not a run id; give the numbers `mlprof runs` lists (12 or run:12)")
        if int(match.group(1)) not in ids:
            ids.append(int(match.group(1)))
    return ids


def find_runs(run_ids: list[int], store_url: str | None = None) -> list[StoredRun]:
    """The stored runs with these ids, in the order given; one error naming every id that is not there."""
    location = _existing_store(store_url)
    engine = open_engine(location, read_only=True)
    try:
        with store_errors(location), engine.connect() as conn:
            check_readable(conn)
            return _lookup(conn, run_ids, location)
    finally:
        engine.dispose()


def delete_runs(run_ids: list[int], store_url: str | None = None) -> list[StoredRun]:
    """Delete these runs (all of them or, on any error, none), then their Parquet cache folders."""
    location = _existing_store(store_url)
    engine = open_engine(location)
    try:
        with store_errors(location), engine.begin() as conn:
            check_readable(conn)
            runs = _lookup(conn, run_ids, location)
            ids = [r.run_id for r in runs]
            for name in _CHILD_TABLES:
                table = TABLES[name]
                conn.execute(delete(table).where(table.c.run_id.in_(ids)))
            conn.execute(delete(runs_t).where(runs_t.c.id.in_(ids)))
    finally:
        engine.dispose()
    for run in runs:
        _remove_folder(parquet_cache.run_dir(location.cache_dir, run.run_key))
    return runs


def _remove_folder(folder: Path) -> None:
    if not folder.exists():
        return
    stale = folder.with_name(f".stale-{uuid.uuid4().hex}")
    try:
        os.replace(folder, stale)
    except OSError:
        stale = folder
    shutil.rmtree(stale, ignore_errors=True)


def _existing_store(store_url: str | None) -> StoreLocation:
    location = resolve_store(store_url)
    path = location.sqlite_path
    if location.dialect == "sqlite" and (path is None or not path.is_file()):
        raise BadInputError(f"{location.display()}: no run store here yet; nothing to delete")
    return location


def _lookup(conn: Connection, run_ids: list[int], location: StoreLocation) -> list[StoredRun]:
    cols = (runs_t.c.id, runs_t.c.name, runs_t.c.run_key, runs_t.c.source_path)
    rows = {int(r[0]): r for r in conn.execute(select(*cols).where(runs_t.c.id.in_(run_ids))).all()}
    missing = [i for i in run_ids if i not in rows]
    if missing:
        which = ("run " if len(missing) == 1 else "runs ") + ", ".join(str(i) for i in missing)
        raise UsageError(f"no {which} in {location.display()} (see `mlprof runs`); nothing was deleted")
    return [StoredRun(i, str(rows[i][1]), str(rows[i][2]), str(rows[i][3])) for i in run_ids]
