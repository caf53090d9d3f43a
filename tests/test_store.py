"""The run store against SQLite and a real PostgreSQL server, on real traces.

PostgreSQL: the ``pg`` fixture starts a throwaway server (Debian's binaries, loopback,
a free port, run as the ``postgres`` user when we are root) and skips with the reason
when none can be started. Each test gets its own database.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pg_server import PgServer, start_server
from sqlalchemy import MetaData, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from mlprof.analysis import analyze_job
from mlprof.analyzers.attribution import CATEGORIES
from mlprof.cli import main
from mlprof.errors import MlprofError, UsageError
from mlprof.results.schema import to_json_dict
from mlprof.store import ingest, resolve_store
from mlprof.store import queries as q
from mlprof.store.engine import open_engine
from mlprof.store.schema import (
    SCHEMA_VERSION,
    check_readable,
    define_tables,
    ensure_schema,
    stored_version,
    version_t,
)
from mlprof.trace.loader import load_job

from conftest import SAMPLES, external

REPO = Path(__file__).resolve().parents[1]
NW0 = "pytorch__kineto/resnet50_num_workers_0"
NW4 = "pytorch__kineto/resnet50_num_workers_4"
DLRM = "facebookresearch__param/dlrm_kineto"
BAD = SAMPLES / "scenarios" / "recorded" / "data_starvation" / "bad"
SYNTH = SAMPLES / "synthetic"


class _ExternalPg(PgServer):
    """A server the environment provides (``MLPROF_TEST_POSTGRES_URL``, superuser rights to create databases)."""

    def __init__(self, url: str) -> None:
        self.base = url

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.base.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        pass


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    given = os.environ.get("MLPROF_TEST_POSTGRES_URL")
    if given:
        yield _ExternalPg(given)
        return
    server = start_server()
    if isinstance(server, str):
        pytest.skip(f"no PostgreSQL server could be started: {server}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh store URL of each kind; the Parquet cache in tmp_path for both."""
    monkeypatch.setenv("MLPROF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLPROF_STORE", raising=False)
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    server: PgServer = request.getfixturevalue("pg")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


def _conn(url: str):
    return open_engine(resolve_store(url), read_only=True).connect()


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MLPROF_CACHE"] = str(tmp_path / "cache")
    env.pop("MLPROF_STORE", None)
    return env


# --- what one ingest records --------------------------------------------------------------------


def test_ingest_records_what_analyze_reports(store: str, tmp_path: Path) -> None:
    path = external(NW0)
    result = ingest(path, tags={"project": "resnet"}, store_url=store)
    assert result.created and result.name == "resnet50_num_workers_0"
    report = to_json_dict(analyze_job(load_job(path), str(path)))

    with _conn(store) as conn:
        run = q.get_run(conn, result.run_id)
        assert run is not None
        assert run["steps_analysed"] == 6
        assert run["step_ms_median"] == pytest.approx(152.469, abs=1e-3)
        assert run["step_ms_median"] == report["breakdown"]["step_time_ms"]["median"]
        assert run["gpu_busy_pct"] == report["breakdown"]["gpu_busy_pct"]
        assert run["gpu"] == "Tesla V100-DGXS-32GB" and run["gpu_count"] == 1
        # the replayed ranking (issue 13): CUDA graphs first on this host-paced step, then DATA001
        assert run["top_rule"] == report["findings"][0]["rule"] == "LAUNCH001"
        assert run["top_speedup"] == report["findings"][0]["expected_speedup"]
        assert run["plan_speedup"] == report["plan"][-1]["cumulative_speedup"]
        assert run["tags"] == {"project": "resnet"}
        assert run["report"]["findings"] == report["findings"]
        assert run["started_at"].year == 2021  # the trace's own epoch clock, not the ingest time

        steps = q.run_steps(conn, result.run_id)
        assert list(steps["step"]) == [s["step"] for s in report["steps"]]
        cat_sum = steps[[f"{c}_ns" for c in CATEGORIES]].sum(axis=1)
        assert (cat_sum == steps["dur_ns"]).all()  # the attribution adds up, as stored
        findings = q.run_findings(conn, result.run_id)
        assert [f["rule"] for f in findings] == [f["rule"] for f in report["findings"]]
        assert findings[0]["saves_ms_per_step"] == report["plan"][0]["saves_ms_per_step"]
        assert any("num_workers" in f["detail"]["fix"] for f in findings if f["rule"] == "DATA001")
        ops = q.run_ops(conn, result.run_id)
        kernels = ops[ops["kind"] == "kernel"]
        assert len(kernels) > 10 and kernels["ns_per_step"].is_monotonic_decreasing

    # the Parquet cache holds the parsed tables, identical to a fresh parse
    trace = load_job(path)[0]
    folder = resolve_store(store).cache_dir / result.run_key / "rank0"
    gpu = pq.read_table(folder / "gpu.parquet").to_pandas()
    assert len(gpu) == len(trace.gpu)
    np.testing.assert_array_equal(gpu["ts"].to_numpy(), trace.gpu["ts"].to_numpy())
    assert list(gpu["name"].astype(str)[:50]) == list(trace.gpu["name"].astype(str)[:50])


