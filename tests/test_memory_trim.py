"""release_freed_memory trims glibc's heap only when it holds enough free memory to be worth it.

Each case runs in a fresh interpreter (its heap state known) and measures the process's
resident memory from ``/proc/self/statm`` around the call: a heap with ~100 MB freed is
handed back; one with ~8 MB freed is left as it is, although a trim would have handed it
back (checked right after with glibc's own ``malloc_trim``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlprof.trace import memory

REPO = Path(__file__).resolve().parents[1]

CASE = r"""
import ctypes, json, os, sys
from mlprof.trace import memory
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
blocks = [bytearray(2000) for _ in range(int(sys.argv[1]) * 512)]  # 2 KB each: glibc's heap, not pymalloc or mmap
pin = bytearray(2000)  # after them: the heap's top cannot shrink, only a trim hands the pages back
del blocks
free = memory.free_heap_bytes()
before = rss()
memory.release_freed_memory()
after = rss()
ctypes.CDLL(None).malloc_trim(0)
print(json.dumps({"free": free, "dropped": before - after, "trim_then": after - rss()}))
"""

MB = 1 << 20


def _run(script: str, arg: str) -> dict[str, Any]:
    """``script`` in a fresh Python (its own heap and fault count) with ``arg``; what it prints, as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", script, arg],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _case(mb: int) -> dict[str, Any]:
    return _run(CASE, str(mb))


@pytest.mark.skipif(memory.free_heap_bytes() is None, reason="needs glibc's mallinfo2 (Linux, glibc 2.33+)")
def test_a_heap_with_much_free_memory_is_trimmed_and_one_with_little_is_not() -> None:
    large = _case(100)
    assert large["free"] >= memory.TRIM_MIN_FREE_BYTES
    assert large["dropped"] > 60 * MB, large  # the freed ~100 MB went back to the system
    small = _case(8)
    assert small["free"] < memory.TRIM_MIN_FREE_BYTES
    assert small["dropped"] < 2 * MB, small  # left as it was
    assert small["trim_then"] > 4 * MB, small  # ... though a trim would have handed ~8 MB back


REUSE = r"""
import json, resource, sys
import numpy as np
from mlprof.trace import memory
kept = memory.keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def phase():  # an analysis phase: three 8 MB temporaries written and freed, then the phase's trim
    arrays = [np.ones(1 << 20) for _ in range(3)]
    del arrays
    memory.release_freed_memory()
phase()
before = faults()
for _ in range(5):
    phase()
print(json.dumps({"kept": kept, "faults": faults() - before, "free": memory.free_heap_bytes()}))
"""


def _reuse(mode: str) -> dict[str, Any]:
    return _run(REUSE, mode)


@pytest.mark.skipif(memory.free_heap_bytes() is None, reason="needs glibc's mallinfo2 (Linux, glibc 2.33+)")
def test_kept_freed_memory_is_reused_without_page_faults() -> None:
    """Five phases of 24 MB of temporaries. Plain glibc maps some of them on their own (its mmap threshold
    grows only as they are freed), unmaps them when freed and trims the heap's top: ~3k page faults a phase
    (counted by the kernel). Kept (24 MB < KEPT_FREE_BYTES): none."""
    plain = _reuse("plain")
    kept = _reuse("keep")
    assert kept["kept"] is True
    pages = 5 * 24 * MB // os.sysconf("SC_PAGE_SIZE")
    assert plain["faults"] > pages // 8, plain  # handed back and faulted in again
    assert kept["faults"] < pages // 50, kept  # reused
    assert kept["free"] >= 20 * MB, kept  # the freed temporaries stay in the heap


THREAD_CASE = r"""
import json, os, threading
from mlprof.trace import memory
memory.keep_freed_memory()  # as a large trace's process: nothing trimmed by free() itself
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
def work():
    blocks = [bytearray(2000) for _ in range(40 * 512)]  # 40 MB in the thread's own arena
    pin = bytearray(2000)
    del blocks
    kept.append(pin)
kept = []
thread = threading.Thread(target=work)
thread.start()
thread.join()
before = rss()
memory.release_freed_memory()  # below the kept threshold: nothing
middle = rss()
memory.release_freed_memory(however_little=True)
print(json.dumps({"kept": before - middle, "dropped": middle - rss()}))
"""


