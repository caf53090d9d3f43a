"""mlprof writes only into a run store it created; readers never write (SQLite files, real commands).

A foreign database named by ``--store`` (a real Nsight Systems export, another
application's database) is refused by every store command with one line and exit 2,
and is byte for byte the same afterwards, with no ``-wal``/``-shm`` or cache beside it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlprof.cli import main
from mlprof.store.identity import APPLICATION_ID
from mlprof.store.schema import ensure_schema

from conftest import SAMPLES, external

TINY = SAMPLES / "cpu_tiny_training.pt.trace.json.gz"
CLOVERLEAF = "hpcgroup__pipit/perlmutter-cloverleaf-cuda.sqlite"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLPROF_STORE", raising=False)
    monkeypatch.delenv("MLPROF_CACHE", raising=False)


def _app_id(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[68:72], "big", signed=True)


def _other_app_db(path: Path, app_id: int = 0) -> Path:
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA application_id = {app_id}")
    con.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
    con.execute("INSERT INTO accounts VALUES (1, 'alice')")
    con.commit()
    con.close()
    return path


def _refused_unchanged(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = db.read_bytes()
    siblings = sorted(p.name for p in db.parent.iterdir())
    for argv in (
        ["ingest", str(TINY), "--store", str(db)],
        ["runs", "--store", str(db)],
        ["runs", "delete", "1", "--yes", "--store", str(db)],
        ["dashboard", "--store", str(db)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("mlprof: error:") and "not an mlprof run store" in err and err.count("\n") == 1, err
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == siblings  # no -wal, -shm, .parquet cache, temp file


def test_nsight_export_is_refused_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "report.sqlite"
    shutil.copy(external(CLOVERLEAF), db)
    _refused_unchanged(db, capsys)


@pytest.mark.parametrize("app_id", [0, 0x0F1E2D3C])
def test_other_application_database_is_refused_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app_id: int
) -> None:
    _refused_unchanged(_other_app_db(tmp_path / "app.db", app_id), capsys)


def test_empty_or_text_file_is_refused_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, content in (("empty.db", b""), ("notes.db", b"my notes\n" * 20)):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        path = folder / name
        path.write_bytes(content)
        _refused_unchanged(path, capsys)


def test_new_store_is_marked_and_follows_the_umask(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "runs.db"
    old = os.umask(0o027)
    try:
        assert main(["ingest", str(TINY), "--store", str(db)]) == 0
    finally:
        os.umask(old)
    assert _app_id(db) == APPLICATION_ID
    assert db.stat().st_mode & 0o777 == 0o640
    assert not [p for p in db.parent.iterdir() if p.name.endswith(".new")]  # the temporary file is gone
    assert main(["runs", "--store", str(db)]) == 0


def test_store_from_before_the_marker_is_accepted_and_stamped(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    db = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        ensure_schema(conn)  # an mlprof store without the application id
        conn.exec_driver_sql("PRAGMA application_id = 0")
    engine.dispose()
    assert _app_id(db) == 0
    assert main(["ingest", str(TINY), "--store", str(db)]) == 0
    assert main(["runs", "--store", str(db)]) == 0
    assert _app_id(db) == APPLICATION_ID


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to drop file-permission rights"
)
def test_read_only_user_lists_runs(tmp_path: Path) -> None:
    """A user who may read the store but not write it or its folder: ``mlprof runs`` works and writes nothing."""
    folder = tmp_path / "shared"
    db = folder / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLPROF_CACHE", None)
    run = [sys.executable, "-m", "mlprof"]
    subprocess.run([*run, "ingest", str(TINY), "--store", str(db), "--name", "shared [/red] run"], env=env, check=True)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for p in [folder, *folder.rglob("*")]:
        os.chown(p, 65534, 65534)
        p.chmod(0o555 if p.is_dir() else 0o444)
    # root without CAP_DAC_OVERRIDE obeys the permission bits: "other" may only read
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    try:
        probe = subprocess.run([*drop, "touch", str(folder / "probe")], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("setpriv could not drop the file-permission capabilities here")
        out = subprocess.run([*drop, *run, "runs", "--store", str(db)], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "shared [/red] run" in out.stdout
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    finally:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
