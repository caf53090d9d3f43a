"""Nsight Systems SQLite exports -> the Trace model.

Real file: the pipit CloverLeaf export (CATALOG.md row 21; nsys 2024.5.1, schema 3.13.2).
Built files: ``sample_traces/generate_nsys.py``'s :class:`Export`, to the schema recent
nsys versions write, and variants of it (older columns, missing tables, no enums).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from mlprof.analysis import analyze_trace
from mlprof.cli import main
from mlprof.errors import BadInputError
from mlprof.trace import Trace, load_job, load_trace
from mlprof.trace.nsys import MEM_KINDS, MEMCPY_KINDS, SYNC_TYPES

from conftest import SAMPLES, external, load_script

CLOVERLEAF = "hpcgroup__pipit/perlmutter-cloverleaf-cuda.sqlite"
SESSION_START = 1696392839587175550  # TARGET_INFO_SESSION_START_TIME.utcEpochNs of the real file


def _generator() -> ModuleType:
    return load_script(SAMPLES / "generate_nsys.py")


GEN = _generator()


# ---- the real export -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cloverleaf() -> Trace:
    return load_trace(external(CLOVERLEAF))


def test_real_export_counts_and_totals(cloverleaf: Trace) -> None:
    trace = cloverleaf
    assert trace.meta.format == "nsys"
    gpu = trace.gpu
    kinds = gpu.groupby("kind", observed=True).agg(n=("dur", "size"), dur=("dur", "sum"))
    assert kinds.loc["kernel", "n"] == 1312 and kinds.loc["kernel", "dur"] == 294_404_540
    assert kinds.loc["memcpy", "n"] == 279 and kinds.loc["memcpy", "dur"] == 9_390_923
    assert kinds.loc["sync", "n"] == 1312 and kinds.loc["sync", "dur"] == 301_136_696
    copies = gpu[gpu["kind"] == "memcpy"]
    assert copies["bytes"].sum() == 225_116_952
    htod = copies[copies["name"] == "Memcpy HtoD (Pageable -> Device)"]
    assert len(htod) == 254 and htod["bytes"].sum() == 225_065_752  # catalog: 254 HtoD, 225 MB
    assert (copies["name"] == "Memcpy DtoH (Device -> Pageable)").sum() == 25
    assert not gpu["is_comm"].any()  # no NCCL
    assert set(gpu["device"]) == {0} and set(gpu.loc[gpu["kind"] == "kernel", "stream"]) == {7}
    assert set(gpu.loc[gpu["kind"] == "sync", "stream"]) == {-1}  # 0xFFFFFFFF: no stream


def test_real_export_runtime_names_lose_api_version(cloverleaf: Trace) -> None:
    runtime = cloverleaf.runtime
    assert len(runtime) == 3048
    counts = runtime.groupby("name", observed=True).size().to_dict()
    assert counts["cudaLaunchKernel"] == 1312
    assert counts["cudaDeviceSynchronize"] == 1312  # catalog: one per launch
    assert counts["cudaMemcpy"] == 279
    assert runtime.loc[runtime["name"] == "cudaDeviceSynchronize", "dur"].sum() == 301_652_956  # ~302 ms
    assert runtime.loc[runtime["name"] == "cudaMalloc", "dur"].sum() == 240_457_583  # 240 ms
    assert not runtime["name"].astype(str).str.contains(r"_v\d{4}$").any()
    assert set(runtime["pid"]) == {1701896}  # globalTid >> 24 & 0xFFFFFF
    # kernels join their launch by correlation id
    kernels = cloverleaf.gpu[cloverleaf.gpu["kind"] == "kernel"]
    launched = runtime[runtime["name"] == "cudaLaunchKernel"]
    assert set(kernels["correlation"]) == set(launched["correlation"])


def test_real_export_times_meta_and_host(cloverleaf: Trace) -> None:
    trace = cloverleaf
    meta = trace.meta
    assert meta.base_time_ns == SESSION_START and not meta.notes
    assert trace.gpu["ts"].min() == SESSION_START + 533_338_240
    assert trace.runtime["ts"].min() == SESSION_START + 264_403_140
    assert [d.id for d in meta.devices] == [0, 1, 2, 3]  # CUDA ordinals (cuDevice), not nsys ids
    assert meta.devices[0].name == "NVIDIA A100-SXM4-80GB" and meta.devices[0].num_sms == 108
    assert meta.devices[0].compute_capability == "8.0"
    assert meta.extra["nsys_version"] == "2024.5.1.113" and meta.extra["nsys_schema"] == "3.13.2"
    host = trace.host
    assert set(host["cat"]) == {"os_runtime"} and len(host) == 1831  # OSRT_API, no NVTX table
    assert meta.step_source == "none"
    threads = trace.threads
    assert ("process_name", 1701896, 0, "cuda-cloverleaf") in set(threads.itertuples(index=False, name=None))


def test_real_export_enums_match_fallbacks() -> None:
    """The built-in enum tables are what nsys 2024.5 writes (used when an export has none)."""
    con = sqlite3.connect(f"file:{external(CLOVERLEAF)}?mode=ro&immutable=1", uri=True)
    try:
        mem = dict(con.execute("SELECT id, label FROM ENUM_CUDA_MEM_KIND"))
        sync = {i: n for i, n in con.execute("SELECT id, name FROM ENUM_CUPTI_SYNC_TYPE")}
        copy = {i: n for i, n in con.execute("SELECT id, name FROM ENUM_CUDA_MEMCPY_OPER")}
    finally:
        con.close()
    assert mem == MEM_KINDS
    assert {i: n.rsplit("_", 1)[-1] for i, n in sync.items()}[4] == "SYNCHRONIZE" and SYNC_TYPES[4] == "Context Sync"
    assert copy[1].endswith("HTOD") and MEMCPY_KINDS[1] == "HtoD"
    assert copy[8].endswith("DTOD") and MEMCPY_KINDS[8] == "DtoD"


def test_real_export_analyses_and_reads_fast(capsys: pytest.CaptureFixture[str]) -> None:
    path = external(CLOVERLEAF)
    start = time.perf_counter()
    trace = load_trace(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"{elapsed:.2f} s to read a 2 MB export"
    analysis = analyze_trace(trace)
    totals = analysis.category_totals()
    assert totals["compute"] == 294_404_540  # one stream, kernels never overlap
    assert main(["analyze", str(path), "--format", "markdown"]) == 0
    assert "nsys" in capsys.readouterr().out


# ---- the generated PyTorch-like export -------------------------------------------------


def test_generated_sample_is_fresh() -> None:
    assert GEN.main(["--check"]) == 0, "run sample_traces/generate_nsys.py"


def test_pytorch_like_export() -> None:
    trace = load_trace(SAMPLES / "synthetic" / "nsys_pytorch_like.sqlite")
    assert trace.meta.step_source == "ProfilerStep"
    assert trace.steps["step"].tolist() == [1, 2, 3]  # text and textId (registered string) both read
    assert (trace.steps["dur"] == 9_900_000).all()
    gpu = trace.gpu
    nccl = gpu[gpu["is_comm"]]
    assert len(nccl) == 3 and set(nccl["stream"]) == {20}
    assert nccl["name"].str.startswith("ncclDevKernel_AllReduce").all()
    copies = gpu[gpu["kind"] == "memcpy"]
    assert set(copies["name"]) == {"Memcpy HtoD (Pageable -> Device)"} and (copies["bytes"] == 64 << 20).all()
    assert set(gpu.loc[gpu["kind"] == "memset", "name"]) == {"Memset (Device)"}
    assert set(gpu.loc[gpu["kind"] == "sync", "name"]) == {"Stream Sync"}
    names = set(trace.runtime["name"])
    assert {"cudaLaunchKernel", "cudaMemcpyAsync", "cudaStreamSynchronize"} <= names
    host = trace.host
    ops = host[host["cat"] == "cpu_op"]
    assert set(ops["name"]) == {"aten::copy_"}  # emit_nvtx ", seq = ..., sizes = ..." stripped
    assert trace.meta.extra["gpu_metrics_samples"] == 90
    assert trace.meta.extra["nvtx_domains"] == {"default": 6}
    analysis = analyze_trace(trace)
    per_step = analysis.steps.set_index("step")
    assert (per_step["comm_exposed"] == 2_000_000).all()  # NCCL runs alone on the GPU
    assert (per_step["compute"] == 4_200_000).all()


def test_step_marker_on_nvtx(tmp_path: Path) -> None:
    ex = GEN.Export()
    ex.add("TARGET_INFO_SESSION_START_TIME", 10**18, "", "")
    for i in range(3):
        ex.nvtx("train_iter", i * 1_000_000, i * 1_000_000 + 900_000)
        corr = ex.runtime("cudaLaunchKernel_v7000", i * 1_000_000 + 10, i * 1_000_000 + 20)
        ex.kernel("k", i * 1_000_000 + 100, i * 1_000_000 + 500, corr)
    path = ex.write(tmp_path / "marker.sqlite")
    trace = load_trace(path, step_marker="^train_iter$")
    assert len(trace.steps) == 3 and trace.steps["ts"].iloc[0] == 10**18


# ---- schema variants -----------------------------------------------------------------


def test_export_without_nvtx_or_session_start(tmp_path: Path) -> None:
    ex = GEN.pytorch_like()
    tables = set(GEN.SCHEMA) - {"NVTX_EVENTS", "TARGET_INFO_SESSION_START_TIME", "GPU_METRICS"}
    trace = load_trace(ex.write(tmp_path / "a.sqlite", tables=tables))
    assert len(trace.host) == 0 and trace.meta.step_source == "none"
    assert any("not epoch" in n for n in trace.meta.notes)
    assert trace.gpu["ts"].min() < 10**12  # relative times kept
    assert len(trace.gpu[trace.gpu["kind"] == "kernel"]) == 15


def test_export_without_enum_tables_uses_builtin_enums(tmp_path: Path) -> None:
    with_enums = load_trace(GEN.pytorch_like().write(tmp_path / "a.sqlite"))
    without = load_trace(GEN.pytorch_like().write(tmp_path / "b.sqlite", enums=False))
    assert set(with_enums.gpu["name"]) == set(without.gpu["name"])
    assert without.meta.step_source == "ProfilerStep"


def test_older_schema_columns(tmp_path: Path) -> None:
    """Older exports: kernels with only shortName, memcpy without src/dst kinds, NVTX text only, no eventType."""
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT);
        CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INT, end INT, deviceId INT, streamId INT,
            correlationId INT, shortName INT);
        CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (start INT, end INT, deviceId INT, streamId INT,
            correlationId INT, bytes INT, copyKind INT);
        CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INT, end INT, globalTid INT, correlationId INT, nameId INT);
        CREATE TABLE NVTX_EVENTS (start INT, end INT, text TEXT, globalTid INT);
        INSERT INTO StringIds VALUES (1, 'ncclKernel_AllReduce_RING_LL_Sum_float'), (2, 'cudaLaunchKernel_v7000');
        INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (100, 200, 1, 13, 5, 1);
        INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY VALUES (300, 400, 1, 13, 6, 1024, 2);
        INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (50, 60, 281474976710656 + (7 << 24) + 8, 5, 2);
        INSERT INTO NVTX_EVENTS VALUES (0, 1000, 'ProfilerStep#4', 281474976710656 + (7 << 24) + 8);
        INSERT INTO NVTX_EVENTS VALUES (0, NULL, 'a mark', 281474976710656 + (7 << 24) + 8);
        """
    )
    con.commit()
    con.close()
    trace = load_trace(path)
    gpu = trace.gpu
    assert gpu["name"].tolist() == ["ncclKernel_AllReduce_RING_LL_Sum_float", "Memcpy DtoH"]
    assert gpu["is_comm"].tolist() == [True, False]
    assert gpu["device"].tolist() == [1, 1]
    assert trace.runtime["pid"].tolist() == [7] and trace.runtime["tid"].tolist() == [8]
    assert trace.runtime["name"].tolist() == ["cudaLaunchKernel"]
    assert trace.steps["step"].tolist() == [4]


