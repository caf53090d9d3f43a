"""The what-if replays shared with a forked helper process (mlprof.whatif.helper).

The helper's results must be the in-process ones whatever happens to it: compared here on
a real trace (the whole report), and on the fault paths (a helper that dies, a task that
raises or warns in it, an interrupted parent, a parent killed outright).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mlprof
from mlprof import cores
from mlprof.trace import children
from mlprof.whatif import helper as helper_module
from mlprof.whatif.helper import SharedTasks, helper_wanted

from conftest import external

REPO = Path(__file__).resolve().parents[1]
RESNET = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"


def _square_sum(n: int) -> tuple[int, int]:
    return n, sum(i * i for i in range(n))


def test_helper_results_equal_in_process_results() -> None:
    tasks = [lambda n=n: (*_square_sum(n), os.getpid()) for n in range(50, 70)]
    with SharedTasks(tasks, helper=True) as shared:
        time.sleep(0.2)  # this process is busy elsewhere: the helper takes tasks meanwhile
        results = shared.results()
    assert shared.by_helper, "the helper delivered no result"
    for i, (n, total, pid) in enumerate(results):
        assert (n, total) == (50 + i, (n - 1) * n * (2 * n - 1) // 6)  # the closed form, not the loop
        assert (pid != os.getpid()) == (i in shared.by_helper)
    with SharedTasks(tasks, helper=False) as alone:
        plain = alone.results()
    assert [r[:2] for r in plain] == [r[:2] for r in results] and not alone.by_helper


def test_tasks_the_helper_does_not_deliver_run_here() -> None:
    parent = os.getpid()

    def dies() -> int:
        if os.getpid() != parent:
            os._exit(3)  # the helper is killed mid-task (out of memory, a signal)
        return 7

    tasks = [dies for _ in range(6)]
    with SharedTasks(tasks, helper=True) as shared:
        time.sleep(0.2)
        assert shared.results() == [7] * 6
    assert not shared.by_helper


def test_a_stuck_helper_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = os.getpid()
    monkeypatch.setattr(helper_module, "PATIENCE_S", 0.5)

    def stuck(n: int) -> int:
        if os.getpid() != parent:
            time.sleep(60)  # a helper that never answers (a lock held at the fork, a machine out of memory)
        return n * n

    tasks = [lambda n=n: stuck(n) for n in range(4)]
    started = time.monotonic()
    with SharedTasks(tasks, helper=True) as shared:
        time.sleep(0.2)  # the helper takes a task and sticks in it
        assert shared.results() == [0, 1, 4, 9]
    assert not shared.by_helper
    assert time.monotonic() - started < 10
    assert shared.pid is None  # stopped and reaped


def test_an_error_or_a_warning_in_the_helper_is_raised_or_shown_here() -> None:
    parent = os.getpid()
    seen: list[int] = []

    def fails() -> int:
        seen.append(os.getpid())
        raise ValueError("bad graph")

    with pytest.raises(ValueError, match="bad graph"), SharedTasks([fails, fails], helper=True) as shared:
        time.sleep(0.2)
        shared.results()
    assert seen and all(pid == parent for pid in seen)  # the helper's own attempts are not in this list

    def warns() -> int:
        warnings.warn("odd trace", RuntimeWarning, stacklevel=1)
        return 1

    with pytest.warns(RuntimeWarning, match="odd trace"), SharedTasks([warns, warns], helper=True) as shared:
        time.sleep(0.2)
        assert shared.results() == [1, 1]
    assert not shared.by_helper


def test_leaving_by_an_exception_stops_the_helper() -> None:
    with pytest.raises(KeyboardInterrupt), SharedTasks([lambda: time.sleep(30)] * 2, helper=True) as shared:
        pid = shared.pid
        assert pid is not None
        raise KeyboardInterrupt
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no child left behind


def _rounds(parent: int, die_in: str = "") -> tuple[list[Callable[[], tuple[int, int]]], Any]:
    """Six first-round tasks and a second round of six made from a message (each takes 50 ms, so both processes
    take some); ``die_in``: the helper dies in the first round, or when it makes the second round's tasks."""

    def first(n: int) -> tuple[int, int]:
        if die_in == "first" and os.getpid() != parent:
            os._exit(3)
        return n, os.getpid()

    def second(n: int, factor: int) -> tuple[int, int]:
        time.sleep(0.05)
        return n * factor, os.getpid()

    def then(factor: int) -> list[Callable[[], tuple[int, int]]]:
        if die_in == "then" and os.getpid() != parent:
            raise RuntimeError("the helper cannot make them")
        return [lambda n=n: second(n, factor) for n in range(6)]

    return [lambda n=n: first(n) for n in range(6)], then


