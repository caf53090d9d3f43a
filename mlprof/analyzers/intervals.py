"""Interval algebra on int64 nanosecond arrays, vectorised.

Everything the attribution needs reduces to one question asked of many interval
sets at once: "at this instant, is at least one interval of set X open?". We cut
the timeline into elementary segments at every start and end of every set and
count open intervals per set at each segment start with two ``searchsorted`` calls.
No Python loop touches individual events.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlprof.trace.numbers import sorted_unique


def merge(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals as disjoint, sorted ``[start, end)`` intervals."""
    if len(starts) == 0:
        return starts.astype(np.int64), ends.astype(np.int64)
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    e = np.maximum.accumulate(ends[order])
    # A new merged interval begins where the start is past every earlier end.
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > e[:-1]
    group = np.cumsum(new) - 1
    out_s = s[new]
    out_e = np.zeros(len(out_s), dtype=np.int64)
    np.maximum.at(out_e, group, e)
    keep = out_e > out_s
    return out_s[keep], out_e[keep]


def total(starts: np.ndarray, ends: np.ndarray) -> int:
    """Length of the union of the intervals."""
    s, e = merge(starts, ends)
    return int((e - s).sum())


def intersect_total(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> int:
    """Length of (union of a) ∩ (union of b)."""
    a_s, a_e = merge(*a)
    b_s, b_e = merge(*b)
    if len(a_s) == 0 or len(b_s) == 0:
        return 0
    points = sorted_unique(np.concatenate([a_s, a_e, b_s, b_e]))
    left, right = points[:-1], points[1:]
    in_a = covered(a_s, a_e, left)
    in_b = covered(b_s, b_e, left)
    return int(((right - left) * (in_a & in_b)).sum())


def covered(starts: np.ndarray, ends: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For each point, whether some interval ``[start, end)`` contains it.

    ``starts`` and ``ends`` need not be sorted or disjoint. The answer is (intervals started
    at or before the point) - (intervals ended at or before it) > 0. When the points ascend
    (the elementary segments of the attribution, ~0.8 M of them on a 217 MB trace), each
    interval's start and end are placed among the points instead (two searches of the few
    intervals, then a running count): the same counts, ~3x faster than searching every
    point among the intervals.
    """
    n = len(points)
    if len(starts) == 0:
        return np.zeros(n, dtype=bool)
    if n > 1 and bool((points[1:] >= points[:-1]).all()):
        # A start opens every point from the first one at or after it; an end closes likewise.
        count = np.bincount(np.searchsorted(points, starts, side="left"), minlength=n + 1)
        count -= np.bincount(np.searchsorted(points, ends, side="left"), minlength=n + 1)
        running = count[:n]
        np.cumsum(running, out=running)
        return running > 0
    opened = np.searchsorted(np.sort(starts), points, side="right")
    closed = np.searchsorted(np.sort(ends), points, side="right")
    return (opened - closed) > 0


def first_covering(sets: Sequence[tuple[np.ndarray, np.ndarray]], points: np.ndarray, default: int) -> np.ndarray:
    """For each point, the index of the first interval set in ``sets`` that covers it (:func:`covered`), else
    ``default`` (int64): the attribution's and the causes' priority order of layers.

    The sets are written last to first, each over the points it covers (one pass of the points per set); taking
    them first to last with a mask of the points already assigned took three more passes per set.
    """
    label = np.full(len(points), default, dtype=np.int64)
    for i in range(len(sets) - 1, -1, -1):
        starts, ends = sets[i]
        np.copyto(label, i, where=covered(starts, ends, points))
    return label


def clip(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Intervals cut to ``[lo, hi)``; empty ones dropped."""
    s = np.maximum(starts, lo)
    e = np.minimum(ends, hi)
    keep = e > s
    return s[keep], e[keep]
