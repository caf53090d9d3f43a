"""Ctrl-C, SIGTERM and closed pipes: every exit path cleans up, in one line.

* SIGTERM (``kill``, a scheduler, a test harness) would end the process at once,
  leaving worker processes, a Streamlit child or a temporary file behind. While a
  command runs, :func:`terminate_as_exception` turns it into :class:`Terminated`, so
  ``finally`` blocks and ``except BaseException`` clean-ups run as for Ctrl-C.
* Worker processes (:func:`quiet_worker`, their pool initializer) ignore Ctrl-C and die
  on SIGTERM: the terminal sends SIGINT to the whole process group, and a worker that
  raised ``KeyboardInterrupt`` printed its own traceback; the parent stops them instead.
* A Ctrl-C or SIGTERM that Python drops is delivered again (:func:`interrupts_kept`): one
  landing while a weakref callback, a ``__del__`` or an at-fork hook runs raised there,
  where Python prints "Exception ignored" and goes on, and the interrupted command ran
  to the end and exited 0.
* A closed stdout (``mlprof analyze ... | head``) is :func:`pipe_closed`: stdout is
  pointed at ``/dev/null`` so that nothing more fails, and the exit status is 141
  (128 + SIGPIPE), what a shell shows for other Unix tools in a pipe, not 1 (which
  means a tripped gate).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a pool is made: a command reading one small trace runs without them
    from concurrent.futures import ProcessPoolExecutor

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so that clean-up code runs (exit 143)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_DEFERRED = {signal.SIGINT, signal.SIGTERM}


def quiet_worker() -> None:
    """Initializer of worker processes: Ctrl-C is the parent's to handle, SIGTERM ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)  # forked while the parent held them back


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back (delivered when this ends) in the main thread.

    A signal that lands while the workers are forked raises in an at-fork callback (logging's
    lock release), where Python prints "Exception ignored" and drops it: the interrupted
    command then ran to the end and exited 0. Held back, it is raised just after the fork.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of forked :func:`quiet_worker` processes; leaving it by an exception (Ctrl-C, SIGTERM,
    an error) stops the workers at once instead of waiting for their tasks, so none outlives mlprof.

    The workers are forked at once (a first, empty task) with Ctrl-C and SIGTERM held back."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork"), initializer=quiet_worker
    )
    try:
        with signals_deferred():
            pool.submit(int)  # forks every worker now (fork pools start all workers on the first task)
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def stop_workers(pool: ProcessPoolExecutor, grace_s: float = 5.0) -> None:
    """Cancel what has not started and end the workers (SIGTERM, then SIGKILL after ``grace_s``)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # no public API before Python 3.14
    results = getattr(pool, "_result_queue", None)  # shutdown drops it
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in workers:
        with contextlib.suppress(Exception):
            proc.join(grace_s)
            if proc.is_alive():
                proc.kill()
                proc.join(grace_s)
    # A worker ended while it was sending a result leaves half a message in the result pipe: the
    # pool's thread then waits for the rest in recv() for ever (this process holds the pipe's write
    # end too), and the interpreter's exit, which joins that thread, hangs (seen once in ~30 runs of
    # tests/test_parallel_reader.py). With the workers gone, closing that end gives it EOF instead.
    writer = getattr(results, "_writer", None)
    if writer is not None and not any(proc.is_alive() for proc in workers):
        with contextlib.suppress(Exception):
            writer.close()


REDELIVER_AFTER_S = 0.01
"""How long after a dropped interrupt it is delivered again (the callback that dropped it has returned)."""


class _Dropped:
    """An interrupt Python dropped, waiting to be delivered again (one at a time; later ones are the same)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.signum: int | None = None
        self.open = True

    def take(self) -> int | None:
        with self.lock:
            signum, self.signum = self.signum, None
            return signum

    def redeliver(self) -> None:
        """Helper thread: send the signal to the main thread again, unless the command ended meanwhile."""
        time.sleep(REDELIVER_AFTER_S)
        with self.lock:
            signum, self.signum = self.signum, None
            if signum is not None and self.open:
                main = threading.main_thread().ident
                if main is not None:
                    signal.pthread_kill(main, signum)  # held back like any signal while signals_deferred


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """While inside, a Ctrl-C or SIGTERM (:class:`Terminated`) that Python drops is delivered again.

    Python runs weakref callbacks (SQLAlchemy's event registry has some), ``__del__`` methods and
    at-fork hooks wherever the garbage collector or a fork happens to run them; a
    ``KeyboardInterrupt`` raised in one is printed ("Exception ignored in ...") and dropped. The
    hook installed here keeps it off stderr and sends the signal to the main thread again
    :data:`REDELIVER_AFTER_S` later, from a helper thread, once the callback has returned; one
    dropped in the last moments of the command is raised when this ends instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()
    dropped = _Dropped()
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        kind = unraisable.exc_type
        if os.getpid() == pid and issubclass(kind, (KeyboardInterrupt, Terminated)):
            signum = signal.SIGINT if issubclass(kind, KeyboardInterrupt) else signal.SIGTERM
            with dropped.lock:
                first, dropped.signum = dropped.signum is None, signum
            if first:
                threading.Thread(target=dropped.redeliver, name="mlprof-interrupt", daemon=True).start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        with dropped.lock:
            dropped.open = False
    late = dropped.take()  # reached only when the command ended without an exception
    if late is not None:
        raise KeyboardInterrupt if late == signal.SIGINT else Terminated


def clear_unhandled_interrupt_mark() -> None:
    """Undo CPython's note that the process ends by Ctrl-C (call it where a KeyboardInterrupt is handled).

    CPython (3.11, 3.12) notes a ``KeyboardInterrupt`` that leaves code ``exec()`` compiled from a
    string (dataclasses and namedtuples build their methods that way, so a Ctrl-C landing while a
    module defining one is imported), and ``python -m mlprof`` then ended by SIGINT (status -2)
    after printing mlprof's line and returning 130. A string evaluated without error clears the note.
    """
    exec("None")


def pipe_closed() -> int:
    """stdout's reader went away: send further output to /dev/null and return the exit status (141)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_PIPE_CLOSED