def _assert_gone(shared: SharedTasks[Any], helper: int | None) -> None:
    """The helper was started, its pipes are closed, and once the held-back children are reaped it is no child of
    this process any more (reaped, not left a zombie)."""
    assert helper is not None and shared.pid is None and not shared.second
    children._reap_pending()
    with pytest.raises(ChildProcessError):
        os.waitpid(helper, os.WNOHANG)


@pytest.mark.parametrize("die_in", ["", "first", "then"])
def test_a_second_round_is_shared_with_the_same_helper(die_in: str) -> None:
    parent = os.getpid()
    first, then = _rounds(parent, die_in)
    with SharedTasks(first, helper=True, then=then) as shared:
        helper = shared.pid
        time.sleep(0.2)  # the helper takes the first round
        one = shared.results()
        assert shared.waiting == (die_in != "first")
        two = shared.more(3)
        by_helper = shared.by_helper
    assert [n for n, _ in one] == list(range(6))
    assert [v for v, _ in two] == [3 * n for n in range(6)]  # the closed form
    others = {pid for _, pid in one + two} - {parent}
    if die_in:
        assert {pid for _, pid in two} == {parent} and not by_helper  # everything of round two ran here
    else:
        assert others == {helper} and by_helper  # one helper for both rounds, and it took some of the second
    _assert_gone(shared, helper)


def test_a_second_round_never_asked_for_ends_the_helper() -> None:
    first, then = _rounds(os.getpid())
    with SharedTasks(first, helper=True, then=then) as shared:
        helper = shared.pid
        time.sleep(0.2)
        assert [n for n, _ in shared.results()] == list(range(6)) and shared.waiting
    _assert_gone(shared, helper)


def test_a_second_round_without_a_helper_runs_here() -> None:
    first, then = _rounds(os.getpid())
    with SharedTasks(first, helper=False, then=then) as shared:
        assert [n for n, _ in shared.results()] == list(range(6))
        two = shared.more(2)
    assert two == [(2 * n, os.getpid()) for n in range(6)] and not shared.by_helper


_INTERRUPT_AFTER_FORK: list[bool] = []


def _interrupt_after_fork() -> None:
    if _INTERRUPT_AFTER_FORK:
        _INTERRUPT_AFTER_FORK.clear()
        # To this (the main) thread, which holds SIGINT back over the fork: raised as the helper's start ends.
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


os.register_at_fork(after_in_parent=_interrupt_after_fork)


def test_an_interrupt_during_the_fork_stops_the_helper() -> None:
    psutil = pytest.importorskip("psutil")
    before = {p.pid for p in psutil.Process().children()}
    _INTERRUPT_AFTER_FORK.append(True)
    with pytest.raises(KeyboardInterrupt), SharedTasks([lambda: time.sleep(30)] * 2, helper=True):
        pytest.fail("the interrupt did not arrive during the start")
    assert not _INTERRUPT_AFTER_FORK
    assert {p.pid for p in psutil.Process().children()} == before  # the helper was stopped and reaped


@pytest.mark.parametrize("late_start", [False, True])
def test_the_helper_dies_with_its_parent(tmp_path: Path, late_start: bool) -> None:
    """Also when the parent is killed before the helper first runs (``late_start``: an at-fork hook holds it)."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            from mlprof.whatif.helper import SharedTasks
            if {late_start}:
                os.register_at_fork(after_in_child=lambda: time.sleep(1.0))
            with SharedTasks([lambda: time.sleep(60)] * 2, helper=True) as shared:
                print(shared.pid, flush=True)
                time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert proc.stdout is not None
    helper = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(helper):
        time.sleep(0.05)
    assert not _alive(helper)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_helper_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    big = helper_module.MIN_OPS
    monkeypatch.setenv("MLPROF_HELPER", "0")
    assert not helper_wanted(5, big)
    monkeypatch.setenv("MLPROF_HELPER", "1")
    assert helper_wanted(5, 0) and not helper_wanted(1, big)
    assert helper_wanted(1, big, at_least=1) and not helper_wanted(0, big, at_least=1)  # one task may be worth it
    monkeypatch.setenv("MLPROF_HELPER", "auto")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(cores, "running_now", lambda: 1)  # this process alone runs
    assert helper_wanted(5, big) and not helper_wanted(5, big - 1)  # a small graph: the fork costs more
    monkeypatch.setattr(cores, "running_now", lambda: os.cpu_count() or 1)
    assert not helper_wanted(5, big)  # every core busy right now, whatever the load average says
    monkeypatch.setattr(cores, "running_now", lambda: None)
    assert helper_wanted(5, big)  # no /proc/stat: the load average decides
    monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count() or 1), 0.0, 0.0))
    assert not helper_wanted(5, big)  # no idle core


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the helper is forked on Linux only")
def test_report_with_the_helper_equals_the_report_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real trace with four first-stage fix replays: the whole JSON report is the same either way."""
    path = external(RESNET)
    delivered: list[int] = []
    results = SharedTasks.results

    def counted(self: SharedTasks) -> list:
        out = results(self)
        delivered.extend(self.by_helper)
        return out

    monkeypatch.setattr(helper_module.SharedTasks, "results", counted)
    monkeypatch.setenv("MLPROF_HELPER", "0")
    alone = mlprof.analyze(path).to_json()
    assert not delivered
    monkeypatch.setenv("MLPROF_HELPER", "1")
    shared = mlprof.analyze(path).to_json()
    assert delivered, "the helper replayed no fix"
    assert shared == alone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the helper is forked on Linux only")
