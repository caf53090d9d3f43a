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


def _case(mb: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CASE, str(mb)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    ).stdout
    result: dict[str, int] = json.loads(out)
    return result


@pytest.mark.skipif(memory.free_heap_bytes() is None, reason="needs glibc's mallinfo2 (Linux, glibc 2.33+)")
def test_a_heap_with_much_free_memory_is_trimmed_and_one_with_little_is_not() -> None:
    large = _case(100)
    assert large["free"] >= memory.TRIM_MIN_FREE_BYTES
    assert large["dropped"] > 60 * MB, large  # the freed ~100 MB went back to the system
    small = _case(8)
    assert small["free"] < memory.TRIM_MIN_FREE_BYTES
    assert small["dropped"] < 2 * MB, small  # left as it was
    assert small["trim_then"] > 4 * MB, small  # ... though a trim would have handed ~8 MB back