def test_stored_rows_are_the_reports_figures_on_bundled_traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are built from the typed results (findings, plan, step summary, counter summaries); they say what
    the JSON report of the same input says, and the step times are the trace JSON's own ProfilerStep ranges."""
    import mlprof

    monkeypatch.setenv("MLPROF_CACHE", str(tmp_path / "cache"))
    url = str(tmp_path / "runs.db")
    folder = tmp_path / "with_counters"
    folder.mkdir()
    shutil.copy(SAMPLES / "synthetic" / "data_starvation.json.gz", folder / "trace.rank0.json.gz")
    shutil.copy(Path(__file__).parent / "data" / "counters" / "nvidia_smi_units.csv", folder / "counters.rank0.csv")
    (folder / "meta.json").write_text(json.dumps({"run": "starved"}))
    result = ingest(folder, store_url=url)
    report = mlprof.analyze(folder).data
    doc = json.loads(gzip.decompress((SAMPLES / "synthetic" / "data_starvation.json.gz").read_bytes()))
    json_ms = sorted(e["dur"] / 1000 for e in doc["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#"))
    with _conn(url) as conn:
        run = q.get_run(conn, result.run_id)
        assert run is not None
        assert run["steps_analysed"] == report["breakdown"]["steps_analysed"] == len(json_ms) == 6
        assert (
            run["step_ms_median"]
            == report["breakdown"]["step_time_ms"]["median"]
            == pytest.approx(float(np.median(json_ms)), abs=1e-6)
        )
        assert run["step_ms_mean"] == report["breakdown"]["step_time_ms"]["mean"]
        assert run["gpu_busy_pct"] == report["breakdown"]["gpu_busy_pct"]
        assert run["top_rule"] == report["findings"][0]["rule"] == "DATA001"
        assert run["top_speedup"] == report["findings"][0]["expected_speedup"]
        assert run["plan_speedup"] == report["plan"][-1]["cumulative_speedup"]
        assert run["plan_step_ms"] == report["plan"][-1]["step_ms_after"]
        findings = q.run_findings(conn, result.run_id)
        expected = [*report["findings"], *report["counters"]["findings"]]
        assert [f["detail"] for f in findings] == expected  # each finding as the report has it
        for row, f in zip(findings, expected, strict=True):
            assert (row["rule"], row["expected_speedup"], row["time_lost_ms_per_step"], row["severity"]) == (
                f["rule"],
                f["expected_speedup"],
                f["time_lost_ms_per_step"],
                f["severity"],
            )
        assert findings[0]["saves_ms_per_step"] == report["plan"][0]["saves_ms_per_step"]
        counters = q.run_counters(conn, result.run_id)
        devices = report["counters"]["devices"]
        assert len(counters) == len(devices) == 2
        for row, d in zip(counters.to_dict("records"), devices, strict=True):
            for key in ("device", "samples", "util_mean_pct", "mem_used_max_mib", "mem_total_mib"):
                assert row[key] == d[key], key


def test_same_inputs_twice_is_one_run(store: str) -> None:
    path = SYNTH / "data_starvation.json.gz"
    first = ingest(path, store_url=store)
    again = ingest(path, name="other name", tags={"x": "y"}, store_url=store)
    assert first.created and not again.created
    assert again.run_id == first.run_id and again.run_key == first.run_key
    with _conn(store) as conn:
        counts = q.count_rows(conn)
        assert counts["runs"] == 1
        assert counts["steps"] == 2 * len(q.run_steps(conn, first.run_id))  # rank 0 and the job view, once


