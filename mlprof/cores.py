"""Whether this process may take a second core now: the one test behind every optional parallel step.

The read-ahead (:mod:`mlprof.__main__`), the what-if helper (:mod:`mlprof.whatif.helper`) and the reader's second
thread (:mod:`mlprof.trace.lanes`) each only pay where a core would otherwise be idle; on a busy machine they
compete with the neighbour and are slower than working alone. Standard library only: the CLI asks before it
imports anything else.
"""

from __future__ import annotations

import os
import sys


def load_leaves_a_core() -> bool:
    """Whether the 1-minute load average leaves a core idle (False where there is none: Windows)."""
    getloadavg = getattr(os, "getloadavg", None)
    if getloadavg is None:
        return False
    try:
        return bool(getloadavg()[0] <= (os.cpu_count() or 1) - 0.5)
    except OSError:
        return False


def running_now() -> int | None:
    """Threads running or runnable on the machine now (Linux ``/proc/stat``), None where it cannot be read."""
    try:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def idle_core() -> bool:
    """Whether a core is idle: the load average leaves one, and so do the threads running right now.

    The load average lags by tens of seconds: a neighbour that has just started takes the other core before it
    shows (a helper then only competes with it: 0.92 against 0.82 s at load 1.24 on the 217 MB trace), so
    ``procs_running`` (this process's own thread included) is checked too; where it cannot be read, the load
    average decides."""
    if not load_leaves_a_core():
        return False
    running = running_now()
    return running is None or running <= (os.cpu_count() or 1) - 1


def in_pool_worker() -> bool:
    """Whether this process is a worker of a :mod:`multiprocessing` pool (a job's ranks: the pool shares the cores
    out already). Not imported here: a process that has not imported it was not started by it."""
    multiprocessing = sys.modules.get("multiprocessing")
    return multiprocessing is not None and multiprocessing.parent_process() is not None