def test_name_views_measured_by_the_helper_equal_those_measured_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """analyze_job's kernel and op views measured in the helper (while this process measures the causes and
    builds the graph) are the frames measured here; they came from another process."""
    import pandas as pd

    import mlprof.analysis as analysis
    from mlprof.analyzers.name_totals import name_views
    from mlprof.trace.loader import load_trace

    pids = tmp_path / "pids"

    def recorded(ra: object) -> object:
        with pids.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
        return name_views(ra)  # type: ignore[arg-type]

    monkeypatch.setattr(analysis, "name_views", recorded)
    trace = load_trace(external(RESNET))
    monkeypatch.setenv("MLPROF_HELPER", "0")
    (here,) = analysis.analyze_job([trace], "t").ranks
    assert pids.read_text().split() == [str(os.getpid())]
    pids.unlink()
    monkeypatch.setenv("MLPROF_HELPER", "1")
    (shared,) = analysis.analyze_job([trace], "t").ranks
    assert pids.read_text().split() != [str(os.getpid())], "the views were measured here"
    assert here.name_views is not None and shared.name_views is not None
    for a, b in zip(here.name_views, shared.name_views, strict=True):
        assert len(a) > 10
        pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the helper is forked on Linux only")
def test_plan_replayed_ahead_equals_the_plan_replayed_stage_by_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet50 nw0 forced into the ordered plan (as a graph of more than LARGE_GRAPH_OPS ops is): its stages
    replayed ahead in two chains (here and in the helper) give the report replayed stage by stage in one process,
    with every stage taken and with the second stage applied but not taken (a higher MIN_PLAN_GAIN: the chains'
    later stages assumed it, so they are replayed again here)."""
    import importlib

    predict = importlib.import_module("mlprof.whatif.predict")
    monkeypatch.setattr(predict, "LARGE_GRAPH_OPS", 0)
    ahead: list[list[int]] = []
    replay_ahead = predict._replay_ahead

    def recorded(*args: object) -> object:
        out = replay_ahead(*args)
        ahead.append(sorted(out))
        return out

    monkeypatch.setattr(predict, "_replay_ahead", recorded)
    second_rounds: list[set[int]] = []  # the chains came as the first stage helper's second round (no new fork)
    more = SharedTasks.more

    def counted(self: SharedTasks[object], message: object) -> list[object]:
        out = more(self, message)
        second_rounds.append(set(self.by_helper))
        return out

    monkeypatch.setattr(SharedTasks, "more", counted)
    path = external(RESNET)
    plans = []
    for min_gain in (1e-4, 0.06):
        monkeypatch.setattr(predict, "MIN_PLAN_GAIN", min_gain)
        monkeypatch.setenv("MLPROF_HELPER", "0")
        alone = mlprof.analyze(path).to_json()
        assert ahead.pop() == []
        monkeypatch.setenv("MLPROF_HELPER", "1")
        second_rounds.clear()
        shared = mlprof.analyze(path).to_json()
        assert ahead.pop() == [1, 2, 3]
        assert len(second_rounds) == 1 and len(second_rounds.pop()) == 1  # one chain each, one by the helper
        assert shared == alone
        plans.append([step["rule"] for step in mlprof.analyze(path).to_dict()["plan"]])
    assert plans[0][:3] == ["LAUNCH001", "DATA001", "FUSE001"]
    assert plans[1][:2] == ["LAUNCH001", "FUSE001"]  # DATA001 gains less than 6% of the step after LAUNCH001
