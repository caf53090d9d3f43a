"""Background sampling of GPU counters: a thread per source, one buffered sink per run.

Samplers (NVML, DCGM) only read values; the :class:`CounterSink` owns the buffer and
the file. The sink flushes every few seconds from the sampler threads, so a long job
keeps a bounded buffer and a crash keeps what was already written. Nothing here runs
on the training thread except ``start``/``stop``.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from mlprof.collectors.faults import FaultLog
from mlprof.collectors.output import CounterFile, CounterRow

MAX_BUFFERED_ROWS = 2_000_000
"""Rows kept in memory while the file cannot be written (about 200 MB); the oldest go first."""


class CounterSink:
    """Thread-safe row buffer in front of a :class:`CounterFile`."""

    def __init__(self, file: CounterFile | None, faults: FaultLog, flush_every_s: float = 5.0) -> None:
        self.file = file
        self.faults = faults
        self.flush_every_s = flush_every_s
        self.rows_seen = 0
        self.rows_dropped = 0
        self._buffer: deque[CounterRow] = deque()
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def add(self, rows: list[CounterRow]) -> None:
        if not rows:
            return
        with self._lock:
            self._buffer.extend(rows)
            self.rows_seen += len(rows)
            overflow = len(self._buffer) - MAX_BUFFERED_ROWS
            for _ in range(max(0, overflow)):
                self._buffer.popleft()
            self.rows_dropped += max(0, overflow)
            due = time.monotonic() - self._last_flush >= self.flush_every_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the buffer; on failure the rows stay buffered for the next flush."""
        with self._lock:
            rows = list(self._buffer)
            self._buffer.clear()
            self._last_flush = time.monotonic()
        if not rows or self.file is None:
            return
        try:
            self.file.append(rows)
        except Exception as exc:
            self.faults.record(f"writing counters to {self.file.path}", exc)
            with self._lock:
                self._buffer.extendleft(reversed(rows))

    def buffered(self) -> list[CounterRow]:
        with self._lock:
            return list(self._buffer)


class BackgroundSampler:
    """A daemon thread calling :meth:`sample` every ``interval_s`` until stopped.

    Subclasses implement :meth:`open` (raise if the source is unusable: the sampler then
    never starts), :meth:`sample` (rows for one instant) and :meth:`close`.
    ``ts`` is ``time.time_ns()``: the epoch clock Kineto traces are written on
    (trace ``ts`` in µs + ``baseTimeNanoseconds``).
    """

    source = "unknown"

    def __init__(self, sink: CounterSink, faults: FaultLog, interval_s: float) -> None:
        self.sink = sink
        self.faults = faults
        self.interval_s = max(0.001, float(interval_s))
        self.samples = 0
        self.notes: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        raise NotImplementedError

    def sample(self, ts: int) -> list[CounterRow]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def start(self) -> None:
        """Open the source (its exception propagates: the caller decides if that is a fault or a note),
        then start the thread."""
        self.open()
        self._thread = threading.Thread(target=self._loop, name=f"mlprof-{self.source}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.sink.flush()

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                rows = self.sample(time.time_ns())
            except Exception as exc:
                self.faults.record(f"{self.source} sampler", exc)
                break
            self.samples += 1
            self.sink.add(rows)
            next_tick += self.interval_s
            delay = next_tick - time.monotonic()
            if delay < 0:  # fell behind (slow driver calls): skip ticks rather than burst
                next_tick = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)
        try:
            self.close()
        except Exception as exc:
            self.faults.record(f"{self.source} shutdown", exc)
