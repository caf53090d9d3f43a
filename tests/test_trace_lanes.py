"""The reader's tables made on two threads (mlprof.trace.lanes) equal those made on one."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from mlprof import cores
from mlprof.trace import lanes, load_trace
from mlprof.trace.build import TableBuilder
from mlprof.trace.jsonstream import read_trace_events

from conftest import X, assert_same_tables, external, kernel, write_trace


def test_jobs_are_dealt_to_two_threads_and_come_back_in_order() -> None:
    ran_on: dict[str, int] = {}

    def job(name: str, value: int) -> Callable[[], int]:
        def work() -> int:
            ran_on[name] = threading.get_ident()
            return value

        return work

    jobs = {
        name: (weight, job(name, i)) for i, (name, weight) in enumerate([("a", 5), ("b", 90), ("c", 40), ("d", 60)])
    }
    for second in (False, True):
        ran_on.clear()
        results = lanes.run_in_lanes(jobs, second=second)
        assert list(results) == ["a", "b", "c", "d"]
        assert results == {"a": 0, "b": 1, "c": 2, "d": 3}
        here = threading.get_ident()
        # Heaviest first to the lighter lane: b (90) here, d (60) there, c (40) there, a (5) here.
        assert {n for n, t in ran_on.items() if t == here} == ({"a", "b", "c", "d"} if not second else {"a", "b"})


def test_a_failure_in_the_second_thread_is_raised_here() -> None:
    def fail() -> int:
        raise KeyError("lost")

    jobs = {"ok": (10, lambda: 1), "bad": (5, fail)}
    with pytest.raises(KeyError, match="lost"):
        lanes.run_in_lanes(jobs, second=True)


def test_small_jobs_stay_on_this_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "_idle_core", lambda: True)
    here = threading.get_ident()
    ran: list[int] = []
    lanes.run_in_lanes({"a": (lanes.MIN_WEIGHT - 2, lambda: ran.append(threading.get_ident())), "b": (1, lambda: 0)})
    assert ran == [here]


def _tables(path: Path, monkeypatch: pytest.MonkeyPatch, second: bool) -> dict[str, pd.DataFrame]:
    monkeypatch.setattr(lanes, "MIN_WEIGHT", 0)
    monkeypatch.setattr(lanes, "_idle_core", lambda: second)
    builder = TableBuilder()
    read_trace_events(path, builder.add)
    return builder.finish()


@pytest.mark.parametrize(
    "relative",
    ["hta/tests/data/nccl_parser_config/nccl_data.json.gz", "hta/tests/data/trace_filter/sampled_rank-0.json.gz"],
)
def test_tables_on_two_threads_equal_those_on_one(relative: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = external(relative)
    one, two = _tables(path, monkeypatch, False), _tables(path, monkeypatch, True)
    assert list(one) == list(two)
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name], obj=name)
        for col in one[name].columns:
            if isinstance(one[name][col].dtype, pd.CategoricalDtype):
                assert one[name][col].cat.codes.dtype == two[name][col].cat.codes.dtype, (name, col)


def test_reversed_and_tied_times_on_two_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Events written in reverse time order, many with equal times: the stable order keeps the file's order
    # among equal times on both paths.
    events = [X("user_annotation", "ProfilerStep#1", 0, 100_000)]
    for i in range(3000, 0, -1):
        events.append(X("cpu_op", f"op{i % 7}", (i // 3) * 5, 2))
        events.append(kernel(f"k{i % 5}", (i // 3) * 5 + 1, 1))
    path = write_trace(tmp_path / "reversed.json", events)
    monkeypatch.setattr(lanes, "MIN_WEIGHT", 0)
    monkeypatch.setattr(lanes, "_idle_core", lambda: False)
    one = load_trace(path, workers=1)
    monkeypatch.setattr(lanes, "_idle_core", lambda: True)
    two = load_trace(path, workers=1)
    assert_same_tables(one, two)
    host = two.table("host")
    ops = host[host["cat"] == "cpu_op"]
    # Truth by brute force: the file's cpu_op events sorted by time, ties in file order.
    truth = sorted(
        ((e["ts"], k, e["name"]) for k, e in enumerate(events) if e.get("cat") == "cpu_op"), key=lambda t: t[:2]
    )
    assert ops["name"].astype(str).tolist() == [name for _, _, name in truth]


def _gate_in_child(out: multiprocessing.Queue[bool]) -> None:
    out.put(lanes._idle_core())


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: never a second thread")
def test_a_pool_worker_never_takes_a_second_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "load_leaves_a_core", lambda: True)  # a quiet machine, here and in the child
    monkeypatch.setattr(cores, "running_now", lambda: 1)
    assert not cores.in_pool_worker()
    assert lanes._idle_core()
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[bool] = context.Queue()
    child = context.Process(target=_gate_in_child, args=(out,))
    child.start()
    assert out.get(timeout=30) is False
    child.join(30)
