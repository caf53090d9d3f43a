"""Forked children reaped without waiting for their exit (mlprof.trace.children), and the what-if helper that
uses it: no child is left behind, and results() does not wait for the helper to give its memory back."""

from __future__ import annotations

import os
import time

import pytest

from mlprof.trace import children
from mlprof.whatif.helper import SharedTasks

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _child(seconds: float) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        time.sleep(seconds)
        os._exit(0)
    return pid


def _is_child(pid: int) -> bool:
    """Whether ``pid`` is still an unreaped child of this process (running or a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def test_an_ended_child_is_reaped_at_once_and_a_running_one_later() -> None:
    ended = _child(0.0)
    time.sleep(0.3)
    children.reap_soon(ended)
    assert not _is_child(ended) and ended not in children._pending
    running = _child(0.5)
    started = time.monotonic()
    children.reap_soon(running)
    assert time.monotonic() - started < 0.25  # it did not wait for the child
    assert running in children._pending
    time.sleep(0.8)
    other = _child(0.0)
    time.sleep(0.3)
    children.reap_soon(other)  # reaps the one held back too, now ended
    assert not _is_child(running) and not _is_child(other)
    assert not children._pending


def test_what_is_held_back_is_reaped_at_exit() -> None:
    running = _child(0.3)
    children.reap_soon(running)
    assert running in children._pending
    children._reap_pending()  # the exit hook: waits for it
    assert not _is_child(running) and not children._pending


def test_the_helper_leaves_no_child_behind() -> None:
    tasks = [lambda n=n: (n, os.getpid()) for n in range(8)]
    with SharedTasks(tasks, helper=True) as shared:
        pid = shared.pid
        time.sleep(0.2)
        results = shared.results()
    assert [n for n, _ in results] == list(range(8))
    assert shared.by_helper and pid is not None and shared.pid is None
    children._reap_pending()
    assert not _is_child(pid)


def test_results_do_not_wait_for_the_helper_to_end() -> None:
    """After its last result the helper closes its pipe, then leaves (giving back its copy of this process's
    memory: ~7.5 ms on the 217 MB trace; here a pause put before its exit), which results() does not wait for."""
    pause = 0.8
    parent = os.getpid()

    def task() -> int:
        if os.getpid() != parent:  # in the helper (its own copy of the os module): exit late
            leave = os._exit
            os._exit = lambda code: (time.sleep(pause), leave(code))  # type: ignore[assignment,func-returns-value]
        return 1

    with SharedTasks([task, task], helper=True) as shared:
        pid = shared.pid
        time.sleep(0.2)  # the helper takes both tasks
        started = time.monotonic()
        assert shared.results() == [1, 1]
        waited = time.monotonic() - started
    assert shared.by_helper == {0, 1}
    assert waited < pause / 2
    assert pid is not None and _is_child(pid)  # still leaving: reaped later
    children._reap_pending()
    assert not _is_child(pid)