@pytest.mark.skipif(memory.free_heap_bytes() is None, reason="glibc's mallinfo2 only")
def test_memory_a_thread_freed_is_handed_back_by_the_full_release() -> None:
    result = _run(THREAD_CASE, "")
    assert result["kept"] < 4 * MB
    assert result["dropped"] > 30 * MB


TIDY_CASE = r"""
import gc, json, os, re, sys, weakref
from mlprof.trace import memory
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
def parked():  # one-tuples on CPython's free list, CPython's own count
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(w)
    text = b""
    while chunk := os.read(r, 1 << 16):
        text += chunk
    return int(re.search(rb"([\d,]+) free 1-sized PyTupleObjects", text).group(1).replace(b",", b""))
class Node:
    pass
def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)
gc.disable()  # no automatic collection: only tidy_rank_loop's
many, _, slowest = sys.argv[1].partition(":")
if slowest:
    memory.TIDY_MAX_COLLECT_S = float(slowest)
held = [[k] for k in range(int(many))]  # a process holding many objects: its collections are slow
out = {"tidied": [], "parked_before": 0, "parked_after": 0}
for i in range(130):
    garbage = cycle()
    ones = [(k,) for k in range(1500)]
    del ones
    parked_before = parked()
    memory.tidy_rank_loop(i)
    if i in (62, 63, 127):
        out["tidied"].append([i, garbage() is None, parked_before, parked()])
blocks = [bytearray(2000) for _ in range(50 * 512)]  # 50 MB of glibc heap, freed below the pin
pin = bytearray(2000)
del blocks
before = rss()
memory.tidy_rank_loop(191)
out["trimmed"] = before - rss()
out["cheap"] = memory._collections_cheap
print(json.dumps(out))
"""


@pytest.mark.skipif(memory.free_heap_bytes() is None, reason="glibc's mallinfo2 only")
def test_rank_loop_is_tidied_every_64_ranks_by_a_collection_and_a_trim() -> None:
    """A job client's rank loop (:func:`mlprof.trace.memory.tidy_rank_loop`) in a fresh interpreter with automatic
    collection off: at item 63 and 127 (not 62) a full collection frees a rank's cyclic garbage and empties the
    free list of 1,500 parked one-tuples (CPython's own count), and the heap's free pages go back (50 MB freed
    under a pinned block: RSS drops by most of it). (A collection here takes ~1 ms; the limit is raised to 10 s so
    that a busy machine cannot make one count as slow.)"""
    result = _run(TIDY_CASE, "0:10")
    (i62, freed62, _, after62), (i63, freed63, before63, after63), (i127, freed127, _, after127) = result["tidied"]
    assert (i62, i63, i127) == (62, 63, 127)
    assert not freed62 and after62 >= 1500  # not a tidy item: nothing collected
    assert freed63 and before63 >= 1500 and after63 < 100
    assert freed127 and after127 < 100
    assert result["cheap"] is True
    assert result["trimmed"] > 40 * MB


@pytest.mark.skipif(memory.free_heap_bytes() is None, reason="glibc's mallinfo2 only")
def test_rank_loop_stops_collecting_where_a_collection_is_slow_and_still_trims() -> None:
    """In a process holding 3 million objects (a full collection takes well over 5 ms there, as in an API caller's
    process with a large heap), the first tidy collects and finds it slow; the later ones only trim: the rank's
    cyclic garbage and the parked tuples stay, the 50 MB of freed heap still goes back."""
    result = _run(TIDY_CASE, "3000000")
    (_, freed62, _, _), (_, freed63, _, after63), (_, freed127, _, after127) = result["tidied"]
    assert not freed62 and freed63 and after63 < 100  # the first tidy collects (and is slow)
    assert result["cheap"] is False
    assert not freed127 and after127 >= 1500  # the next one does not
    assert result["trimmed"] > 40 * MB
