"""Give memory that Python and numpy have freed back to the operating system between phases.

glibc's ``malloc`` keeps freed blocks for reuse: after the reader (millions of short-lived
decoded events, partly in the reader thread's own arena) and after each analysis phase's
temporary arrays, the process kept 60-120 MB of free heap on a 217 MB trace, which the
next phase did not always reuse, so the peak RSS of ``mlprof analyze`` grew phase by
phase with little of it live. ``malloc_trim(0)`` hands the free pages back (about 5 ms
on that trace). Elsewhere than glibc (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import cache


@cache
def _trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_freed_memory() -> None:
    """Return the heap's free pages to the operating system (glibc only; a no-op elsewhere)."""
    trim = _trim()
    if trim is not None:
        trim(0)
