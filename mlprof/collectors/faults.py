"""One place that turns a collector failure into a note instead of a crash.

A profiler that raises would cost the user a training run, which is worth far more
than the profile. So every call into the profiler, NVML, DCGM or the file system goes
through a :class:`FaultLog`: the first failure of a run prints ONE warning, every
failure is kept (with where it happened) for ``meta.json``, and the caller carries on
with whatever still works.
"""

from __future__ import annotations

import threading
import warnings


class FaultLog:
    """Failures of one profiled run; warns once, remembers all (thread-safe)."""

    def __init__(self, label: str = "mlprof") -> None:
        self.label = label
        self.errors: list[str] = []
        self._warned = False
        self._lock = threading.Lock()

    @property
    def warned(self) -> bool:
        return self._warned

    def record(self, where: str, exc: BaseException) -> None:
        """Remember a failure; the first one of the run also prints a warning."""
        message = f"{where}: {type(exc).__name__}: {exc}".rstrip(": ")
        with self._lock:
            self.errors.append(message)
            first = not self._warned
            self._warned = True
        if first:
            warnings.warn(
                f"{self.label}: {message}. The job goes on; profiling continues where it can and keeps what "
                "it collected (further problems are listed under 'errors' in the run's meta.json).",
                RuntimeWarning,
                stacklevel=3,
            )
