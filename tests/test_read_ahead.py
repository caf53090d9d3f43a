"""The CLI's read-ahead process (mlprof.trace.prefetch) gives exactly the plain read's tables and reports."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest
import typer

from mlprof.__main__ import ANALYZE_FLAGS, ANALYZE_VALUE_OPTIONS, trace_to_read_ahead
from mlprof.cli import app
from mlprof.errors import BadInputError
from mlprof.trace import load_trace, prefetch
from mlprof.trace.build import TableBuilder
from mlprof.trace.jsonstream import read_trace_events
from mlprof.trace.sizes import PARALLEL_MIN_JSON_BYTES

from conftest import SAMPLES, X, assert_same_tables, external, kernel, write_trace

BUNDLED = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.json.gz"))
REAL = [
    "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz",
    "hta/tests/data/df_index_resolver/df_index_resolver.json.gz",
    "facebookresearch__param/dlrm_kineto/worker3_step_12.1694128201557.pt.trace.json",
    "hta/tests/data/ns_resolution_trace/rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz",
]
REPO = Path(__file__).resolve().parents[1]


def _plain_tables(path: Path) -> dict[str, pd.DataFrame]:
    builder = TableBuilder()
    read_trace_events(path, builder.add)
    return builder.finish()


def _read_ahead_tables(path: Path, workers: int | None = None) -> dict[str, pd.DataFrame]:
    assert prefetch.start(str(path), workers)
    taken = prefetch.take(path)
    assert taken is not None, "the read-ahead process sent nothing back"
    return taken[0].finish()


def _assert_tables_equal(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


@pytest.mark.parametrize("relative", BUNDLED)
def test_read_ahead_equals_plain_read_on_bundled_traces(relative: str) -> None:
    path = SAMPLES / relative
    _assert_tables_equal(_read_ahead_tables(path), _plain_tables(path))


@pytest.mark.parametrize("relative", REAL)
def test_read_ahead_equals_plain_read_on_real_traces(relative: str) -> None:
    path = external(relative)
    _assert_tables_equal(_read_ahead_tables(path), _plain_tables(path))
    assert prefetch.start(str(path))
    assert_same_tables(load_trace(path), load_trace(path, workers=1))  # the first one takes the read-ahead


def test_read_ahead_of_another_file_is_not_used(tmp_path: Path) -> None:
    a = write_trace(tmp_path / "a.json", [X("cpu_op", "aten::mm", 0, 10), kernel("k", 2, 5)])
    b = write_trace(tmp_path / "b.json", [X("cpu_op", "aten::add", 0, 10)])
    assert prefetch.start(str(a))
    child = prefetch._pending.pid  # type: ignore[union-attr]
    assert prefetch.take(b) is None
    with pytest.raises(ChildProcessError):  # stopped and reaped: no zombie left
        os.waitpid(child, os.WNOHANG)
    assert list(load_trace(b).host["name"]) == ["aten::add"]


def test_a_file_changed_after_the_read_ahead_is_read_again(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.json", [X("cpu_op", "aten::mm", 0, 10)])
    assert prefetch.start(str(path))
    time.sleep(0.01)
    write_trace(path, [X("cpu_op", "aten::mm", 0, 10), X("cpu_op", "aten::addmm", 20, 10)])
    assert sorted(load_trace(path).host["name"]) == ["aten::addmm", "aten::mm"]


def test_bad_file_is_reported_by_the_plain_read(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 2},')
    assert prefetch.start(str(path))
    with pytest.raises(BadInputError) as read_ahead:
        load_trace(path)
    with pytest.raises(BadInputError) as plain:
        load_trace(path)
    assert str(read_ahead.value) == str(plain.value)


def test_only_small_trace_files_are_read_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = write_trace(tmp_path / "t.json", [X("cpu_op", "aten::mm", 0, 10)])
    sqlite = tmp_path / "r.sqlite"
    sqlite.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    csv = tmp_path / "c.csv"
    csv.write_text("timestamp, utilization.gpu [%]\n")
    for refused in (tmp_path, sqlite, csv, tmp_path / "missing.json"):
        assert not prefetch.start(str(refused))
    monkeypatch.setattr(prefetch, "PREFETCH_MAX_FILE_BYTES", trace.stat().st_size - 1)
    assert not prefetch.start(str(trace))
    assert prefetch._pending is None


def test_the_cli_finds_the_trace_among_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))  # an idle machine
    cases = {
        ("analyze", "t.json"): "t.json",
        ("analyze", "-f", "json", "--set", "DATA001.min_share=0.1", "t.json", "--top", "5"): "t.json",
        ("analyze", "--format=json", "--force", "-o", "r.json", "t.json"): "t.json",
        ("analyze", "--", "-t.json"): "-t.json",
        ("analyze", "--jobs", "2", "t.json"): "t.json",
        ("analyze", "--jobs", "1", "t.json"): None,  # one process asked for
        ("analyze", "--jobs=1", "t.json"): None,
        ("analyze", "-j", "1", "t.json"): None,
        ("analyze", "--low-memory", "t.json"): None,
        ("analyze", "--help"): None,
        ("analyze", "-fjson", "t.json"): None,  # a form not parsed here: typer decides
        ("analyze", "a.json", "b.json"): None,
        ("report", "t.json"): None,
        ("analyze",): None,
    }
    for args, expected in cases.items():
        assert trace_to_read_ahead(list(args)) == expected, args
    monkeypatch.setenv("MLPROF_READ_AHEAD", "0")
    assert trace_to_read_ahead(["analyze", "t.json"]) is None


def test_no_read_ahead_without_an_idle_core(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 0.4, 0.0, 0.0))
    assert trace_to_read_ahead(["analyze", "t.json"]) is None
    monkeypatch.setenv("MLPROF_READ_AHEAD", "1")  # asked for: read ahead all the same
    assert trace_to_read_ahead(["analyze", "t.json"]) == "t.json"
    monkeypatch.delenv("MLPROF_READ_AHEAD")
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 0.6, 0.0, 0.0))
    assert trace_to_read_ahead(["analyze", "t.json"]) == "t.json"
    monkeypatch.delattr(os, "getloadavg")  # as on Windows (no fork there either)
    assert trace_to_read_ahead(["analyze", "t.json"]) is None


def test_the_scan_knows_every_option_of_analyze() -> None:
    """The argv scan runs before typer is imported, from its own list of analyze's options."""
    command = typer.main.get_command(app).commands["analyze"]  # type: ignore[attr-defined]
    takes_value, flags = set(), set()
    for param in command.params:
        opts = [o for o in param.opts if o.startswith("-")]
        (flags if getattr(param, "is_flag", False) else takes_value).update(opts)
    assert takes_value == ANALYZE_VALUE_OPTIONS
    assert flags == ANALYZE_FLAGS


