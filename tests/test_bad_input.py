"""Bad input gives one ``mlprof: error:`` line and exit 2; odd but real traces are read.

Every input is a real file under ``tmp_path``. The contract under test: ``mlprof
analyze PATH`` exits 0 when the trace was analysed; on bad input it prints exactly one
line on stderr starting with ``mlprof: error:`` and exits 2, never a traceback, and
never modifies the input.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import mlprof.trace.jsonstream as jsonstream
from mlprof.cli import main
from mlprof.errors import BadInputError
from mlprof.trace import load_job, load_trace

from conftest import X, assert_same_tables, broken_gzip

# ---- helpers: a small valid Kineto trace ---------------------------------------------

BASE_US = 1_712_195_495_505_000


def memory_event(ts: float, addr: int, nbytes: int, total: int) -> dict[str, Any]:
    return {
        "ph": "i",
        "cat": "cpu_instant_event",
        "s": "t",
        "name": "[memory]",
        "pid": 1,
        "tid": 1,
        "ts": ts,
        "args": {
            "Total Reserved": 2 << 20,
            "Total Allocated": total,
            "Bytes": nbytes,
            "Addr": addr,
            "Device Type": 1,
            "Device Id": 0,
        },
    }


def kineto_events(steps: int = 2, *, gpu: bool = True, profiler_step: bool = True, base: int = BASE_US) -> list[Any]:
    """ProfilerStep#1..N with a cpu_op, a launch, a kernel, a memcpy, [memory] events and flows each."""
    events: list[Any] = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "main"}},
    ]
    for i in range(steps):
        t0 = base + i * 1000
        ext, corr = 10 + i, 100 + i
        if profiler_step:
            events.append(X("user_annotation", f"ProfilerStep#{i + 1}", t0, 900))
        else:
            events.append(X("user_annotation", "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", t0, 50))
        events.append(X("cpu_op", "aten::mm", t0 + 100, 200, **{"External id": ext, "Sequence number": i}))
        events.append(memory_event(t0 + 110, 0x7F0000 + i, 4096, 4096 * (i + 1)))
        if gpu:
            events.append(X("cuda_runtime", "cudaLaunchKernel", t0 + 120, 20, correlation=corr, **{"External id": ext}))
            events.append({"ph": "s", "id": corr, "pid": 1, "tid": 1, "ts": t0 + 120, "cat": "ac2g", "name": "ac2g"})
            events.append(
                X(
                    "kernel",
                    "ampere_sgemm_128x64_nn",
                    t0 + 150,
                    300,
                    pid=0,
                    tid=7,
                    device=0,
                    stream=7,
                    correlation=corr,
                    **{"External id": ext, "grid": [1, 2, 3], "block": [128, 1, 1]},
                )
            )
            events.append(
                {"ph": "f", "id": corr, "pid": 0, "tid": 7, "ts": t0 + 150, "cat": "ac2g", "name": "ac2g", "bp": "e"}
            )
            events.append(
                X(
                    "gpu_memcpy",
                    "Memcpy HtoD (Pageable -> Device)",
                    t0 + 500,
                    40,
                    pid=0,
                    tid=7,
                    device=0,
                    stream=7,
                    correlation=corr + 50,
                    bytes=1 << 20,
                )
            )
        events.append(memory_event(t0 + 600, 0x7F0000 + i, -4096, 4096 * i))
    return events


def trace_doc(events: list[Any], **header: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 1,
        "deviceProperties": [{"id": 0, "name": "NVIDIA H100", "totalGlobalMem": 85 << 30, "numSms": 132}],
        **header,
        "traceEvents": events,
    }
    return doc


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_json(path: Path, doc: Any, *, indent: int | None = 1) -> Path:
    return write_bytes(path, json.dumps(doc, indent=indent).encode())


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc: int, err: str) -> None:
    assert rc == 2, f"expected exit 2, got {rc}; stderr={err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {lines!r}"
    assert lines[0].startswith("mlprof: error:"), lines[0]
    assert "Traceback" not in err
    assert "internal error" not in err


def snapshot(path: Path) -> Any:
    """Everything about ``path`` that must not change when mlprof reads it."""
    if path.is_dir():
        return {p.name: snapshot(p) for p in sorted(path.iterdir())}
    if not path.exists():
        return None
    st = path.stat()
    try:
        data = path.read_bytes()
    except OSError:
        data = None
    return (data, st.st_mode, st.st_size, st.st_mtime_ns)


# ---- bad inputs --------------------------------------------------------------------

GOOD_JSON = json.dumps(trace_doc(kineto_events(3)), indent=1).encode()


def _missing(tmp: Path) -> Path:
    return tmp / "nope" / "trace.json"


def _dir_without_traces(tmp: Path) -> Path:
    d = tmp / "job"
    d.mkdir()
    (d / "README.txt").write_text("no traces here\n")
    (d / "notes.csv").write_text("a,b\n1,2\n")
    return d


def _empty_dir(tmp: Path) -> Path:
    d = tmp / "empty_job"
    d.mkdir()
    return d


def _empty(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b"")


