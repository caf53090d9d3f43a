"""The fixes' interval helpers against plain loops: merge_intervals (remove_host_time's union of the stretches
to shorten) and FixContext.window_of / in_windows (which analysed step a time falls in)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mlprof.rules.spec import NoOptions
from mlprof.whatif.fixes import FixContext
from mlprof.whatif.graph import ReplayGraph
from mlprof.whatif.transforms import merge_intervals

triples = st.lists(st.tuples(st.integers(-50, 200), st.integers(-10, 60), st.integers(-20, 80)), max_size=30)


def _merged_by_loop(items: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Intervals in start order (ties as given); one starting at or after every earlier end opens a new group;
    a group ends at its largest end and keeps its largest keep, neither below 0."""
    out: list[list[int]] = []
    reach = None
    for s, d, k in sorted(items, key=lambda item: item[0]):
        e = s + d
        if reach is None or s >= reach:
            out.append([s, max(e, 0), max(k, 0)])
        else:
            out[-1][1] = max(out[-1][1], e)
            out[-1][2] = max(out[-1][2], k)
        reach = e if reach is None else max(reach, e)
    return [(s, e, k) for s, e, k in out]


@given(triples, st.booleans())
def test_merge_intervals_equals_the_loop(items: list[tuple[int, int, int]], in_order: bool) -> None:
    if in_order:  # the common case (LAUNCH001's stretches): no sort
        items = sorted(items, key=lambda item: item[0])
    s = np.array([i[0] for i in items], dtype=np.int64)
    e = np.array([i[0] + i[1] for i in items], dtype=np.int64)
    k = np.array([i[2] for i in items], dtype=np.int64)
    got = merge_intervals(s, e, k)
    assert all(a.dtype == np.int64 for a in got)
    assert list(zip(*(a.tolist() for a in got), strict=True)) == _merged_by_loop(items)


def _context(win_starts: np.ndarray, win_ends: np.ndarray) -> FixContext:
    graph = ReplayGraph.__new__(ReplayGraph)  # the window helpers read no graph array
    return FixContext(graph=graph, win_starts=win_starts, win_ends=win_ends, opts=NoOptions())


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 30)), max_size=6), st.lists(st.integers(-10, 300)))
def test_window_of_and_in_windows_equal_a_loop_over_the_steps(steps: list[tuple[int, int]], times: list[int]) -> None:
    # disjoint steps in order: each starts a gap after the previous one's end
    starts, ends, at = [], [], 0
    for gap, length in steps:
        starts.append(at + gap)
        ends.append(at + gap + length)
        at = ends[-1]
    ctx = _context(np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64))
    t = np.array(times, dtype=np.int64)
    truth = [next((i for i, (a, b) in enumerate(zip(starts, ends, strict=True)) if a <= x < b), -1) for x in times]
    assert ctx.window_of(t).tolist() == truth
    assert ctx.in_windows(t).tolist() == [w >= 0 for w in truth]
