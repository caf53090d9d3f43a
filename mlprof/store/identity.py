"""Which databases are mlprof run stores: mlprof writes only into a store it created.

``--store`` may name any file or database, and a wrong one used to be turned into a run
store (tables added, WAL switched on) without a word: an Nsight Systems export, another
application's database. Now a store carries mlprof's marker and anything else is refused
with one line, left byte for byte as it was.

SQLite: the marker is the database header's application id (``PRAGMA application_id``,
bytes 68-71 of the file), set when mlprof creates the file. The header is read as plain
bytes, so checking a foreign file never opens it as a database. A store made before the
marker existed (application id 0 and mlprof's ``schema_version`` and ``runs`` tables,
looked at through a read-only connection) is accepted and stamped on its next ingest.
A new store is built in a temporary file and linked into place, so no other process
ever sees a half-made store, and an existing file is never replaced.

PostgreSQL (no header to mark): a database is a store when its ``schema_version`` and
``runs`` tables are mlprof's, or it has no tables at all (a new store); a database that
holds other tables and not mlprof's is refused.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from mlprof.errors import BadInputError, MlprofError

APPLICATION_ID = 0x6D6C7072
"""``PRAGMA application_id`` of every SQLite run store ("mlpr")."""
SQLITE_MAGIC = b"SQLite format 3\x00"
_MARKER_TABLES = {"schema_version": {"id", "version", "upgraded_at"}, "runs": {"id", "run_key", "name"}}


class NotAStoreError(BadInputError):
    """``--store`` names a file or database that mlprof did not create (exit 2; it is left unchanged)."""


def connect_read_only(path: Path, timeout_s: float = 60.0) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``): nothing a reader does can write or switch the journal.

    A store in WAL mode needs its ``-shm`` file, which SQLite creates on first open; a
    user who may read the store but not write its folder cannot create it ("attempt to
    write a readonly database"). Then, when no ``-wal`` file is there (no process has the
    store open for writing), the file is opened ``immutable``: read as it is on disk
    without the shared-memory index. While a writer is at work its ``-wal`` file exists,
    and the error stands (the reader needs the writer's index to read consistently).
    """
    uri = f"file:{quote(str(path))}?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError:
        con.close()
        if Path(f"{path}-wal").exists():
            raise
    return sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=timeout_s, check_same_thread=False)


def check_sqlite_store(path: Path, *, read_only: bool) -> bool:
    """Refuse a file that is not an mlprof store; True when there is no file yet (a writer creates it).

    Reads at most the 100-byte header (and, for an unmarked SQLite file, its table list
    through a read-only connection); never writes.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        if read_only:
            raise BadInputError(f"{path}: no run store here yet; record runs with 'mlprof ingest PATH' first") from None
        return True
    except OSError as exc:
        raise MlprofError(f"{path}: cannot use the run store ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise NotAStoreError(f"{path}: a folder, not a run store; --store must name a SQLite database file")
    if not stat.S_ISREG(st.st_mode):
        raise NotAStoreError(f"{path}: not a regular file; --store must name a SQLite database file")
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise MlprofError(f"{path}: cannot use the run store ({exc.strerror or exc})") from None
    if not header:
        raise _refuse(path, "an empty file mlprof did not create")
    if not header.startswith(SQLITE_MAGIC) or len(header) < 100:
        raise _refuse(path, "file is not a database")
    app_id = int.from_bytes(header[68:72], "big", signed=True)
    if app_id == APPLICATION_ID:
        return False
    if app_id != 0:
        raise _refuse(path, f"a SQLite database of another application, application id {app_id:#x}")
    if not _has_marker_tables_sqlite(path):
        raise _refuse(path, "a SQLite database without mlprof's tables")
    return False  # a store from before the marker: accepted, stamped on its next ingest


def create_sqlite_store(path: Path) -> None:
    """Create an empty, marked store at ``path`` unless a file appeared there meanwhile (then it is checked)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask sets the mode
        con = sqlite3.connect(tmp)
        try:
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            con.execute("PRAGMA journal_mode = WAL")
        finally:
            con.close()
        try:
            os.link(tmp, path)  # atomic, and never replaces a file that is there
        except FileExistsError:
            check_sqlite_store(path, read_only=False)  # another ingest made it first
    except OSError as exc:
        raise MlprofError(f"{path}: cannot create the run store ({exc.strerror or exc})") from None
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def stamp_sqlite(conn: Connection) -> None:
    """Give a store made before the marker existed its application id (inside the writer's transaction)."""
    if conn.dialect.name == "sqlite" and conn.exec_driver_sql("PRAGMA application_id").scalar() != APPLICATION_ID:
        conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")


def check_store_tables(conn: Connection, location: str) -> None:
    """Refuse a database that holds tables but not mlprof's (PostgreSQL; SQLite was checked by its header)."""
    names = set(inspect(conn).get_table_names())
    if not names:
        return
    for table, columns in _MARKER_TABLES.items():
        if table not in names or not columns <= {c["name"] for c in inspect(conn).get_columns(table)}:
            raise NotAStoreError(
                f"{location}: not an mlprof run store (the database holds tables of another application); "
                "left unchanged; give an empty database or an existing store"
            )


def _has_marker_tables_sqlite(path: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        for table, columns in _MARKER_TABLES.items():
            found = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            if not columns <= found:
                return False
        return True
    except sqlite3.Error:
        return False
    finally:
        con.close()


def _refuse(path: Path, why: str) -> NotAStoreError:
    return NotAStoreError(
        f"{path}: not an mlprof run store ({why}); left unchanged; --store must name a store mlprof created "
        "or a new file"
    )
