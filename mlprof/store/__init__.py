"""The run store: past runs' summaries in SQLite (default) or PostgreSQL, event tables in Parquet.

``ingest`` analyses a trace and records it; :mod:`mlprof.store.queries` reads runs back;
:mod:`mlprof.store.schema` defines and upgrades the tables; :mod:`mlprof.store.location`
resolves ``--store``/``MLPROF_STORE``; :mod:`mlprof.store.parquet_cache` keeps the parsed
event tables.
"""

from __future__ import annotations

from mlprof.store.ingest import IngestResult, ingest, ingest_runs, parse_tags
from mlprof.store.location import StoreLocation, resolve_store

__all__ = ["IngestResult", "StoreLocation", "ingest", "ingest_runs", "parse_tags", "resolve_store"]
