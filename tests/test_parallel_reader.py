"""Worker-process decoding gives exactly the tables of the sequential reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlprof.trace import Trace, load_trace
from mlprof.trace.model import TABLES

from conftest import X, external, kernel, write_trace


def _same(a: Trace, b: Trace) -> None:
    for name in (*TABLES, "threads"):
        x, y = a.table(name) if name != "threads" else a.threads, b.table(name) if name != "threads" else b.threads
        assert x.astype(str).equals(y.astype(str)), name
    assert a.meta.num_events == b.meta.num_events


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlprof.trace.loader.PARALLEL_MIN_JSON_BYTES", 0)
    monkeypatch.setattr("mlprof.trace.jsonstream.PARALLEL_SLICE_BYTES", 64 << 10)
    monkeypatch.setattr("mlprof.trace.jsonstream.BLOCK_BYTES", 16 << 10)


@pytest.mark.usefixtures("small_slices")
def test_parallel_equals_sequential_on_a_real_trace() -> None:
    path = external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")
    _same(load_trace(path, workers=1), load_trace(path, workers=2))


@pytest.mark.usefixtures("small_slices")
def test_bad_textual_cut_falls_back_to_sequential(tmp_path: Path) -> None:
    # Names full of "}, {" tempt the textual cutter into cutting inside strings.
    events = [X("user_annotation", "ProfilerStep#1", 0, 10_000)]
    for i in range(3000):
        events.append(X("cpu_op", 'weird }, { name "}, {"' + "x" * (i % 50), i * 3, 2))
        events.append(kernel("k }, {", i * 3 + 1, 1))
    path = write_trace(tmp_path / "weird.json", events)
    parallel = load_trace(path, workers=2)
    _same(load_trace(path, workers=1), parallel)
    assert len(parallel.host) == 3001
