"""Independent replays shared with a forked helper process when a core is idle.

The what-if replays of one analysis (each finding's fix on the recorded graph, the pacing
probes) are independent of each other and each ends in a few numbers, while the analysis
runs on one core: on a 217 MB trace they were ~0.6 s of a ~1.5 s analysis with the second
core idle. :class:`SharedTasks` forks one helper (copy on write: the graphs are not copied
or sent) that takes tasks from the same queue as this process, so each task runs once, in
whichever process is free first, and the helper sends its results back pickled.

The results are the in-process ones: a task is a deterministic function of what both
processes hold, and any task the helper did not deliver (it failed, raised, warned, was
killed, or no helper was started) is run here, so errors and warnings are this process's
own. The helper ignores Ctrl-C (the parent's to handle), dies with the parent
(``PR_SET_PDEATHSIG`` on Linux) and is stopped when the tasks' ``with`` block is left by
an exception (Ctrl-C, SIGTERM as :class:`~mlprof.interrupts.Terminated`, an error).

A helper is started only on Linux with ``fork``, for two tasks or more (or one, where the caller has other
work to do meanwhile: the analysis's name views while it measures the causes) over graphs of at least
:data:`MIN_OPS` ops (on smaller ones the fork costs more than it saves), when the 1-minute load
average leaves a core idle (as the CLI's read-ahead decides), not in a worker process of a pool
(the job engine's ranks);
``MLPROF_HELPER=1`` starts one whatever the load, ``MLPROF_HELPER=0`` never.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO, Any, Generic, TypeVar

from mlprof.cores import idle_core, in_pool_worker
from mlprof.trace.children import reap, reap_soon
from mlprof.trace.memory import release_freed_memory

T = TypeVar("T")

_PID = struct.Struct("<q")
_INDEX = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
_END_OF_ROUND = (1 << 64) - 1
"""A length that ends the helper's first round (it then waits for :meth:`SharedTasks.more`'s message)."""
PATIENCE_S = 10.0
PATIENCE_TASKS = 20.0
"""Once this process has no task left, it waits for the helper's last results at most the longer of
:data:`PATIENCE_S` seconds and :data:`PATIENCE_TASKS` times its own longest task, between two reads; then it
stops the helper and runs what is missing itself (the same results, later)."""
MAX_TASKS = 1000
"""Most tasks one queue holds: every index is written to the queue pipe before the fork, and a pipe takes
writes up to its atomic size (4 KB on Linux) without blocking."""

_PR_SET_PDEATHSIG = 1


MIN_OPS = 100_000
"""Fewest host calls and device ops (all the tasks' graphs together) for which a helper is started unasked:
forking a process of a few hundred MB costs ~10 ms and each replay of a graph costs ~0.1 us an op, so on a
35 MB trace (21 k ops, replays of ~3 ms) the helper made the analysis slower (0.17 against 0.11 s)."""


def helper_wanted(n_tasks: int, n_ops: int, at_least: int = 2) -> bool:
    """Whether a helper process pays for ``n_tasks`` tasks (``at_least`` of them) over graphs of ``n_ops`` ops (see
    the module docstring)."""
    setting = os.environ.get("MLPROF_HELPER", "auto")
    if setting == "0" or n_tasks < max(at_least, 1) or n_tasks > MAX_TASKS:
        return False
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    if setting != "1" and n_ops < MIN_OPS:
        return False  # most traces are below
    if in_pool_worker():
        return False  # a worker of a pool (the job engine's ranks): the pool shares the cores out already
    return setting == "1" or idle_core()


class SharedTasks(Generic[T]):
    """Run ``tasks`` (in order of their results) here and in a forked helper, each task once.

    ``with SharedTasks(tasks) as shared: ...; results = shared.results()``: the helper starts on
    entering (it takes tasks while this process does other work in the block), :meth:`results` runs
    the tasks left here and gathers the helper's. ``n_ops``: the size of the tasks' graphs (host calls and
    device ops); ``helper``: None decides by :func:`helper_wanted`. ``then``: tasks that depend on the first
    round's results come as a second round, ``shared.more(message)``, each process making them with
    ``then(message)`` (a small picklable message: the helper already holds everything else since the fork).
    """

    def __init__(
        self,
        tasks: Sequence[Callable[[], T]],
        *,
        n_ops: int = 0,
        helper: bool | None = None,
        at_least: int = 2,
        then: Callable[[Any], Sequence[Callable[[], T]]] | None = None,
    ) -> None:
        self.tasks = list(tasks)
        self.then = then
        """Makes a second round's tasks from a message (:meth:`more`), in this process and in the helper."""
        self.waiting = False
        """Whether the helper has delivered the first round and waits for :meth:`more`'s message."""
        self.second: list[int] = []
        """The second round's pipes (message, queue) until :meth:`more` starts it."""
        if helper is None:
            helper = helper_wanted(len(self.tasks), n_ops, at_least)
        self.want_helper = helper and len(self.tasks) <= MAX_TASKS
        self.pid: int | None = None
        self.queue_fd: int | None = None
        self.result_fd: int | None = None
        self.by_helper: set[int] = set()
        """Indices of the tasks whose results came from the helper (for tests and measurements)."""

    def __enter__(self) -> SharedTasks[T]:
        if self.want_helper and self.tasks:
            try:
                self._start()
            except BaseException:  # an interrupt held back over the fork is raised as the mask is restored
                self._stop()
                raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop(wait=kind is not None)  # left normally: at most a helper waiting for a second round

    @property
    def started(self) -> bool:
        """Whether a helper was started (and :meth:`results` not yet taken)."""
        return self.queue_fd is not None

    def results(self) -> list[T]:
        """Every task's result, in order: the helper's where it delivered one, the others run here."""
        done: dict[int, T] = {}
        if self.queue_fd is not None:
            longest = 0.0
            while (index := self._take()) is not None:
                started = time.perf_counter()
                done[index] = self.tasks[index]()
                longest = max(longest, time.perf_counter() - started)
            delivered, self.waiting = self._gather(max(PATIENCE_S, PATIENCE_TASKS * longest))
            for index, value in delivered:
                if index not in done:
                    done[index] = value
                    self.by_helper.add(index)
            if self.waiting:  # the helper waits for more(): only this round's queue is done with
                fd, self.queue_fd = self.queue_fd, None
                os.close(fd)
            else:
                self._stop(wait=False)
        out: list[T] = []
        for i, task in enumerate(self.tasks):
            if i in done:
                out.append(done[i])
            else:
                out.append(task())
        release_freed_memory()  # the replays' temporaries (once: each trim costs ~2 ms, the peak is elsewhere)
        return out

    def more(self, message: Any) -> list[T]:
        """A second round, after :meth:`results`: the tasks ``then(message)`` makes, shared with the same helper
        if it delivered the first round and waits (one fork instead of two: the second fork's own cost and the
        copy-on-write faults of every page this process writes again after it), else run here."""
        assert self.then is not None, "more() needs then="
        self.tasks = list(self.then(message))
        self.by_helper = set()
        if not self.waiting or len(self.tasks) > MAX_TASKS:
            self._stop(wait=False)
            return self.results()
        self.waiting = False
        message_w, queue_r, queue_w = self.second
        self.second = []
        self.queue_fd = queue_r
        try:
            os.write(queue_w, b"".join(_INDEX.pack(i) for i in range(len(self.tasks))))
        finally:
            os.close(queue_w)  # the queue ends once every index is taken
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_LENGTH.pack(len(payload)) + payload)
        try:
            while view:
                view = view[os.write(message_w, view) :]
        except OSError:  # the helper is gone (its end of the pipe closed): everything runs here
            self._stop()
        finally:
            with contextlib.suppress(OSError):
                os.close(message_w)
        return self.results()

    # --- the helper ---

    def _start(self) -> None:
        try:
            queue_r, queue_w = os.pipe()
        except OSError:
            return
        try:
            result_r, result_w = os.pipe()
        except OSError:
            os.close(queue_r)
            os.close(queue_w)
            return
        os.write(queue_w, b"".join(_INDEX.pack(i) for i in range(len(self.tasks))))
        os.close(queue_w)  # the queue ends (a read returns b"") once every index is taken
        try:
            born_r, born_w = os.pipe()  # the helper's pid, for an interrupt raised before the fork's answer is kept
            if self.then is not None:  # the second round's message and queue (read, write each)
                self.second = list(os.pipe())
                self.second += os.pipe()
        except OSError:
            self._close_second()
            for fd in (queue_r, result_r, result_w):
                os.close(fd)
            return
        # Ctrl-C and SIGTERM held back over the fork (as mlprof.interrupts.signals_deferred): one landing
        # mid-fork is raised just after it, here, not in an at-fork hook that drops it.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        parent = os.getpid()  # taken before the fork: a parent killed before the helper first runs is then seen
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns on a fork with threads alive (pyarrow's allocator keeps a background one
                # here); the helper takes no lock another thread could hold (the prefetch forks the same way).
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the helper's coverage is not collected (it leaves by os._exit)
                os.write(born_w, _PID.pack(os.getpid()))
                for fd in (result_r, born_r, born_w, *self.second[1::2]):
                    os.close(fd)
                self._helper(parent, queue_r, result_w)
            os.close(result_w)
            if self.second:  # kept here: the message's write end, the queue's both ends
                os.close(self.second[0])
                self.second = self.second[1:]
            self.pid, self.queue_fd, self.result_fd = pid, queue_r, result_r
        except OSError:  # no fork: everything runs here
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            self._close_second()
            for fd in (queue_r, result_r, result_w, born_r, born_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            return
        except BaseException:
            # A Ctrl-C that another thread (pyarrow's allocator keeps one) took while this one held signals
            # back is raised here at the first check, possibly before ``pid`` was kept: the helper said its pid.
            try:
                os.close(born_w)
                born = os.read(born_r, _PID.size)
                os.close(born_r)
                if len(born) == _PID.size and self.pid is None:
                    self.pid = _PID.unpack(born)[0]
                if self.queue_fd is None:
                    for fd in (queue_r, result_r, result_w):
                        with contextlib.suppress(OSError):
                            os.close(fd)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            raise
        os.close(born_w)
        os.close(born_r)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _take(self) -> int | None:
        """The next task's index from the shared queue, None when it is empty."""
        assert self.queue_fd is not None
        record = os.read(self.queue_fd, _INDEX.size)
        return _INDEX.unpack(record)[0] if len(record) == _INDEX.size else None

    def _helper(self, parent: int, queue_fd: int, out_fd: int) -> None:  # pragma: no cover - in the helper
        """Take tasks until the queue is empty, sending each result; never returns, never prints."""
        code = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            _die_with_parent(parent)
            import gc

            gc.disable()  # a collection would touch (and copy) every page of the parent's objects
            self.queue_fd = queue_fd
            with os.fdopen(out_fd, "wb") as out:
                self._serve(out)
                if self.then is not None:
                    out.write(_LENGTH.pack(_END_OF_ROUND))  # the parent's results() ends here
                    out.flush()
                    message = _read_message(self.second[0])
                    if message is not None:  # else the parent left without a second round
                        self.tasks = list(self.then(message))
                        self.queue_fd = self.second[2]
                        self._serve(out)
        except BaseException:
            code = 1
        os._exit(code)

    def _serve(self, out: IO[bytes]) -> None:  # pragma: no cover - in the helper
        """Take tasks until the queue is empty, sending each result (what fails or warns is left to the parent)."""
        while (index := self._take()) is not None:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    value = self.tasks[index]()
            except Exception:
                continue  # the parent runs it and reports the error itself
            if caught:
                continue  # the parent runs it and shows the warnings itself
            data = pickle.dumps((index, value), protocol=pickle.HIGHEST_PROTOCOL)
            out.write(_LENGTH.pack(len(data)) + data)
            out.flush()
            release_freed_memory()

    def _gather(self, patience_s: float) -> tuple[list[tuple[int, T]], bool]:
        """The helper's results, read to the end of its pipe or of the round, and whether the round ended (the
        helper waits for :meth:`more`, its pipe still open); what cannot be read is run here instead.

        A helper that sends nothing for ``patience_s`` (stuck: a lock another thread held at the fork, a
        machine out of memory) is given up and stopped; its tasks then run here, with the same results."""
        assert self.result_fd is not None
        fd = self.result_fd
        data = bytearray()
        out: list[tuple[int, T]] = []
        at = 0
        ended = False
        try:
            while not ended:
                ready, _, _ = select.select([fd], [], [], patience_s)
                if not ready:
                    break  # no word from the helper for patience_s
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break  # the helper is done (or gone)
                data += chunk
                while at + _LENGTH.size <= len(data) and not ended:
                    (size,) = _LENGTH.unpack_from(data, at)
                    if size == _END_OF_ROUND:
                        ended = True
                    elif at + _LENGTH.size + size > len(data):
                        break  # the rest of this result is still on its way
                    else:
                        index, value = pickle.loads(bytes(data[at + _LENGTH.size : at + _LENGTH.size + size]))
                        out.append((int(index), value))
                    at += _LENGTH.size + (0 if ended else size)
        except (OSError, EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError):
            ended = False  # unreadable: what it did not deliver runs here
        if not ended:
            self.result_fd = None
            os.close(fd)
        return out, ended

    def _stop(self, *, wait: bool = True) -> None:
        """End the helper (if still running) and close the pipes; safe to call more than once.

        ``wait``: reap it before returning; else (its results read to the end of the pipe: it has ended or is
        ending) reap it when it has given its memory back (:func:`mlprof.trace.children.reap_soon`)."""
        for name in ("queue_fd", "result_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._close_second()
        self.waiting = False
        pid, self.pid = self.pid, None
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            if wait:
                reap(pid)
            else:
                reap_soon(pid)

    def _close_second(self) -> None:
        fds, self.second = self.second, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_message(fd: int) -> Any:  # pragma: no cover - in the helper
    """The parent's second-round message (length, pickle), None if it closed the pipe without one."""
    data = bytearray()
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    if len(data) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack_from(data, 0)
    return pickle.loads(bytes(data[_LENGTH.size : _LENGTH.size + size]))


def _die_with_parent(parent: int) -> None:  # pragma: no cover - in the helper
    """The helper gets SIGKILL when the parent dies (Linux); a parent already gone ends it now."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