def _empty_gz(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json.gz", b"")


def _whitespace(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b"  \n\t\n")


def _text(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b"this is not JSON at all\nsecond line\n")


def _binary(tmp: Path) -> Path:
    junk = bytes((i * 7919 + 13) % 256 for i in range(4096))
    return write_bytes(tmp / "trace.json", b"\x00\x01\x02" + junk)


def _truncated_gzip(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", broken_gzip(GOOD_JSON, "truncated"))


def _gzip_header_only(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", broken_gzip(GOOD_JSON, "header"))


def _corrupt_gzip(tmp: Path) -> Path:
    # written as they are: write_bytes would gzip them again (a valid gzip of binary, another case)
    path = tmp / "trace.json.gz"
    path.write_bytes(broken_gzip(GOOD_JSON * 4, "corrupt"))
    return path


def _gzip_crc_mismatch(tmp: Path) -> Path:
    path = tmp / "trace.json.gz"
    path.write_bytes(broken_gzip(GOOD_JSON, "crc"))
    return path


def _gzip_trailing_garbage(tmp: Path) -> Path:
    path = tmp / "trace.json.gz"
    path.write_bytes(broken_gzip(GOOD_JSON, "trailing"))
    return path


def _gzip_of_text(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json.gz", b"plain text, gzipped, not JSON\n" * 50)


def _gzip_of_binary(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json.gz", bytes(range(256)) * 8)


def _truncated_json(tmp: Path) -> Path:
    cut = GOOD_JSON.index(b'"traceEvents"') + (len(GOOD_JSON) - GOOD_JSON.index(b'"traceEvents"')) // 2
    return write_bytes(tmp / "trace.json", GOOD_JSON[:cut])


def _truncated_json_gz(tmp: Path) -> Path:
    cut = GOOD_JSON.index(b'"traceEvents"') + 200
    return write_bytes(tmp / "trace.json.gz", GOOD_JSON[:cut])


def _truncated_after_key(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'{"schemaVersion": 1, "traceEvents": [')


def _object_not_trace(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'{"a": 1}')


def _array_of_numbers(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b"[1, 2, 3]")


def _array_of_strings(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'["a", "b"]')


def _array_of_arrays(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b"[[1], [2]]")


def _array_of_other_objects(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'[{"a": 1}, {"b": 2}]')


def _string(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'"str"')


def _null(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b"null")


def _number(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b"42")


def _huge_number(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b"1e400")


def _trace_events_not_list(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'{"traceEvents": {"ph": "X"}}')


def _trace_events_number(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'{"traceEvents": 5}')


def _trace_events_of_numbers(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'{"traceEvents": [1, 2, 3]}')


def _top_level_array_with_key(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'[{"traceEvents": [1]}]')


def _nested_trace_events(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", b'{"x": {"traceEvents": [{"ph": "X"}]}}')


def _trailing_garbage(tmp: Path) -> Path:
    return write_bytes(tmp / "trace.json", GOOD_JSON + b"\n}garbage{")


def _sqlite(tmp: Path) -> Path:
    path = tmp / "report.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER, end INTEGER, shortName INTEGER)")
    con.execute("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (1, 2, 3)")
    con.commit()
    con.close()
    return path


def _sqlite_named_json(tmp: Path) -> Path:
    path = _sqlite(tmp)
    return path.rename(tmp / "trace.json")


def _zip(tmp: Path) -> Path:
    path = tmp / "traces.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rank-0.json", GOOD_JSON)
    return path


def _zip_named_json(tmp: Path) -> Path:
    return _zip(tmp).rename(tmp / "trace.json")


def _duplicate_rank_dir(tmp: Path) -> Path:
    d = tmp / "job"
    d.mkdir()
    for name in ("a.json", "b.json.gz"):
        write_json(d / name, trace_doc(kineto_events(2), distributedInfo={"rank": 0, "world_size": 2}))
    return d


def _dir_with_one_bad_trace(tmp: Path) -> Path:
    d = tmp / "job"
    d.mkdir()
    write_json(d / "rank-0.json", trace_doc(kineto_events(2), distributedInfo={"rank": 0, "world_size": 2}))
    write_bytes(d / "rank-1.json", GOOD_JSON[:500])
    return d


def _dir_rank_unknown(tmp: Path) -> Path:
    d = tmp / "job"
    d.mkdir()
    write_json(d / "a.json", trace_doc(kineto_events(2)))
    write_json(d / "b.json", trace_doc(kineto_events(2)))
    return d


def _csv_not_counters(tmp: Path) -> Path:
    return write_bytes(tmp / "gpu.csv", b"a,b\n1,2\n")


def _counters_header_only(tmp: Path) -> Path:
    return write_bytes(tmp / "gpu.csv", b"timestamp, index, utilization.gpu [%]\n")


BAD_INPUTS: dict[str, Callable[[Path], Path]] = {
    f.__name__.lstrip("_"): f
    for f in (
        _missing,
        _dir_without_traces,
        _empty_dir,
        _empty,
        _empty_gz,
        _whitespace,
        _text,
        _binary,
        _truncated_gzip,
        _gzip_header_only,
        _corrupt_gzip,
        _gzip_crc_mismatch,
        _gzip_trailing_garbage,
        _gzip_of_text,
        _gzip_of_binary,
        _truncated_json,
        _truncated_json_gz,
        _truncated_after_key,
        _object_not_trace,
        _array_of_numbers,
        _array_of_strings,
        _array_of_arrays,
        _array_of_other_objects,
        _string,
        _null,
        _number,
        _huge_number,
        _trace_events_not_list,
        _trace_events_number,
        _trace_events_of_numbers,
        _top_level_array_with_key,
        _nested_trace_events,
        _trailing_garbage,
        _sqlite,
        _sqlite_named_json,
        _zip,
        _zip_named_json,
        _duplicate_rank_dir,
        _dir_with_one_bad_trace,
        _dir_rank_unknown,
        _csv_not_counters,
        _counters_header_only,
    )
}


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line(case: str, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = BAD_INPUTS[case](tmp_path)
    before = snapshot(path)
    rc, out, err = run_cli(capsys, "analyze", path, "--format", fmt)
    assert_one_error_line(rc, err)
    assert out == ""
    assert snapshot(path) == before


def test_counters_csv_is_analysed_as_counters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An nvidia-smi log given where a trace is expected is read as counters, not refused."""
    path = write_bytes(tmp_path / "gpu.csv", b"timestamp, index, utilization.gpu [%]\n1700000000, 0, 50 %\n")
    before = snapshot(path)
    rc, out, err = run_cli(capsys, "analyze", path, "--format", "json")
    assert rc == 0 and err == ""
    assert json.loads(out)["counters"]["devices"][0]["util_mean_pct"] == 50.0
    assert snapshot(path) == before


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_bad_input_error(case: str, tmp_path: Path) -> None:
    path = BAD_INPUTS[case](tmp_path)
    with pytest.raises(BadInputError):
        load_job(path)


def test_duplicate_rank_message_names_the_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "analyze", _duplicate_rank_dir(tmp_path), "--format", "json")
    assert_one_error_line(rc, err)
    assert "rank 0" in err


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_bytes(tmp_path / "trace.json", GOOD_JSON)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root (or similar): a mode-0 file is still readable")
        before = snapshot(path)
        rc, out, err = run_cli(capsys, "analyze", path, "--format", "json")
        assert_one_error_line(rc, err)
        assert out == ""
        assert snapshot(path) == before
    finally:
        path.chmod(0o644)


def test_unreadable_file_in_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "job"
    d.mkdir()
    path = write_json(d / "rank-0.json", trace_doc(kineto_events(2)))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root (or similar): a mode-0 file is still readable")
        rc, _, err = run_cli(capsys, "analyze", d, "--format", "json")
        assert_one_error_line(rc, err)
    finally:
        path.chmod(0o644)


def test_unreadable_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "job"
    d.mkdir()
    write_json(d / "rank-0.json", trace_doc(kineto_events(2)))
    d.chmod(0)
    try:
        if os.access(d, os.R_OK):
            pytest.skip("running as root (or similar): a mode-0 directory is still readable")
        rc, _, err = run_cli(capsys, "analyze", d, "--format", "json")
        assert_one_error_line(rc, err)
    finally:
        d.chmod(0o755)


def test_directory_listing_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a mode-0 directory does to a non-root user, simulated so it also runs as root."""
    d = tmp_path / "job"
    d.mkdir()
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:  # the listing reads the folder with os.scandir
        if Path(path) == d:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rc, _, err = run_cli(capsys, "analyze", d, "--format", "json")
    assert_one_error_line(rc, err)
    assert "Permission denied" in err


@pytest.mark.parametrize("name", ["a" * 5000, "d" * 300 + "/trace.json"])
def test_path_too_long(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "analyze", tmp_path / name, "--format", "json")
    assert_one_error_line(rc, err)


@pytest.mark.parametrize("which", ["input", "output"])
def test_path_too_long_with_output(which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_json(tmp_path / "trace.json", trace_doc(kineto_events(2)))
    existing = tmp_path / "report.json"
    existing.write_text("{}")
    long_name = tmp_path / ("a" * 5000)
    args = (long_name, existing) if which == "input" else (trace, long_name)
    rc, _, err = run_cli(capsys, "analyze", args[0], "--format", "json", "--output", args[1])
    assert_one_error_line(rc, err)


def test_bad_input_error_is_single_line_even_with_newlines_in_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "two\nlines"
    d.mkdir()
    rc, _, err = run_cli(capsys, "analyze", d / "trace.json")
    assert_one_error_line(rc, err)


# ---- odd but real traces: read, not rejected -----------------------------------------


def analyze_json(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> dict[str, Any]:
    before = snapshot(path)
    rc, out, err = run_cli(capsys, "analyze", path, "--format", "json", *extra)
    assert rc == 0, err
    assert snapshot(path) == before
    result: dict[str, Any] = json.loads(out)
    return result


def test_valid_trace_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "trace.json", trace_doc(kineto_events(3)))
    trace = load_trace(path)
    assert len(trace.gpu) == 6
    assert sorted(trace.gpu["kind"].astype(str).unique()) == ["kernel", "memcpy"]
    assert len(trace.runtime) == 3
    assert len(trace.memory) == 6
    assert len(trace.flows) == 6
    assert list(trace.steps["step"]) == [1, 2, 3]
    assert trace.meta.step_source == "ProfilerStep"
    result = analyze_json(capsys, path)
    assert result["trace"]["step_source"] == "ProfilerStep"
    assert result["trace"]["has_device_activity"] is True
    assert len(result["steps"]) == 3


def test_gzip_named_json_and_plain_named_gz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = GOOD_JSON
    a = tmp_path / "a.json"
    a.write_bytes(gzip.compress(plain))
    b = tmp_path / "b.json.gz"
    b.write_bytes(plain)
    assert_same_tables(load_trace(a), load_trace(b))
    analyze_json(capsys, a)
    analyze_json(capsys, b)


BIG = 123456789012345678901234567890


def test_integers_above_int64_in_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = kineto_events(2)
    events.append(
        X(
            "kernel",
            "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
            BASE_US + 700,
            100,
            pid=0,
            tid=9,
            device=0,
            stream=9,
            correlation=BIG,
            **{"Comms Id": BIG, "External id": BIG, "Collective name": "allreduce", "In msg nelems": BIG},
        )
    )
    events.append(
        X(
            "cpu_op",
            "record_param_comms",
            BASE_US + 650,
            30,
            **{"Comms Id": BIG, "External id": -BIG, "Seq": BIG, "Collective name": "allreduce"},
        )
    )
    events.append(X("cuda_runtime", "cudaLaunchKernel", BASE_US + 660, 5, correlation=BIG))
    path = write_json(tmp_path / "trace.json", trace_doc(events, baseTimeNanoseconds=BIG))
    assert b"123456789012345678901234567890" in path.read_bytes()
    trace = load_trace(path)
    nccl = trace.gpu[trace.gpu["name"].astype(str).str.startswith("ncclDevKernel")]
    assert len(nccl) == 1
    assert nccl["correlation"].iloc[0] == -1  # out of int64: missing, not wrapped
    assert nccl["external_id"].iloc[0] == -1
    assert bool(nccl["is_comm"].iloc[0])
    assert (trace.host["name"] == "record_param_comms").sum() == 1
    assert len(trace.runtime) == 3
    assert len(trace.collectives) == 2
    analyze_json(capsys, path)


def test_integer_above_int64_in_correlation_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = kineto_events(2)
    for ev in events:
        if isinstance(ev.get("args"), dict) and "correlation" in ev["args"]:
            ev["args"]["correlation"] = BIG + ev["args"]["correlation"]
    path = write_json(tmp_path / "trace.json", trace_doc(events))
    trace = load_trace(path)
    assert len(trace.gpu) == 4
    assert len(trace.runtime) == 2
    assert (trace.gpu["correlation"] == -1).all()
    analyze_json(capsys, path)


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_invalid_utf8_in_kernel_name(suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.dumps(trace_doc(kineto_events(2)), indent=1).encode()
    assert data.count(b"ampere_sgemm_128x64_nn") == 2
    data = data.replace(b"ampere_sgemm_128x64_nn", b"ampere_\xff\xfe_sgemm\xc3", 1)
    path = write_bytes(tmp_path / f"trace{suffix}", data)
    trace = load_trace(path)
    names = set(trace.gpu["name"].astype(str))
    assert "ampere_\ufffd\ufffd_sgemm\ufffd" in names
    assert "ampere_sgemm_128x64_nn" in names
    assert len(trace.gpu) == 4
    assert any("UTF-8" in n for n in trace.meta.notes)
    analyze_json(capsys, path)


@pytest.mark.parametrize("shape", ["object", "bare-array"])
@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_utf8_byte_order_mark(shape: str, suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trace re-saved by an editor that writes a BOM is still a trace."""
    events = kineto_events(2)
    doc: Any = events if shape == "bare-array" else trace_doc(events)
    ref = load_trace(write_json(tmp_path / f"ref{suffix}", doc))
    path = write_bytes(tmp_path / f"bom{suffix}", b"\xef\xbb\xbf" + json.dumps(doc, indent=1).encode())
    trace = load_trace(path)
    assert_same_tables(trace, ref, meta=False)
    assert not trace.meta.notes
    analyze_json(capsys, path)


def _raw_numbers(text: str) -> str:
    """Turn ``"ts": "123.456"`` (quoted so json.dumps keeps every digit) into a bare number."""
    return re.sub(r'"(ts|dur)": "(-?[0-9]+(?:\.[0-9]+)?)"', r'"\1": \2', text)


def test_float_microseconds_keep_exact_nanoseconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = kineto_events(2)
    events.append(X("kernel", "exact_kernel", "1712195495505582.988", "12.345", pid=0, tid=7, device=0, stream=7))
    events.append(X("cpu_op", "exact_op", "1712195495505582.001", "0.999"))
    events.append(X("cpu_op", "exact_op2", "1712195495505583.5", "1.25"))
    path = write_bytes(tmp_path / "trace.json", _raw_numbers(json.dumps(trace_doc(events), indent=1)).encode())
    assert b'"ts": 1712195495505582.988' in path.read_bytes()
    trace = load_trace(path)
    k = trace.gpu[trace.gpu["name"] == "exact_kernel"].iloc[0]
    assert int(k["ts"]) == 1712195495505582988
    assert int(k["dur"]) == 12345
    assert int(k["end"]) == 1712195495505582988 + 12345
    op = trace.host[trace.host["name"] == "exact_op"].iloc[0]
    assert (int(op["ts"]), int(op["dur"])) == (1712195495505582001, 999)
    op2 = trace.host[trace.host["name"] == "exact_op2"].iloc[0]
    assert (int(op2["ts"]), int(op2["dur"])) == (1712195495505583500, 1250)
    analyze_json(capsys, path)


@pytest.mark.parametrize(
    ("ts", "dur"),
    [
        ("17121954955055820", "5"),  # one digit too many: x1000 would wrap around int64
        ("99999999999999999999", "5"),  # above int64 even in microseconds
        ("-9000000000000000", "5"),  # would make time spans overflow
        ("9223372036854775.807", "5"),
        ("1712195495505582.988", "9000000000000000"),  # the end would pass int64
        ("1e300", "1"),
    ],
)
def test_absurd_timestamps_are_dropped_not_wrapped(
    ts: str, dur: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = kineto_events(2)
    events.append(X("kernel", "absurd_kernel", ts, dur, pid=0, tid=7, device=0, stream=7))
    events.append(X("cpu_op", "absurd_op", ts, dur))
    events.append({"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "ts": ts, "args": {"Bytes": 1}})
    path = write_bytes(tmp_path / "trace.json", _raw_numbers(json.dumps(trace_doc(events), indent=1)).encode())
    trace = load_trace(path)
    assert "absurd_kernel" not in set(trace.gpu["name"].astype(str))
    assert "absurd_op" not in set(trace.host["name"].astype(str))
    assert len(trace.gpu) == 4
    for table in ("gpu", "host", "runtime"):
        frame = trace.table(table)
        assert (frame["ts"] > 10**18).all() and (frame["end"] >= frame["ts"]).all()
    mem_ts = trace.memory["ts"]
    assert ((mem_ts == -(2**63)) | ((mem_ts > 10**18) & (mem_ts < 2**62))).all()  # missing, never wrapped
    assert any("skipped" in n for n in trace.meta.notes)
    rc, out, err = run_cli(capsys, "analyze", path, "--format", "json")
    assert rc == 0, err
    assert err == ""  # no overflow RuntimeWarnings either
    json.loads(out)


def test_profiler_step_number_above_int64(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = kineto_events(2)
    events.append(X("user_annotation", "ProfilerStep#99999999999999999999999", BASE_US + 5000, 100))
    path = write_json(tmp_path / "trace.json", trace_doc(events))
    rc, _, err = run_cli(capsys, "analyze", path, "--format", "json")
    assert rc in (0, 2), err
    if rc == 2:
        assert_one_error_line(rc, err)


def test_trace_without_gpu_activity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "trace.json", trace_doc(kineto_events(3, gpu=False)))
    trace = load_trace(path)
    assert len(trace.gpu) == 0
    assert not trace.has_device_activity
    assert len(trace.host) == 6
    result = analyze_json(capsys, path)
    assert result["findings"] == []
    assert result["trace"]["has_device_activity"] is False
    assert any("no device" in n.lower() for n in result["notes"]), result["notes"]
    # The text report must not fail either.
    rc, _, err = run_cli(capsys, "analyze", path)
    assert rc == 0, err


def test_trace_with_only_metadata_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = kineto_events(1)[:2]
    path = write_json(tmp_path / "trace.json", trace_doc(events))
    rc, out, err = run_cli(capsys, "analyze", path, "--format", "json")
    assert rc in (0, 2), err
    if rc == 2:
        assert_one_error_line(rc, err)
    else:
        assert json.loads(out)["findings"] == []


@pytest.mark.parametrize("doc", [b'{"traceEvents": []}', b"[]", b'{"traceEvents": [], "schemaVersion": 1}'])
def test_trace_with_no_events(doc: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No events at all: either analysed as empty or one error line; never a traceback."""
    path = write_bytes(tmp_path / "trace.json", doc)
    rc, out, err = run_cli(capsys, "analyze", path, "--format", "json")
    assert rc in (0, 2), err
    if rc == 2:
        assert_one_error_line(rc, err)
    else:
        assert json.loads(out)["findings"] == []


def test_trace_without_profiler_step_uses_dataloader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "trace.json", trace_doc(kineto_events(3, profiler_step=False)))
    trace = load_trace(path)
    assert trace.meta.step_source.startswith("DataLoader")
    assert len(trace.steps) == 3
    result = analyze_json(capsys, path)
    assert "DataLoader" in result["trace"]["step_source"]
    assert "ProfilerStep" in result["trace"]["step_source"]  # "(no ProfilerStep markers)"


def test_trace_without_any_step_marker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = [e for e in kineto_events(3) if not str(e.get("name", "")).startswith("ProfilerStep")]
    path = write_json(tmp_path / "trace.json", trace_doc(events))
    trace = load_trace(path)
    assert len(trace.steps) == 0
    assert trace.meta.step_source == "none"
    result = analyze_json(capsys, path)
    assert result["trace"]["step_source"] == "none"
    assert any("no step markers" in n for n in result["notes"])


def test_bare_json_array_of_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = kineto_events(2)
    ref = load_trace(write_json(tmp_path / "ref.json", trace_doc(events)))
    path = write_json(tmp_path / "bare.json", events)
    trace = load_trace(path)
    assert_same_tables(trace, ref, meta=False)
    analyze_json(capsys, path)


def test_bare_json_array_unterminated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Chrome trace format allows the closing ``]`` to be missing."""
    events = kineto_events(2)
    text = json.dumps(events, indent=1)
    assert text.endswith("]")
    path = write_bytes(tmp_path / "bare.json", (text[:-1].rstrip() + ",\n").encode())
    trace = load_trace(path)
    assert len(trace.gpu) == 4
    analyze_json(capsys, path)


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_minified_one_line(suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = trace_doc(kineto_events(3), distributedInfo={"rank": 3, "world_size": 8})
    pretty = load_trace(write_json(tmp_path / f"pretty{suffix}", doc))
    path = write_bytes(tmp_path / f"mini{suffix}", json.dumps(doc, separators=(",", ":")).encode())
    raw = gzip.decompress(path.read_bytes()) if suffix.endswith(".gz") else path.read_bytes()
    assert b"\n" not in raw
    assert b"},{" in raw
    mini = load_trace(path)
    assert_same_tables(mini, pretty)
    assert mini.meta.rank == 3
    analyze_json(capsys, path)


# ---- slicing: results must not depend on where the reader cuts -----------------------


def _sliceable_doc(n_steps: int) -> dict[str, Any]:
    events = kineto_events(n_steps)
    tricky = [
        "name with },{ inside",
        "name with }, { inside",
        'quoted "},{" and escaped \\"}, {\\"',
        "brace soup }}},{{{ ]],[[",
        "unicode é 中文 🚀 },{",
        "newline\n}\n,\n{\n",
    ]
    for i, name in enumerate(tricky * 30):
        t = BASE_US + 37 * i
        events.append(
            X(
                "cpu_op",
                name,
                t,
                3,
                **{
                    "External id": 10_000 + i,
                    "Input Dims": [[1, 2], [], [3]],
                    "nested": [{"a": 1}, {"b": "},{"}, {"c": [{"d": {}}, {}]}],
                    "Call stack": "a.py(1): f;},{ b.py(2): g",
                },
            )
        )
        events.append(
            X(
                "kernel",
                name + " kernel",
                t + 5,
                2,
                pid=0,
                tid=7,
                device=0,
                stream=7,
                correlation=50_000 + i,
                **{"grid": [1, 1, 1], "shared memory": 0},
            )
        )
    return trace_doc(
        events,
        distributedInfo={"backend": "nccl", "rank": 1, "world_size": 2},
        traceName="},{ tricky header",
    )


def _with_trailer(doc: dict[str, Any], indent: int | None) -> bytes:
    """Header keys both before and after ``traceEvents``, like real Kineto output."""
    text = json.dumps(doc, indent=indent, ensure_ascii=False)
    trailer = {"displayTimeUnit": "ms", "baseTimeNanoseconds": 1_700_000_000_000_000_000}
    tail = json.dumps(trailer, indent=indent)[1:]
    return (text.rstrip()[:-1].rstrip() + ", " + tail).encode()


@pytest.mark.parametrize("indent", [None, 0, 1])
@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
@pytest.mark.parametrize(("slice_bytes", "block_bytes"), [(4096, 1024), (1024, 333), (16384, 4096)])
def test_sliced_read_equals_unsliced(
    suffix: str,
    indent: int | None,
    slice_bytes: int,
    block_bytes: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _with_trailer(_sliceable_doc(20), indent)
    assert len(data) > 5 * slice_bytes
    path = write_bytes(tmp_path / f"trace{suffix}", data)
    whole = load_trace(path)
    assert len(whole.host) == 40 + 180
    assert len(whole.gpu) == 40 + 180
    assert whole.meta.rank == 1
    assert whole.meta.base_time_ns == 1_700_000_000_000_000_000
    assert set(whole.host["name"].astype(str)) >= {"name with },{ inside", "name with }, { inside"}

    calls: list[bool] = []
    original = jsonstream._cut_and_decode

    def counting(buf: bytearray, stats: Any) -> Any:
        result = original(buf, stats)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(jsonstream, "SLICE_BYTES", slice_bytes)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(jsonstream, "_cut_and_decode", counting)
    sliced = load_trace(path)
    assert sum(calls) >= 3, "the reader never cut the trace into slices"
    assert_same_tables(sliced, whole)
    assert sliced.meta.base_time_ns == whole.meta.base_time_ns


def test_sliced_read_with_invalid_utf8_and_junk_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _sliceable_doc(10)
    doc["traceEvents"][40:40] = [
        {"ph": 5, "name": "bad ph"},
        {"ph": "X", "cat": "cpu_op", "name": "bad args", "ts": BASE_US, "dur": 1, "args": [1]},
        {"ph": "X", "cat": "cpu_op", "name": "bad ts", "ts": "abc", "dur": 1},
    ]
    data = _raw_numbers(json.dumps(doc, indent=1)).encode().replace(b"brace soup", b"brace \xff soup")
    path = write_bytes(tmp_path / "trace.json", data)
    whole = load_trace(path)
    calls: list[bool] = []
    original = jsonstream._cut_and_decode

    def counting(buf: bytearray, stats: Any) -> Any:
        result = original(buf, stats)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(jsonstream, "SLICE_BYTES", 4096)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(jsonstream, "_cut_and_decode", counting)
    sliced = load_trace(path)
    assert_same_tables(sliced, whole)
    # A junk event early in the file must not stop the streaming (whole rest read into memory).
    assert sum(calls) >= len(data) // 4096 // 2, calls
    assert "brace \ufffd soup }}},{{{ ]],[[" in set(whole.host["name"].astype(str))


def test_slicer_is_not_confused_by_boundaries_in_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Event names made of nothing but ``},{`` / ``}, {``; every one must survive with its exact name."""
    names = [("},{" * (i % 50 + 1)) + ("}, {" * (i % 7)) for i in range(400)]
    events = [X("cpu_op", n, BASE_US + i, 1, **{"External id": i}) for i, n in enumerate(names)]
    path = write_json(tmp_path / "trace.json", trace_doc(events), indent=None)
    monkeypatch.setattr(jsonstream, "SLICE_BYTES", 2048)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 512)
    trace = load_trace(path)
    assert len(trace.host) == 400
    assert list(trace.host.sort_values("external_id")["name"].astype(str)) == names


# ---- events with unexpected types: the good ones are kept ----------------------------


JUNK_EVENTS: list[Any] = [
    {"ph": 5, "cat": "cpu_op", "name": "ph is a number", "ts": BASE_US, "dur": 1},
    {"ph": "X", "cat": "cpu_op", "name": "args is a list", "ts": BASE_US, "dur": 1, "args": [1]},
    {"ph": "X", "cat": "cpu_op", "name": "ts is text", "ts": "abc", "dur": 1},
    {"ph": "X", "cat": "cpu_op", "name": "dur is null", "ts": BASE_US, "dur": None},
    {"ph": "X", "cat": "cpu_op", "name": "ts missing", "dur": 1},
    {"ph": "X", "cat": "kernel", "name": "ts is a list", "ts": [1, 2], "dur": 1},
    {"ph": "X", "cat": "kernel", "name": "ts is an object", "ts": {"a": 1}, "dur": 1},
    {"ph": "X", "cat": "kernel", "name": "ts is true", "ts": True, "dur": 1},
    {"ph": "X", "cat": "kernel", "name": "ts too big", "ts": 10**30, "dur": 1},
    {"ph": ["X"], "cat": "cpu_op", "name": "ph is a list", "ts": BASE_US, "dur": 1},
    {"ph": "X", "cat": {"a": 1}, "name": "cat is an object", "ts": BASE_US, "dur": 1},
    {"ph": "X", "cat": "cpu_op", "name": {"not": "a string"}, "ts": BASE_US, "dur": 1},
    {"ph": "X", "cat": "cpu_op", "name": None, "ts": BASE_US, "dur": 1},
    {"ph": "X", "cat": "cuda_runtime", "name": "corr is text", "ts": BASE_US, "dur": 1, "args": {"correlation": "x"}},
    {"ph": "X", "cat": "kernel", "name": "stream is a list", "ts": BASE_US, "dur": 1, "args": {"stream": [7]}},
    {"ph": "X", "cat": "kernel", "name": "device is bool", "ts": BASE_US, "dur": 1, "args": {"device": True}},
    {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "ts": BASE_US, "args": {"Bytes": "lots"}},
    {"ph": "i", "name": "[memory]", "ts": "x", "args": None},
    {"ph": "s", "cat": "ac2g", "id": [1], "ts": BASE_US},
    {"ph": "f", "cat": "ac2g", "id": "abc", "ts": None},
    {"ph": "M", "name": "thread_name", "args": {"name": ["t"]}},
    {"ph": "M", "name": "process_name", "args": "python"},
    {"ph": "X", "cat": "cpu_op", "name": "pid is an object", "ts": BASE_US, "dur": 1, "pid": {"p": 1}},
    {"ph": "X", "cat": "cpu_op", "name": "negative dur", "ts": BASE_US, "dur": -5},
    {"ph": "X", "cat": "cpu_op", "name": "exponent ts", "ts": 1.712195495505e15, "dur": 1e0},
    "a string event",
    17,
    None,
    [],
    [{"ph": "X"}],
    {},
]


@pytest.mark.parametrize("position", ["front", "middle", "end"])
def test_events_with_unexpected_types(position: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = kineto_events(3)
    events = {
        "front": [*JUNK_EVENTS, *good],
        "middle": [*good[:8], *JUNK_EVENTS, *good[8:]],
        "end": [*good, *JUNK_EVENTS],
    }[position]
    ref = load_trace(write_json(tmp_path / "ref.json", trace_doc(good)))
    path = write_json(tmp_path / "trace.json", trace_doc(events))
    trace = load_trace(path)
    good_names = {"ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3", "aten::mm"}
    assert set(trace.host["name"].astype(str)) >= good_names
    assert (trace.gpu["name"] == "ampere_sgemm_128x64_nn").sum() == 3
    assert (trace.gpu["kind"] == "memcpy").sum() == 3
    assert (trace.runtime["name"] == "cudaLaunchKernel").sum() == 3
    assert list(trace.steps["step"]) == [1, 2, 3]
    # The good events come back exactly as in the clean trace.
    for table in ("gpu", "runtime"):
        got = trace.table(table)
        got = got[got["name"].isin(ref.table(table)["name"].astype(str).unique())].reset_index(drop=True)
        want = ref.table(table)
        pd.testing.assert_frame_equal(
            got[["ts", "dur", "correlation"]], want[["ts", "dur", "correlation"]], check_dtype=True
        )
    host = trace.host[trace.host["name"].isin(list(good_names))].reset_index(drop=True)
    assert list(host["ts"]) == list(ref.host["ts"])
    good_memory = trace.memory[trace.memory["addr"].isin(ref.memory["addr"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(good_memory, ref.memory)
    assert trace.meta.devices == ref.meta.devices
    analyze_json(capsys, path)


def test_junk_event_does_not_cost_exact_timestamps(tmp_path: Path) -> None:
    """One event of the wrong shape must not round every other timestamp through float64."""
    events = kineto_events(2)
    events.append(X("kernel", "exact_kernel", "1712195495505582.988", "12.345", pid=0, tid=7, device=0, stream=7))
    events.append({"ph": "X", "cat": "cpu_op", "name": "args is a list", "ts": BASE_US, "dur": 1, "args": [1]})
    path = write_bytes(tmp_path / "trace.json", _raw_numbers(json.dumps(trace_doc(events), indent=1)).encode())
    trace = load_trace(path)
    k = trace.gpu[trace.gpu["name"] == "exact_kernel"].iloc[0]
    assert (int(k["ts"]), int(k["dur"])) == (1712195495505582988, 12345)


@pytest.mark.parametrize(
    "header",
    [
        {"distributedInfo": "rank 0"},
        {"distributedInfo": {"rank": "zero", "world_size": None}},
        {"distributedInfo": {"rank": [0]}},
        {"distributedInfo": {"rank": BIG}},
        {"deviceProperties": {"id": 0}},
        {"deviceProperties": [1, "x", None, {"id": "gpu0", "computeMajor": 9}]},
        {"baseTimeNanoseconds": "soon"},
        {"schemaVersion": {"v": 1}},
    ],
)
def test_odd_header_values(header: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "trace.json", trace_doc(kineto_events(2), **header))
    trace = load_trace(path)
    assert len(trace.gpu) == 4
    analyze_json(capsys, path)


# ---- the real console script ---------------------------------------------------------


def _console_script() -> list[str]:
    exe = shutil.which("mlprof")
    if exe is None:
        candidate = Path(sys.executable).with_name("mlprof")
        if not candidate.exists():
            pytest.skip("the mlprof console script is not installed")
        exe = str(candidate)
    return [exe]


def test_console_script_bad_input(tmp_path: Path) -> None:
    path = _corrupt_gzip(tmp_path)
    before = snapshot(path)
    proc = subprocess.run(
        [*_console_script(), "analyze", str(path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLPROF_DEBUG": ""},
    )
    assert_one_error_line(proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert snapshot(path) == before


def test_console_script_good_and_python_m(tmp_path: Path) -> None:
    path = write_json(tmp_path / "trace.json.gz", trace_doc(kineto_events(3)))
    for cmd in (_console_script(), [sys.executable, "-m", "mlprof"]):
        proc = subprocess.run(
            [*cmd, "analyze", str(path), "--format", "json"], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["trace"]["step_source"] == "ProfilerStep"
    proc = subprocess.run(
        [sys.executable, "-m", "mlprof", "analyze", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_error_line(proc.returncode, proc.stderr)


# ---- the parallel reader (worker processes) on odd input -----------------------------


@pytest.fixture
def parallel_small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlprof.trace.loader.PARALLEL_MIN_JSON_BYTES", 0)
    monkeypatch.setattr(jsonstream, "PARALLEL_SLICE_BYTES", 8192)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 2048)


def _plain_trace_with(tmp_path: Path, at: int, extra: list[Any], bad_utf8: bool) -> Path:
    """A trace without ``}, {`` in strings (so textual cuts hold) with odd events in a middle slice."""
    events = kineto_events(300)
    at = next(i for i in range(at, len(events)) if events[i].get("cat") == "cpu_op")
    if bad_utf8:
        events[at]["name"] = "MARKER_BAD_UTF8"
    events[at + 1 : at + 1] = extra
    data = json.dumps(trace_doc(events), indent=1).encode().replace(b"MARKER_BAD_UTF8", b"bad \xff utf8")
    return write_bytes(tmp_path / "trace.json", data)


@pytest.mark.usefixtures("parallel_small_slices")
def test_parallel_reader_with_junk_events(tmp_path: Path) -> None:
    junk = [{"ph": "X", "cat": "cpu_op", "name": "args is a list", "ts": BASE_US, "dur": 1, "args": [1]}]
    path = _plain_trace_with(tmp_path, 500, junk, bad_utf8=False)
    assert_same_tables(load_trace(path, workers=2), load_trace(path, workers=1))


@pytest.mark.usefixtures("parallel_small_slices")
def test_parallel_reader_with_bad_utf8_tables(tmp_path: Path) -> None:
    path = _plain_trace_with(tmp_path, 500, [], bad_utf8=True)
    par, seq = load_trace(path, workers=2), load_trace(path, workers=1)
    assert_same_tables(par, seq, meta=False)
    assert "bad \ufffd utf8" in set(par.host["name"].astype(str)) | set(par.gpu["name"].astype(str))


@pytest.mark.usefixtures("parallel_small_slices")
def test_parallel_reader_keeps_the_utf8_note(tmp_path: Path) -> None:
    path = _plain_trace_with(tmp_path, 500, [], bad_utf8=True)
    assert load_trace(path, workers=2).meta.notes == load_trace(path, workers=1).meta.notes


@pytest.mark.usefixtures("parallel_small_slices")
def test_parallel_reader_with_bad_utf8_then_junk_in_one_slice(tmp_path: Path) -> None:
    junk = [{"ph": "X", "cat": "cpu_op", "name": "args is a list", "ts": BASE_US, "dur": 1, "args": [1]}]
    path = _plain_trace_with(tmp_path, 500, junk, bad_utf8=True)
    assert_same_tables(load_trace(path, workers=2), load_trace(path, workers=1))


def test_output_onto_the_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "trace.json", trace_doc(kineto_events(2)))
    before = snapshot(path)
    rc, _, err = run_cli(capsys, "analyze", path, "--format", "json", "--output", path)
    assert snapshot(path) == before
    assert_one_error_line(rc, err)


# ---- paths that lead to no readable file: the line says which kind ---------------------


def _odd_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Real odd paths and the reason their error line must give."""
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    loop_a, loop_b = tmp_path / "loop_a.json", tmp_path / "loop_b.json"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone.json")
    return {
        "fifo": (fifo, "a pipe, not a trace file"),
        "device": (Path("/dev/null"), "a character device, not a trace file"),
        "loop": (loop_a, "too many levels of symbolic links"),
        "inside a loop": (loop_a / "x.json", "too many levels of symbolic links"),
        "dangling": (dangling, "a symbolic link to a file that does not exist"),
        "missing": (tmp_path / "missing.json", "no such file or directory"),
        "stdin": (Path("-"), "not from standard input"),
    }


@pytest.mark.parametrize("kind", ["fifo", "device", "loop", "inside a loop", "dangling", "missing", "stdin"])
def test_a_path_that_leads_to_no_file_says_why(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO (what ``<(zcat trace.json.gz)`` passes) was "empty file" and a symbolic link loop "no such file":
    each kind now has its own reason, the same from analyze, compare and ingest, and nothing is created."""
    monkeypatch.chdir(tmp_path)
    path, reason = _odd_paths(tmp_path)[kind]
    good = write_json(tmp_path / "good.json", {"traceEvents": kineto_events()})
    store = tmp_path / "store" / "runs.db"
    before = _listing(tmp_path)
    for argv in (("analyze", path), ("compare", path, good), ("ingest", path, "--store", store)):
        rc, _, err = run_cli(capsys, *map(str, argv))
        assert_one_error_line(rc, err)
        assert f"{path}: " in err and reason in err, (argv, err)
    assert _listing(tmp_path) == before


def _listing(folder: Path) -> dict[str, Any]:
    """Each entry's lstat and, for a regular file, its bytes (reading a FIFO would block)."""
    out: dict[str, Any] = {}
    for name in sorted(os.listdir(folder)):
        st = os.lstat(folder / name)
        data = (folder / name).read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[name] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def test_a_shape_op_with_an_odd_field_keeps_its_input_dims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An op whose shapes mlprof reads (``aten::mm``) with a field of an odd type (``tid`` a list) goes through the
    lenient decode, which kept ``Input Dims`` as a scalar (None): ``analyze`` stopped with an internal error.
    Its ``Input Dims`` is the file's text, as for the same op decoded strictly (truth: the JSON as written)."""
    dims = "[[16, 32], [32, 8], []]"
    good = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 1, "dur": 1}
    odd = {**good, "tid": [1], "ts": 3}
    with_dims = f'"dur": 1, "args": {{"Input Dims": {dims}}}}}'
    text = json.dumps({"traceEvents": [good, odd]}).replace('"dur": 1}', with_dims)
    assert text.count(dims) == 2
    path = tmp_path / "trace.json"
    path.write_text(text)
    host = load_trace(path).host.sort_values("ts")
    assert host["input_dims"].astype(str).tolist() == [dims, dims]
    assert main(["analyze", str(path), "--format", "json"]) == 0
    assert "internal error" not in capsys.readouterr().err
