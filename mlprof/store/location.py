"""Where the run store lives: a database URL and, beside it, the Parquet cache of event tables.

``--store`` / ``MLPROF_STORE`` take a file path (a SQLite database, created on first
ingest) or a database URL (``sqlite:///...``, ``postgresql://...``,
``postgresql+psycopg://...``). Without either, the store is ``~/.mlprof/mlprof.db``.

The Parquet cache holds each run's parsed event tables so the dashboard never re-parses
JSON. For a SQLite store it is the folder ``<db name without suffix>.parquet`` next to
the database file; for a server database it is ``MLPROF_CACHE`` if set (point a team at
shared storage), else ``~/.mlprof/cache/<host>_<port>_<database>``. ``MLPROF_CACHE``
overrides the folder for SQLite stores too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from mlprof.errors import UsageError

DEFAULT_STORE = Path("~/.mlprof/mlprof.db")
STORE_ENV = "MLPROF_STORE"
CACHE_ENV = "MLPROF_CACHE"
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class StoreLocation:
    """A resolved store: the SQLAlchemy URL, its dialect and the Parquet cache folder."""

    url: URL
    cache_dir: Path

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite store (None for in-memory or server stores)."""
        if self.dialect != "sqlite" or not self.url.database or self.url.database == ":memory:":
            return None
        return Path(self.url.database)

    def display(self) -> str:
        """The URL with any password hidden, for messages."""
        return self.url.render_as_string(hide_password=True)


def resolve_store(store: str | None = None) -> StoreLocation:
    """The store named by ``store``, else ``MLPROF_STORE``, else the default SQLite file."""
    text = store if store else os.environ.get(STORE_ENV) or str(DEFAULT_STORE)
    text = text.strip()
    if not text:
        raise UsageError("--store: empty store name; give a file path or a database URL")
    if _URL_SCHEME.match(text):
        try:
            url = make_url(text)
        except ArgumentError as exc:
            raise UsageError(f"--store: cannot read the URL ({exc})") from None
    else:
        path = Path(text).expanduser().resolve()
        url = URL.create("sqlite", database=str(path))
    backend = url.get_backend_name()
    if backend == "postgresql":
        if url.drivername != "postgresql+psycopg":
            url = url.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise UsageError(f"--store: unsupported database '{backend}'; use a SQLite file or a postgresql:// URL")
    return StoreLocation(url=url, cache_dir=_cache_dir(url))


def _cache_dir(url: URL) -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser().resolve()
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database)
        return db.with_name(db.stem + ".parquet")
    host = re.sub(r"[^A-Za-z0-9.-]", "_", url.host or "local")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.database or "default")
    return Path("~/.mlprof/cache").expanduser() / f"{host}_{url.port or 5432}_{name}"