def test_run_folder_and_multi_rank_job(store: str) -> None:
    folder = ingest(BAD, tags={"team": "perf"}, store_url=store)
    dlrm = ingest(external(DLRM), store_url=store)
    meta = json.loads((BAD / "meta.json").read_text())
    with _conn(store) as conn:
        run = q.get_run(conn, folder.run_id)
        assert run is not None
        assert run["name"] == "bad" and run["source_kind"] == "run_folder"
        assert run["tags"] == {"scenario": "data_starvation", "variant": "bad", "team": "perf"}
        assert run["git_commit"] == meta["git"]["commit"]
        assert run["wall_s"] == pytest.approx(meta["duration_s"])
        assert run["gpu"] == "none (CPU only)" and run["gpu_count"] == 0 and run["gpu_hours"] == 0
        assert run["top_rule"] == "DATA001" and run["top_speedup"] == pytest.approx(2.688, abs=1e-3)

        job = q.get_run(conn, dlrm.run_id)
        assert job is not None
        assert job["ranks"] == 8 and job["world_size"] == 8 and job["gpu_count"] == 8
        assert job["top_rule"] == "LAUNCH001"  # replayed (issue 13); COMM002 by attribution
        steps = q.run_steps(conn, dlrm.run_id, rank=None)
        assert sorted(steps["rank"].unique()) == [-1, *range(8)]
        # the job row is the mean over ranks of each step
        ranks = steps[steps["rank"] >= 0]
        assert steps[steps["rank"] == -1]["dur_ns"].iloc[0] == round(ranks["dur_ns"].mean())


def test_runs_filters_and_sort(store: str) -> None:
    a = ingest(external(NW0), tags={"project": "resnet", "workers": "0"}, store_url=store)
    b = ingest(external(NW4), tags={"project": "resnet", "workers": "4"}, store_url=store)
    c = ingest(BAD, store_url=store)
    with _conn(store) as conn:
        by_time = q.list_runs(conn, sort="step_time")
        assert list(by_time["id"]) == [a.run_id, b.run_id, c.run_id]  # 152.5, 125.1, 18.9 ms
        assert list(q.list_runs(conn, tags={"workers": "4"})["id"]) == [b.run_id]
        assert list(q.list_runs(conn, tags={"project": "resnet", "workers": "0"})["id"]) == [a.run_id]
        assert set(q.list_runs(conn, gpu="v100")["id"]) == {a.run_id, b.run_id}
        since = pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime()
        assert list(q.list_runs(conn, since=since)["id"]) == [c.run_id]
        # values are bound parameters: quotes and wildcards are text, not SQL
        assert len(q.list_runs(conn, tags={"project": "x' OR '1'='1"})) == 0
        assert len(q.list_runs(conn, name="%")) == 0


# --- atomicity, concurrency, schema versions ---------------------------------------------------


def test_crash_mid_ingest_leaves_no_run(store: str, tmp_path: Path) -> None:
    path = SYNTH / "comm_exposed.json.gz"
    code = (
        "import os, sys\n"
        "from mlprof.store.ingest import ingest\n"
        "ingest(sys.argv[1], store_url=sys.argv[2], _before_commit=lambda: os._exit(17))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), store], env=_env(tmp_path), capture_output=True, timeout=120
    )
    assert proc.returncode == 17, proc.stderr.decode()[-500:]
    with _conn(store) as conn:
        assert stored_version(conn) == SCHEMA_VERSION  # the schema was committed on its own, first
        assert q.count_rows(conn) == dict.fromkeys(q.count_rows(conn), 0)
    again = ingest(path, store_url=store)
    assert again.created
    with _conn(store) as conn:
        assert q.count_rows(conn)["runs"] == 1


