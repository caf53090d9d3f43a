"""``mlprof.range("forward")``: one named range in Nsight Systems and in the Kineto trace.

Inside the range we open an NVTX range (``nvtx`` package; shown by Nsight Systems) and
a ``torch.profiler.record_function`` (shown in the Kineto trace as a
``user_annotation``). Both cost microseconds even when nothing is recording
(``record_function`` ~5-7 µs, an NVTX push/pop ~0.3 µs on the project's 2-core VM), so
each is skipped unless something can see it:

* ``record_function`` only while a torch profiler is collecting
  (``torch.autograd._profiler_enabled()``, ~50 ns to ask);
* NVTX only when an NVTX tool is injected (Nsight sets ``NVTX_INJECTION64_PATH``),
  or when ``MLPROF_NVTX=1``; ``MLPROF_NVTX=0`` turns it off.

What remains when nothing records is one Python call and a flag test; see
``benchmarks/bench_overhead.py`` for the measured cost.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])


def _nvtx_wanted() -> bool:
    forced = os.environ.get("MLPROF_NVTX", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool(os.environ.get("NVTX_INJECTION64_PATH") or os.environ.get("NVTX_INJECTION32_PATH"))


def _load_nvtx() -> Any | None:
    if not _nvtx_wanted():
        return None
    try:
        import nvtx

        return nvtx
    except Exception:
        return None


def _load_torch() -> tuple[Callable[[], bool], Any] | None:
    try:
        import torch
        from torch.autograd.profiler import record_function
    except Exception:
        return None
    return torch.autograd._profiler_enabled, record_function


_NVTX = _load_nvtx()
_TORCH = _load_torch()


class Range:
    """A named range; a context manager, and a decorator (``@mlprof.range("loss")``).

    Re-entrant: the open ``record_function`` objects are a stack, so one ``Range`` may
    be nested in itself. The decorator makes a fresh ``Range`` per call, so decorated
    functions are safe to call from several threads.
    """

    __slots__ = ("_open", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._open: list[Any] = []

    def __enter__(self) -> Range:
        rf = None
        if _TORCH is not None and _TORCH[0]():
            try:
                rf = _TORCH[1](self.name)
                rf.__enter__()
            except Exception:
                rf = None
        self._open.append(rf)
        if _NVTX is not None:
            try:
                _NVTX.push_range(self.name)
            except Exception:
                pass
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if _NVTX is not None:
            try:
                _NVTX.pop_range()
            except Exception:
                pass
        rf = self._open.pop() if self._open else None
        if rf is not None:
            try:
                rf.__exit__(None, None, None)
            except Exception:
                pass

    def __call__(self, fn: F) -> F:
        name = self.name

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Range(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


@overload
def range(name: str, /) -> Range: ...
@overload
def range(name: F, /) -> F: ...
def range(name: str | F, /) -> Range | F:
    """A named range for Nsight Systems (NVTX) and the Kineto trace (``record_function``).

    Use as ``with mlprof.range("forward"):``, as ``@mlprof.range("forward")`` or as a bare
    ``@mlprof.range`` (the function's qualified name is the range name).
    """
    if callable(name):
        return Range(getattr(name, "__qualname__", repr(name)))(name)
    return Range(str(name))
