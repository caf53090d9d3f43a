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

A large trace's process keeps more of its freed memory (:func:`keep_freed_memory`, called by the
loader before it reads one): every page handed back and taken again is a page fault that zeroes
4 KB in the kernel. On the 217 MB tiled trace the analysis alone faulted ~85k pages (340 MB, about
0.15 s of system time) after the read, mostly arrays of 1-32 MB that glibc had put in their own
``mmap`` and unmapped when freed, and the heap's 50-90 MB of free memory trimmed between phases.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from collections.abc import Callable
from functools import cache
from typing import Any

TRIM_MIN_FREE_BYTES = 32 << 20
"""Free heap below which a trim is not worth its cost (glibc's ``mallinfo2`` counts it; without it every call trims)."""

KEPT_FREE_BYTES = 128 << 20
"""After :func:`keep_freed_memory`, the free heap below which :func:`release_freed_memory` keeps it for reuse.

Measured on the 217 MB tiled trace (free heap 50-91 MB at the analysis's trims): trimming above 64 MB
kept peak RSS at 280 MB and 58k page faults after the read; above 80 MB 285 MB and 39k; above 96 MB
(no trim) 322 MB; before 270-278 MB and 82-85k (in-process, with pyarrow in the process). The whole
process tree with the what-if helper forked (``bench_vs_hta``'s peak) was 318-336 MB above 80 MB, over
1.5x the JSON (325 MB), and 299-316 MB above 32 MB (lead, 2026-12-04 05:05, load ~1). Without pyarrow
in the process (``mlprof.__main__.needs_arrow``: 45-60 MB less) 128 MB (no trim on that trace) was
taken (24a, alternating with 32 MB, load 2.2-2.8): whole process 109-112k -> 65-72k page faults and
1.85-1.97 -> 1.75-1.89 s CPU where no helper is forked (read-ahead on or off), peak 201-204 -> 202-240
MB; with the helpers forked the same faults (copy-on-write ones then) and CPU, peak 232-239 -> 237-253
MB; the 1 GB trace (free heap above 128 MB there) 648-651 vs 654-657 MB."""

MMAP_THRESHOLD_BYTES = 32 << 20
"""glibc's largest mmap threshold (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit): smaller blocks come from the heap."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_min_free = TRIM_MIN_FREE_BYTES


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _glibc(name: str, argtypes: list[Any], restype: Any) -> Any:
    """glibc's function ``name`` with its C signature, or None (not Linux, not glibc, or too old a glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


@cache
def _free_heap() -> Callable[[], _Mallinfo2] | None:
    """glibc's ``mallinfo2`` (2.33 and later), or None."""
    fn: Callable[[], _Mallinfo2] | None = _glibc("mallinfo2", [], _Mallinfo2)
    return fn


def free_heap_bytes() -> int | None:
    """Bytes of free memory in the main heap and the other arenas (``mallinfo2().fordblks``), None where unknown."""
    info = _free_heap()
    return None if info is None else int(info().fordblks)


@cache
def _trim() -> Callable[[int], int] | None:
    fn: Callable[[int], int] | None = _glibc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
    return fn


def release_freed_memory(*, however_little: bool = False) -> None:
    """Return the free pages of every malloc arena to the operating system when the heap holds at least
    :data:`TRIM_MIN_FREE_BYTES` free, or whatever it holds with ``however_little`` (glibc only; a no-op elsewhere).

    ``however_little``: after a thread has ended (:mod:`mlprof.trace.lanes`): what it freed stays in its own
    arena, where this thread's allocations do not reuse it, however little the main heap has free."""
    trim = _trim()
    if trim is None:
        return
    if not however_little:
        free = free_heap_bytes()
        if free is not None and free < _min_free:
            return
    trim(0)


@cache
def _mallopt() -> Callable[[int, int], int] | None:
    fn: Callable[[int, int], int] | None = _glibc("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    return fn


def keep_freed_memory() -> bool:
    """Keep freed memory in this process for reuse instead of handing it back (glibc only; False elsewhere).

    Blocks up to :data:`MMAP_THRESHOLD_BYTES` come from the heap (glibc otherwise maps each block
    above its threshold, which starts at 128 KB and grows only as such blocks are freed, and unmaps it
    when freed), the heap's top is not trimmed when freed (only by :func:`release_freed_memory`), and
    :func:`release_freed_memory` trims only from :data:`KEPT_FREE_BYTES` of free heap. For a process
    that reads a large trace: its phases allocate and free arrays of the same sizes over and over.
    Forked processes inherit it. A trace's time and peak RSS: ``benchmarks/RESULTS.md`` (15w).
    """
    global _min_free
    mallopt = _mallopt()
    if mallopt is None or _free_heap() is None:
        return False
    # The trim threshold first: setting either fixes both (glibc's dynamic thresholds stop), and a fixed
    # 128 KB mmap threshold with the default trim threshold would map every array (3x the faults).
    if not mallopt(_M_TRIM_THRESHOLD, 1 << 30) or not mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        return False
    _min_free = max(_min_free, KEPT_FREE_BYTES)
    return True


TIDY_EVERY = 64
"""Items of a job client's per-rank loop from one tidy to the next (:func:`tidy_rank_loop`)."""

TIDY_MAX_COLLECT_S = 0.005
"""A full collection slower than this (a process holding many objects: an API caller's) ends the collections of
:func:`tidy_rank_loop` in this process; its trims go on."""

_collections_cheap = True


def tidy_rank_loop(i: int) -> None:
    """At every :data:`TIDY_EVERY`-th item ``i`` of a loop over a job's ranks (0-based): a full garbage
    collection, then the free pages of every malloc arena handed back (:func:`release_freed_memory`).

    Why: a job's client keeps a little of each rank as the loop goes (its rows, codes, a finding's numbers) among
    each rank's short-lived objects. Between two collections the interpreter parks the freed tuples, lists and
    dicts of every rank on its free lists and keeps young cyclic garbage (pandas frames hold cycles), and the
    arrays that grow a rank at a time leave their old blocks as holes in the heap: the loop's high-water mark
    grew with the number of ranks (the 1,024-rank generated job's client ~0.3 MB above the 256-rank one's, on
    top of what each held; ``benchmarks/RESULTS.md``, stop 32). A collection empties the free lists and the
    garbage, a trim hands the holes back, so the next ranks reuse that memory. From the CLI (its start-up objects
    frozen, :func:`gc.freeze`) a collection takes ~1-3 ms, one per 64 ranks of loops of ~0.5-30 ms a rank.
    Where one takes longer than :data:`TIDY_MAX_COLLECT_S` (an API caller's process with many objects: ~70 ms),
    later calls only trim."""
    global _collections_cheap
    if i % TIDY_EVERY != TIDY_EVERY - 1:
        return
    if _collections_cheap:
        start = time.perf_counter()
        gc.collect()
        _collections_cheap = time.perf_counter() - start <= TIDY_MAX_COLLECT_S
    release_freed_memory(however_little=True)