def _mlprof(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``python -m mlprof ARGS``, reading ahead unless ``env`` says otherwise."""
    return subprocess.run(
        [sys.executable, "-m", "mlprof", *args],
        capture_output=True,
        env={**os.environ, "MLPROF_READ_AHEAD": "1", **(env or {}), "PYTHONPATH": str(REPO)},
        timeout=120,
    )


@pytest.mark.parametrize("relative", ["synthetic/healthy.json.gz", "cpu_tiny_training.pt.trace.json.gz"])
def test_cli_report_is_the_same_with_and_without_read_ahead(relative: str) -> None:
    path = str(SAMPLES / relative)
    with_ra = _mlprof("analyze", path, "--format", "json")
    without = _mlprof("analyze", path, "--format", "json", env={"MLPROF_READ_AHEAD": "0"})
    assert with_ra.returncode == without.returncode == 0, with_ra.stderr
    assert with_ra.stdout == without.stdout and with_ra.stderr == without.stderr


@pytest.mark.parametrize(
    ("sig", "code", "line"), [(signal.SIGINT, 130, b"interrupted"), (signal.SIGTERM, 143, b"terminated")]
)
def test_signal_while_reading_ahead_leaves_no_process(sig: signal.Signals, code: int, line: bytes) -> None:
    path = external("pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlprof", "analyze", str(path), "--format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "MLPROF_READ_AHEAD": "1", "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 30
    children: list[psutil.Process] = []
    while not children and proc.poll() is None and time.monotonic() < deadline:
        children = parent.children()
        time.sleep(0.002)
    if not children:
        proc.kill()
        pytest.skip("the read-ahead process came and went before the signal could be sent")
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the whole group
    else:
        proc.send_signal(sig)  # a service manager or a test harness: only mlprof
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().endswith(line), err
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left running: {alive}"


# ---- a large trace: read ahead by worker processes of the read-ahead process -------------------


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file is "large" (read by workers), in slices small enough for a test trace to have many."""
    monkeypatch.setattr(prefetch, "PARALLEL_MIN_JSON_BYTES", 0)
    monkeypatch.setattr("mlprof.trace.jsonstream.PARALLEL_SLICE_BYTES", 64 << 10)
    monkeypatch.setattr("mlprof.trace.jsonstream.BLOCK_BYTES", 16 << 10)


@pytest.mark.usefixtures("small_slices")
@pytest.mark.parametrize("gzipped", [True, False])
def test_large_trace_is_read_ahead_by_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gzipped: bool) -> None:
    source = external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")
    path = source if gzipped else tmp_path / "nccl_data.json"
    if not gzipped:
        path.write_bytes(gzip.decompress(source.read_bytes()))
    from mlprof.trace import parallel

    marker = tmp_path / "workers"
    real = parallel.read_parallel

    def recorded(*args: Any, **kwargs: Any) -> Any:  # runs in the read-ahead process (forked with this patch)
        marker.write_text(str(args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(parallel, "read_parallel", recorded)
    _assert_tables_equal(_read_ahead_tables(path, workers=2), _plain_tables(path))
    assert marker.read_text() == "2"  # the read-ahead process read it with two workers


def test_read_ahead_relays_the_read_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlprof.trace.jsonstream.BLOCK_BYTES", 1 << 10)  # ~1,100 blocks: at most 101 records
    path = SAMPLES / "cpu_tiny_training.pt.trace.json.gz"
    assert prefetch.start(str(path))
    seen: list[tuple[int, int]] = []
    taken = prefetch.take(path, lambda done, total: seen.append((done, total)))
    assert taken is not None
    size = path.stat().st_size
    assert 10 <= len(seen) <= prefetch.PROGRESS_STEPS + 1, len(seen)
    assert all(total == size for _, total in seen)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == size


def test_read_ahead_without_a_bar_sends_no_progress_and_the_same_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlprof.trace.jsonstream.BLOCK_BYTES", 1 << 10)  # ~1,100 blocks: 101 records with a bar
    path = SAMPLES / "cpu_tiny_training.pt.trace.json.gz"
    asked: list[int] = []

    def no_bar(size: int) -> bool:
        asked.append(size)
        return False

    assert prefetch.start(str(path), shows_progress=no_bar)
    assert asked == [path.stat().st_size]
    seen: list[tuple[int, int]] = []
    taken = prefetch.take(path, lambda done, total: seen.append((done, total)))
    assert taken is not None and seen == []
    _assert_tables_equal(taken[0].finish(), _plain_tables(path))


def _large_plain_trace(path: Path, json_bytes: int) -> Path:
    """A plain trace of at least ``json_bytes``: a bundled trace's events repeated (read by workers by default)."""
    events = json.loads(gzip.decompress((SAMPLES / "synthetic" / "healthy.json.gz").read_bytes()))["traceEvents"]
    chunk = ", ".join(json.dumps(e) for e in events).encode()
    copies = json_bytes // len(chunk) + 1
    path.write_bytes(b'{"traceEvents": [' + b", ".join([chunk] * copies) + b"]}")
    return path


@pytest.mark.parametrize(
    ("sig", "code", "line"), [(signal.SIGINT, 130, b"interrupted"), (signal.SIGTERM, 143, b"terminated")]
)
def test_signal_while_reading_a_large_trace_ahead_leaves_no_process(
    tmp_path: Path, sig: signal.Signals, code: int, line: bytes
) -> None:
    path = _large_plain_trace(tmp_path / "large.json", PARALLEL_MIN_JSON_BYTES + (1 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlprof", "analyze", str(path), "--format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "MLPROF_READ_AHEAD": "1", "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    tree: list[psutil.Process] = []
    while len(tree) < 3 and proc.poll() is None and time.monotonic() < deadline:  # the reader and its 2 workers
        with contextlib.suppress(psutil.Error):
            tree = parent.children(recursive=True)
        time.sleep(0.002)
    if len(tree) < 3:
        proc.kill()
        pytest.skip("the read-ahead's workers came and went before the signal could be sent")
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the whole group
    else:
        proc.send_signal(sig)  # a service manager or a test harness: only mlprof
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err == b"mlprof: error: " + line + b"\n", err
    _, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive, f"left running: {alive}"


def _taken_kind(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the read-ahead process sent for the columns (``shm``: their bytes in the memory file; ``ok``: pickled
    through the pipe), recorded in this process as :func:`prefetch.take` reads it."""
    kinds: list[str] = []
    real = prefetch._in_band

    def recorded(payload: tuple[Any, ...], shm: int | None) -> tuple[Any, ...]:
        kinds.append(payload[0])
        return real(payload, shm)

    monkeypatch.setattr(prefetch, "_in_band", recorded)
    return kinds


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memory files (memfd_create) on this platform")
@pytest.mark.parametrize("large", [False, True])
def test_columns_come_back_through_a_memory_file(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, large: bool
) -> None:
    """Small (read in the read-ahead process) and large (by its worker processes) read-aheads hand the columns
    over in a memory file mapped here: the tables equal the plain read's and the arrays can be written to."""
    if large:
        request.getfixturevalue("small_slices")
    kinds = _taken_kind(monkeypatch)
    path = external(REAL[1])
    assert prefetch.start(str(path), 2 if large else 1)
    taken = prefetch.take(path)
    assert taken is not None
    arrays = [a for cols in taken[0]._cols.values() for parts in cols.values() for a in parts]
    assert arrays and all(a.flags.writeable for a in arrays)
    _assert_tables_equal(taken[0].finish(), _plain_tables(path))
    assert kinds == ["shm"]


@pytest.mark.parametrize("memory_file", ["none", "unwritable"])
def test_columns_come_back_through_the_pipe_without_a_memory_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, memory_file: str
) -> None:
    """No memory file (another platform), or one the read-ahead process cannot write: the columns are pickled
    through the pipe as before, with the same tables."""
    kinds = _taken_kind(monkeypatch)
    unwritable = tmp_path / "unwritable"
    unwritable.write_bytes(b"")
    monkeypatch.setattr(
        prefetch, "_memory_file", lambda: None if memory_file == "none" else os.open(unwritable, os.O_RDONLY)
    )
    path = external(REAL[0])
    _assert_tables_equal(_read_ahead_tables(path), _plain_tables(path))
    assert kinds == ["ok"]


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memory files (memfd_create) on this platform")
@pytest.mark.usefixtures("small_slices")
@pytest.mark.parametrize("room", ["enough", "none"])
def test_workers_write_their_columns_into_the_memory_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: str
) -> None:
    """The read-ahead's workers write the columns of a plain file's slices into its memory file themselves (the
    pool's pipe carries where they are, the read-ahead process neither receives nor copies them); where they do
    not fit their room there, they come back through the pipe as before. The tables are the plain read's."""
    from mlprof.trace import parallel
    from mlprof.trace.build import Partial, SharedPart

    source = external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")
    path = tmp_path / "nccl_data.json"
    path.write_bytes(gzip.decompress(source.read_bytes()))
    if room == "none":
        monkeypatch.setattr(parallel, "SHARED_BYTES_PER_JSON_BYTE", 0)  # inherited by the forked processes
    shared: list[int] = []
    real = Partial.resolve

    def counted(self: Partial, buffer: Any) -> None:
        stores = (*self.cols.values(), self.collectives)
        shared.append(sum(isinstance(p, SharedPart) for store in stores for parts in store.values() for p in parts))
        real(self, buffer)

    monkeypatch.setattr(Partial, "resolve", counted)
    kinds = _taken_kind(monkeypatch)
    _assert_tables_equal(_read_ahead_tables(path, workers=2), _plain_tables(path))
    assert kinds == ["shm"] and len(shared) == 1
    assert (shared[0] > 100) == (room == "enough") and (shared[0] == 0) == (room == "none")