def test_empty_export_is_read_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT)")
    con.commit()
    con.close()
    trace = load_trace(path)
    assert len(trace.gpu) == 0 and not trace.has_device_activity
    assert any("no CUDA" in n for n in trace.meta.notes)


def test_rank_from_file_name(tmp_path: Path) -> None:
    path = GEN.pytorch_like().write(tmp_path / "report_rank3.sqlite")
    assert load_trace(path).meta.rank == 3


def test_input_is_not_modified(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    shutil.copy(SAMPLES / "synthetic" / "nsys_pytorch_like.sqlite", path)
    before = path.read_bytes()
    load_trace(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.sqlite"]  # no -journal/-wal left behind


# ---- bad input -----------------------------------------------------------------------


def _truncated(tmp: Path) -> Path:
    data = (SAMPLES / "synthetic" / "nsys_pytorch_like.sqlite").read_bytes()
    path = tmp / "truncated.sqlite"
    path.write_bytes(data[: len(data) // 3])
    return path


def _header_only(tmp: Path) -> Path:
    path = tmp / "header.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 84)
    return path


def _corrupt_pages(tmp: Path) -> Path:
    data = bytearray((SAMPLES / "synthetic" / "nsys_pytorch_like.sqlite").read_bytes())
    data[4096:] = bytes((b * 7 + 13) & 0xFF for b in data[4096:])
    path = tmp / "corrupt.sqlite"
    path.write_bytes(bytes(data))
    return path


def _not_nsys(tmp: Path) -> Path:
    path = tmp / "app.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    return path


def _nsys_rep(tmp: Path) -> Path:
    path = tmp / "report.nsys-rep"
    path.write_bytes(b"\x00not really a report")
    return path


BAD = {f.__name__.lstrip("_"): f for f in (_truncated, _header_only, _corrupt_pages, _not_nsys, _nsys_rep)}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sqlite_is_one_error_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nsys on PATH: the .nsys-rep case must say how to export
    path = BAD[case](tmp_path)
    before = path.read_bytes()
    with pytest.raises(BadInputError):
        load_job(path)
    rc = main(["analyze", str(path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert path.read_bytes() == before
    if case == "nsys_rep":
        assert "nsys export --type sqlite" in err
    if case == "not_nsys":
        assert "not an Nsight Systems export" in err


def test_nsys_rep_is_converted_with_nsys_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``nsys`` (a script that copies the generated export) shows the call and the temp output."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    src = SAMPLES / "synthetic" / "nsys_pytorch_like.sqlite"
    script = bindir / "nsys"
    script.write_text(
        f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\nwhile [ "$1" != "--output" ]; do shift; done\ncp "{src}" "$2"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    report = tmp_path / "run.nsys-rep"
    report.write_bytes(b"report bytes")
    trace = load_trace(report)
    assert trace.meta.path == str(report) and trace.meta.step_source == "ProfilerStep"
    args = (tmp_path / "args").read_text().split()
    assert args[:3] == ["export", "--type", "sqlite"] and args[-1] == str(report)
    assert not args[4].startswith(str(tmp_path))  # written to a temporary folder, never beside the report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args", "bin", "run.nsys-rep"]


def test_is_comm_matches_kineto_regex(tmp_path: Path) -> None:
    ex = GEN.Export()
    for i, name in enumerate(["ncclKernel_AllGather_RING_LL_Sum_int8_t", "ncclDevKernel_SendRecv", "gemm"]):
        corr = ex.runtime("cudaLaunchKernel_v7000", i * 100, i * 100 + 5)
        ex.kernel(name, i * 100 + 10, i * 100 + 50, corr)
    trace = load_trace(ex.write(tmp_path / "c.sqlite"))
    assert np.array_equal(trace.gpu["is_comm"].to_numpy(), [True, True, False])
