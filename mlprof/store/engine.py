"""Database connections for the run store, set up for many writers and read-only viewers.

SQLite: WAL journal (readers never block the writer), a 60 s busy timeout (concurrent
ingests from many processes queue instead of failing), and every write transaction
starts with ``BEGIN IMMEDIATE`` so two writers never deadlock upgrading a read lock.
A read-only engine opens the file with ``mode=ro``. PostgreSQL: psycopg 3; read-only
sessions set ``default_transaction_read_only``. Before anything is opened, a SQLite file is
checked to be an mlprof store (``identity``): a file mlprof did not create is refused unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from mlprof.errors import MlprofError
from mlprof.store.identity import check_sqlite_store, connect_read_only, create_sqlite_store
from mlprof.store.location import StoreLocation

BUSY_TIMEOUT_MS = 60_000

# SQLAlchemy logs a connection that fails to close (e.g. Ctrl-C arriving inside ``close()``) with its
# traceback; with no handler configured Python prints that to stderr ("Exception closing connection ...
# KeyboardInterrupt") before mlprof's one line. The interruption is reported by mlprof; the pool's log
# record goes nowhere unless the application configures logging for it.
logging.getLogger("sqlalchemy.pool").addHandler(logging.NullHandler())


def open_engine(location: StoreLocation, *, read_only: bool = False) -> Engine:
    """An engine on the store; the SQLite folder is created for writers, never for readers."""
    if location.dialect == "sqlite":
        return _sqlite_engine(location, read_only)
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if read_only:
        connect_args["options"] = "-c default_transaction_read_only=on"
    return create_engine(location.url, connect_args=connect_args, pool_pre_ping=True)


def _sqlite_engine(location: StoreLocation, read_only: bool) -> Engine:
    path = location.sqlite_path
    if path is None:
        raise MlprofError("an in-memory SQLite store cannot be shared; give a file path")
    new = check_sqlite_store(path, read_only=read_only)  # nothing is opened or written before this
    if read_only:
        engine = create_engine("sqlite://", poolclass=NullPool, creator=lambda: connect_read_only(path))
    else:
        if new:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MlprofError(f"{path.parent}: cannot create the store folder ({exc.strerror})") from None
            create_sqlite_store(path)
        url = location.url.render_as_string(hide_password=False)
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not read_only:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


@contextmanager
def store_errors(location: StoreLocation) -> Iterator[None]:
    """Turn a database failure (unreachable server, a file that is not a database...) into one error line."""
    try:
        yield
    except DBAPIError as exc:
        detail = " ".join(str(exc.orig if exc.orig is not None else exc).split())
        hint = "; --store must name a SQLite database file or a database URL" if "not a database" in detail else ""
        raise MlprofError(f"{location.display()}: cannot use the run store ({detail}){hint}") from None
