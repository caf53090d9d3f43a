"""Independent pieces of work run in this thread and one more, when a core is idle.

:meth:`~mlprof.trace.build.TableBuilder.finish` makes a large trace's tables after the reading processes have
ended, so on a machine that is otherwise quiet the second core is idle then. Most of that time is numpy's
copies, gathers and sorts and the page faults of the new arrays, none of which holds the GIL: the 217 MB tiled
trace's seven tables took 50-55 ms on one thread and 28-33 ms on two, the same CPU (benchmarks/RESULTS.md,
29c). Where no core is idle a second thread only competes with the neighbour, so the work stays on this thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from mlprof.cores import idle_core, in_pool_worker
from mlprof.trace.memory import release_freed_memory

T = TypeVar("T")

MIN_WEIGHT = 200_000
"""Total weight (a table's rows) below which starting a thread costs more than it saves."""


def run_in_lanes(jobs: dict[str, tuple[int, Callable[[], T]]], second: bool | None = None) -> dict[str, T]:
    """Each job's result, by name, in ``jobs``' order; a job is ``(weight, work)``.

    The jobs are dealt, heaviest first, to whichever of two lanes has the less weight so far; the second
    lane's jobs run one after another in a new thread. ``second``: whether to use it (None: where the jobs
    weigh at least :data:`MIN_WEIGHT` and a core is idle). The jobs must not share what they change."""
    if second is None:
        second = sum(weight for weight, _ in jobs.values()) >= MIN_WEIGHT and _idle_core()
    results: dict[str, T] = {}
    if not second:
        return {name: work() for name, (_, work) in jobs.items()}
    lanes: tuple[list[str], list[str]] = ([], [])
    loads = [0, 0]
    for name in sorted(jobs, key=lambda n: -jobs[n][0]):
        lane = 0 if loads[0] <= loads[1] else 1
        lanes[lane].append(name)
        loads[lane] += jobs[name][0]
    failed: list[BaseException] = []

    def second_lane() -> None:
        try:
            for name in lanes[1]:
                results[name] = jobs[name][1]()
        except BaseException as exc:  # re-raised in this thread, after the join
            failed.append(exc)

    thread = threading.Thread(target=second_lane, name="mlprof-lane", daemon=True)
    thread.start()
    try:
        for name in lanes[0]:
            results[name] = jobs[name][1]()
    finally:
        thread.join()
        # The second thread's temporaries, freed in its own glibc arena, would stay there unused by this thread:
        # +7 MB of the 217 MB trace's peak RSS (201.7 -> 208.3 MB); handed back, +2 MB.
        release_freed_memory(however_little=True)
    if failed:
        raise failed[0]
    return {name: results[name] for name in jobs}


def _idle_core() -> bool:
    """Whether a second thread pays: a core is idle (:func:`mlprof.cores.idle_core`) and this process is not a
    worker of a process pool (a job's ranks: the pool shares the cores out already)."""
    return (os.cpu_count() or 1) >= 2 and not in_pool_worker() and idle_core()