def test_concurrent_ingests_from_processes(store: str, tmp_path: Path) -> None:
    # two different runs and the same input twice, started together (each process pays its Python start-up:
    # four, not six, keeps the race and the distinct inserts at two thirds of the time)
    names = ["comm_exposed", "healthy", "data_starvation", "data_starvation"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mlprof", "ingest", str(SYNTH / f"{n}.json.gz"), "--store", store],
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in names
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [o[1] for o in outputs]
    recorded = [o[0] for o in outputs if " recorded in " in o[0]]
    already = [o[0] for o in outputs if "already recorded" in o[0]]
    assert len(recorded) == 3 and len(already) == 1
    with _conn(store) as conn:
        runs = q.list_runs(conn)
        assert sorted(runs["name"]) == ["comm_exposed", "data_starvation", "healthy"]
        counts = q.count_rows(conn)
        assert counts["steps"] == sum(len(q.run_steps(conn, int(i), rank=None)) for i in runs["id"])
        keys = [q.run_key(conn, int(i)) for i in runs["id"]]
    cache = resolve_store(store).cache_dir
    assert sorted(p.name for p in cache.iterdir()) == sorted(keys)  # no temporary or duplicate folders


def test_schema_upgrades_in_place(store: str) -> None:
    engine = open_engine(resolve_store(store))
    v1 = define_tables(MetaData(), version=1)
    with engine.begin() as conn:
        ensure_schema(conn, target=1)
        assert stored_version(conn) == 1
        conn.execute(
            insert(v1["runs"]).values(
                run_key="0" * 64,
                name="old run",
                ingested_at=pd.Timestamp("2025-01-01", tz="UTC").to_pydatetime(),
                source_path="/old",
                source_kind="file",
                gpu="A100",
                gpu_count=1,
                world_size=1,
                ranks=1,
                steps_analysed=3,
                step_ms_median=10.0,
                mlprof_version="0.0.1",
                report_json="{}",
                extra_json="{}",
            )
        )
    engine.dispose()
    new = ingest(SYNTH / "healthy.json.gz", store_url=store, model_flops_per_step=1e12)
    with _conn(store) as conn:
        assert stored_version(conn) == SCHEMA_VERSION == 2
        runs = q.list_runs(conn, sort="name")
        assert list(runs["name"]) == ["healthy", "old run"]
        flops = dict(conn.execute(text("SELECT name, model_flops_per_step FROM runs")).all())
        assert flops == {"old run": None, "healthy": 1e12}
        assert len(q.run_ops(conn, new.run_id)) > 0

    engine = open_engine(resolve_store(store))
    with engine.begin() as conn:
        conn.execute(update(version_t).values(version=99))
    engine.dispose()
    with pytest.raises(MlprofError, match="schema version 99, newer than this mlprof"):
        ingest(SYNTH / "launch_bound.json.gz", store_url=store)


def test_leftovers_of_dead_ingests_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLPROF_CACHE", str(cache))
    old, fresh = cache / ".tmp-dead", cache / ".tmp-live"
    for folder in (old, fresh):
        (folder / "rank0").mkdir(parents=True)
    os.utime(old, (0, 0))
    result = ingest(SYNTH / "healthy.json.gz", store_url=str(tmp_path / "s.db"))
    assert not old.exists() and fresh.exists()
    assert (cache / result.run_key / "rank0" / "gpu.parquet").is_file()


def test_database_of_another_application_is_refused(store: str) -> None:
    """A database holding another application's tables is not turned into a store (SQLite: see test_store_identity)."""
    if not store.startswith("postgresql"):
        pytest.skip("the SQLite cases (header marker) are in test_store_identity.py")
    from sqlalchemy import create_engine, inspect

    engine = create_engine(resolve_store(store).url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)"))
        conn.execute(text("INSERT INTO accounts VALUES (1, 'alice')"))
    with pytest.raises(MlprofError, match="not an mlprof run store"):
        ingest(SYNTH / "healthy.json.gz", store_url=store)
    with pytest.raises(MlprofError, match="not an mlprof run store"), _conn(store) as conn:
        check_readable(conn)
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == ["accounts"]
        assert conn.execute(text("SELECT owner FROM accounts")).scalars().all() == ["alice"]
    engine.dispose()


def test_dashboard_connection_is_read_only(store: str) -> None:
    ingest(SYNTH / "healthy.json.gz", store_url=store)
    with _conn(store) as conn, pytest.raises(SQLAlchemyError):
        conn.execute(text("DELETE FROM runs"))
    with _conn(store) as conn:
        assert conn.execute(select(q.runs_t.c.name)).scalars().all() == ["healthy"]


def test_dashboard_pages_on_each_database(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    bad = ingest(BAD, store_url=store)
    fixed = ingest(BAD.parent / "fixed", store_url=store)
    monkeypatch.setenv("MLPROF_STORE", store)
    app = str(REPO / "mlprof" / "dashboard" / "app.py")
    for params in ({}, {"page": "run", "run": str(bad.run_id)}, {"page": "compare", "a": str(bad.run_id)}):
        at = AppTest.from_file(app, default_timeout=60)
        for key, value in params.items():
            at.query_params[key] = value
        at.query_params["b"] = str(fixed.run_id)
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.exception]
        metrics = {m.label: m.value for m in at.metric}
        if params.get("page") == "run":
            assert metrics["Mean step"] == "18.97 ms" and at.expander[0].label.startswith("1. DATA001 2.69x")
        elif params.get("page") == "compare":
            assert metrics["Achieved speedup"] == "2.40x"  # median steady step 18.89 -> 7.88 ms
        else:
            assert sorted(at.dataframe[0].value["name"]) == ["bad", "fixed"]


# --- locations and the command line -------------------------------------------------------------


def test_store_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLPROF_CACHE", raising=False)
    monkeypatch.delenv("MLPROF_STORE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    default = resolve_store(None)
    assert default.sqlite_path == tmp_path / ".mlprof" / "mlprof.db"
    assert default.cache_dir == tmp_path / ".mlprof" / "mlprof.parquet"
    monkeypatch.setenv("MLPROF_STORE", str(tmp_path / "team.db"))
    assert resolve_store(None).sqlite_path == tmp_path / "team.db"
    assert resolve_store(str(tmp_path / "x.db")).sqlite_path == tmp_path / "x.db"  # --store wins
    pg = resolve_store("postgresql://u:secret@db.example:5433/perf")
    assert pg.url.drivername == "postgresql+psycopg" and pg.url.port == 5433
    assert "secret" not in pg.display()
    assert pg.cache_dir == tmp_path / ".mlprof" / "cache" / "db.example_5433_perf"
    with pytest.raises(UsageError, match="unsupported database 'mysql'"):
        resolve_store("mysql://u@h/db")


def test_cli_ingest_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("MLPROF_CACHE", str(tmp_path / "cache"))
    db = str(tmp_path / "cli.db")
    assert main(["ingest", str(BAD), "--store", db, "--tag", "project=demo", "--name", "slow loader"]) == 0
    assert "run 1 'slow loader' recorded" in capsys.readouterr().out
    assert main(["ingest", str(BAD), "--store", db]) == 0
    assert "already recorded (same inputs)" in capsys.readouterr().out
    assert main(["ingest", str(SYNTH / "healthy.json.gz"), "--store", db]) == 0
    capsys.readouterr()
    assert main(["runs", "--store", db, "--tag", "project=demo"]) == 0
    out = capsys.readouterr().out
    assert "slow loader" in out and "healthy" not in out and "DATA001" in out and "2.69x" in out
    assert main(["runs", "--store", db, "--sort", "step_time"]) == 0
    out = capsys.readouterr().out
    assert out.index("slow loader") < out.index("healthy")  # 18.9 ms before 10 ms

    not_a_db = tmp_path / "trace.json.gz"
    shutil.copy(SYNTH / "healthy.json.gz", not_a_db)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    for argv, message in (
        (["ingest", str(tmp_path / "missing.json"), "--store", db], "no such file or directory"),
        (["ingest", str(BAD), "--store", db, "--tag", "novalue"], "write tags as key=value"),
        (["runs", "--store", db, "--since", "last week"], "write a date as YYYY-MM-DD"),
        (["runs", "--store", db, "--sort", "speed"], "choose one of"),
        (["runs", "--store", str(tmp_path / "none.db")], "no run store here yet"),
        (["dashboard", "--store", str(tmp_path / "none.db")], "no run store here yet"),
        (["ingest", str(BAD), "--store", str(tmp_path)], "a folder, not a run store"),
        (
            ["ingest", str(BAD), "--store", str(not_a_db)],
            "not an mlprof run store (file is not a database); left unchanged",
        ),
        (["runs", "--store", str(not_a_db)], "(file is not a database)"),
        (
            ["runs", "--store", f"postgresql://u@127.0.0.1:{closed_port}/x"],
            "cannot use the run store (connection failed",
        ),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("mlprof: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists()  # readers never create a store
    assert not_a_db.read_bytes() == (SYNTH / "healthy.json.gz").read_bytes()  # a wrong --store is left as it was
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("trace")) == ["trace.json.gz"]


# --- profiling cycles of a run folder -------------------------------------------------------------


@pytest.fixture(scope="module")
def cycles_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real mlprof.profile run folder with three profiling cycles (CPU torch): steps 2-3, 6-7, 10-11."""
    torch = pytest.importorskip("torch")
    import mlprof

    out = tmp_path_factory.mktemp("cycles")
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = {"wait": 1, "warmup": 1, "active": 2, "every": 4, "repeat": 3}
    with mlprof.profile(name="cont", out_dir=out, tags={"team": "perf"}, summary=False, nvml=False, **schedule) as run:
        for _ in range(13):
            with mlprof.range("forward"):
                loss = model(torch.randn(4, 8)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.step()
    folder = out / "cont"
    assert sorted(p.name for p in (folder / "cycles").iterdir()) == ["2", "3"]
    return folder


def test_each_profiling_cycle_is_its_own_run(store: str, cycles_run: Path, tmp_path: Path) -> None:
    from mlprof.store import ingest_runs

    folder = tmp_path / "cont"  # a copy, so cycle 3 can arrive later as it does while a job runs
    shutil.copytree(cycles_run, folder)
    (folder / "cycles" / "3").rename(tmp_path / "later")
    first = ingest_runs(folder, tags={"project": "x"}, store_url=store)
    assert [(r.cycle, r.name, r.created) for r in first] == [(1, "cont #cycle 1", True), (2, "cont #cycle 2", True)]
    (tmp_path / "later").rename(folder / "cycles" / "3")
    second = ingest_runs(folder, tags={"project": "x"}, store_url=store)
    assert [(r.cycle, r.created) for r in second] == [(1, False), (2, False), (3, True)]
    assert [r.run_id for r in second[:2]] == [r.run_id for r in first]  # idempotent per cycle
    assert len({r.run_key for r in second}) == 3
    alone = ingest(folder / "cycles" / "2", store_url=store)  # a cycle folder named on its own is that cycle
    assert (alone.run_id, alone.cycle, alone.created) == (second[1].run_id, 2, False)

    with _conn(store) as conn:
        runs = [q.get_run(conn, r.run_id) for r in second]
        assert [r["name"] for r in runs if r] == ["cont #cycle 1", "cont #cycle 2", "cont #cycle 3"]
        for k, run in enumerate(runs, 1):
            assert run is not None
            assert run["tags"] == {"team": "perf", "project": "x", "cycle": str(k)}
            assert run["source_kind"] == ("run_folder" if k == 1 else "run_cycle")
            assert run["source_path"] == str(folder.resolve() if k == 1 else (folder / "cycles" / str(k)).resolve())
            assert run["extra"]["meta"]["run"] == "cont" and run["extra"]["cycle"] == k
        steps = [q.run_steps(conn, r.run_id)["step"].tolist() for r in second]
        assert steps == [[2, 3], [6, 7], [10, 11]]  # each run holds its own cycle's steps
        started = [r["started_at"] for r in runs if r]
        assert started[0] < started[1] < started[2]  # each cycle starts when its trace does
    # a stored cycle is found again by `mlprof compare` (its key covers the run folder's meta.json)
    assert main(["compare", str(second[0].run_id), str(second[2].run_id), "--store", store]) == 0


def test_cli_ingest_prints_one_line_per_cycle(
    cycles_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLPROF_CACHE", str(tmp_path / "cache"))
    db = str(tmp_path / "c.db")
    assert main(["ingest", str(cycles_run), "--store", db, "--name", "job"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" recorded in ")[0] for line in lines] == [
        "run 1 'job #cycle 1'",
        "run 2 'job #cycle 2'",
        "run 3 'job #cycle 3'",
    ]


# --- deleting runs --------------------------------------------------------------------------------


def test_delete_runs_removes_rows_and_cache(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep = ingest(SYNTH / "healthy.json.gz", store_url=store)
    gone = [ingest(SYNTH / f"{n}.json.gz", store_url=store) for n in ("data_starvation", "launch_bound")]
    cache = resolve_store(store).cache_dir
    with _conn(store) as conn:
        before = q.count_rows(conn)
    assert all((cache / r.run_key).is_dir() for r in [keep, *gone])

    # unknown ids: one line naming them, nothing deleted (also not the known one given with them)
    assert main(["runs", "delete", str(gone[0].run_id), "98", "run:99", "--store", store, "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlprof: error: no runs 98, 99 in ") and err.count("\n") == 1
    assert main(["runs", "delete", "latest", "--store", store, "--yes"]) == 2
    assert "not a run id" in capsys.readouterr().err
    with _conn(store) as conn:
        assert q.count_rows(conn) == before

    assert main(["runs", "delete", str(gone[0].run_id), f"run:{gone[1].run_id}", "--store", store, "--yes"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"deleted run {gone[0].run_id} 'data_starvation'",
        f"deleted run {gone[1].run_id} 'launch_bound'",
    ]
    with _conn(store) as conn:
        after = q.count_rows(conn)
        assert after["runs"] == 1 and q.get_run(conn, gone[0].run_id) is None
        assert after["steps"] == len(q.run_steps(conn, keep.run_id, rank=None))  # the kept run's rows only
        assert after["findings"] == len(q.run_findings(conn, keep.run_id))
        assert after["ops"] == len(q.run_ops(conn, keep.run_id))
        tag_rows = conn.execute(select(q.run_tags_t.c.run_id)).scalars().all()
        assert set(tag_rows) <= {keep.run_id}
    assert sorted(p.name for p in cache.iterdir()) == [keep.run_key]  # no folder left, not even a stale one
    # the same inputs can be recorded again afterwards
    again = ingest(SYNTH / "data_starvation.json.gz", store_url=store)
    assert again.created and (cache / again.run_key / "rank0" / "gpu.parquet").is_file()


def test_delete_asks_on_a_terminal_and_refuses_without_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pty

    monkeypatch.setenv("MLPROF_CACHE", str(tmp_path / "cache"))
    db = str(tmp_path / "d.db")
    run_id = str(ingest(SYNTH / "healthy.json.gz", store_url=db).run_id)
    command = [sys.executable, "-m", "mlprof", "runs", "delete", run_id, "--store", db]

    piped = subprocess.run(command, env=_env(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert piped.returncode == 2 and piped.stderr.count("\n") == 1
    assert f"would delete run(s) {run_id} 'healthy'; pass --yes" in piped.stderr

    def on_terminal(answer: bytes) -> str:
        controller, terminal = pty.openpty()
        try:
            proc = subprocess.Popen(command, env=_env(tmp_path), stdin=terminal, stdout=subprocess.PIPE, text=True)
            os.write(controller, answer)
            out, _ = proc.communicate(timeout=120)
        finally:
            os.close(controller)
            os.close(terminal)
        assert proc.returncode == 0, out
        return out

    assert "nothing deleted" in on_terminal(b"n\n")
    with _conn(db) as conn:
        assert q.count_rows(conn)["runs"] == 1
    assert f"deleted run {run_id} 'healthy'" in on_terminal(b"y\n")
    with _conn(db) as conn:
        assert q.count_rows(conn)["runs"] == 0


def test_stored_kernel_and_op_times_match_the_raw_trace(tmp_path: Path) -> None:
    """DLRM rank 0 (one ProfilerStep): every stored kernel row is the raw JSON's sum of ``dur`` of the kernels of
    that name launched inside the step, and every op row the sum over cpu_ops starting in it; both the same
    figures `mlprof compare` matches by name."""
    from collections import defaultdict

    from mlprof.analyzers.name_totals import rank_events

    path = next(external("facebookresearch__param/dlrm_kineto").glob("worker0_*.json"))
    events = json.loads(path.read_text())["traceEvents"]
    (step,) = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    lo, hi = step["ts"], step["ts"] + step["dur"]
    launch = {e["args"]["correlation"]: e["ts"] for e in events if e.get("cat") == "cuda_runtime"}
    kernels: dict[str, int] = defaultdict(int)
    ops: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "kernel" and lo <= launch.get(e["args"]["correlation"], e["ts"]) < hi:
            kernels[e["name"]] += round(e["dur"] * 1000)
        elif e.get("cat") == "cpu_op" and lo <= e["ts"] < hi:
            ops[e["name"]] += round(e["dur"] * 1000)
    result = ingest(path, store_url=str(tmp_path / "s.db"))
    with open_engine(resolve_store(str(tmp_path / "s.db"))).connect() as conn:
        stored = q.run_ops(conn, result.run_id)
    assert len(kernels) > 20 and len(ops) > 20
    for kind, truth in (("kernel", kernels), ("op", ops)):
        rows = stored[(stored["kind"] == kind) & (stored["name"] != "(other)")]
        assert len(rows) == min(len(truth), 200)
        assert {n: int(v) for n, v in zip(rows["name"], rows["ns_per_step"], strict=True)} == {
            n: truth[n] for n in rows["name"]
        }
    trace = load_job(path)
    evs, n = rank_events(analyze_job(trace, str(path)).ranks[0])
    assert n == 1 and int(evs.loc[evs["kind"] == "kernel", "dur"].sum()) == sum(kernels.values())
