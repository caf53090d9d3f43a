"""Give memory that Python and numpy have freed back to the operating system between phases.

glibc's ``malloc`` keeps freed blocks for reuse: after the reader (millions of short-lived
decoded events, partly in the reader thread's own arena) and after each analysis phase's
temporary arrays, the process kept 60-120 MB of free heap on a 217 MB trace, which the
next phase did not always reuse, so the peak RSS of ``mlprof analyze`` grew phase by
phase with little of it live. ``malloc_trim(0)`` hands the free pages back (about 5 ms
on that trace). Elsewhere than glibc (macOS, Windows, musl) this does nothing.

Only a heap holding at least :data:`TRIM_MIN_FREE_BYTES` of free memory is trimmed. On a
35 MB trace the heap holds 6-10 MB free at each of the analysis's ~17 trims (48-89 MB on
the 217 MB trace): handing those few MB back only had the next phase fault them in again,
~30 ms of CPU of a 0.3 s read and analysis, for 2-4 MB less peak RSS.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import cache

TRIM_MIN_FREE_BYTES = 32 << 20
"""Free heap below which a trim is not worth its cost (glibc's ``mallinfo2`` counts it; without it every call trims)."""


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


@cache
def _free_heap() -> Callable[[], _Mallinfo2] | None:
    """glibc's ``mallinfo2`` (2.33 and later), or None."""
    if _trim() is None:
        return None
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.argtypes = []
    fn.restype = _Mallinfo2
    return fn


def free_heap_bytes() -> int | None:
    """Bytes of free memory in the main heap and the other arenas (``mallinfo2().fordblks``), None where unknown."""
    info = _free_heap()
    return None if info is None else int(info().fordblks)


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
    """Return the heap's free pages to the operating system when it holds at least :data:`TRIM_MIN_FREE_BYTES`
    free (glibc only; a no-op elsewhere)."""
    trim = _trim()
    if trim is None:
        return
    free = free_heap_bytes()
    if free is None or free >= TRIM_MIN_FREE_BYTES:
        trim(0)
