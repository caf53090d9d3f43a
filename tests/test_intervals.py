"""Interval algebra against a brute-force per-nanosecond reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mlprof.analyzers.intervals import covered, first_covering, intersect_total, merge, total

interval_lists = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=25)


def _arrays(items: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.array([s for s, _ in items], dtype=np.int64)
    ends = np.array([s + d for s, d in items], dtype=np.int64)
    return starts, ends


def _mask(items: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros(300, dtype=bool)
    for s, d in items:
        m[s : s + d] = True
    return m


@given(interval_lists)
def test_total_is_length_of_union(items: list[tuple[int, int]]) -> None:
    assert total(*_arrays(items)) == int(_mask(items).sum())


@given(interval_lists, interval_lists)
def test_intersection(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    assert intersect_total(_arrays(a), _arrays(b)) == int((_mask(a) & _mask(b)).sum())


@given(interval_lists)
def test_merge_is_disjoint_sorted_and_same_cover(items: list[tuple[int, int]]) -> None:
    s, e = merge(*_arrays(items))
    assert (e > s).all()
    assert (s[1:] > e[:-1]).all()
    points = np.arange(300)
    assert (covered(s, e, points) == _mask(items)).all()


@given(interval_lists, st.lists(st.integers(-5, 304), max_size=40))
def test_covered_on_overlapping_intervals_ascending_or_not(items: list[tuple[int, int]], picks: list[int]) -> None:
    # Both ways of counting: points that ascend (placed by the intervals' starts and ends)
    # and points in any order (each searched among the intervals).
    s, e = _arrays(items)
    truth = np.concatenate([np.zeros(5, bool), _mask(items), np.zeros(5, bool)])
    for points in (np.arange(-5, 305), np.sort(np.array(picks, dtype=np.int64)), np.array(picks, dtype=np.int64)):
        assert (covered(s, e, points) == truth[points + 5]).all()


@given(st.lists(interval_lists, max_size=5), st.lists(st.integers(-5, 304), max_size=40), st.integers(-1, 9))
def test_first_covering_is_the_first_set_holding_each_point(
    sets: list[list[tuple[int, int]]], picks: list[int], default: int
) -> None:
    # The truth: each point looked up in each set's per-nanosecond mask, first set first.
    masks = [np.concatenate([np.zeros(5, bool), _mask(items), np.zeros(5, bool)]) for items in sets]
    for points in (np.arange(-5, 305), np.sort(np.array(picks, dtype=np.int64)), np.array(picks, dtype=np.int64)):
        truth = [next((i for i, m in enumerate(masks) if m[p + 5]), default) for p in points.tolist()]
        got = first_covering([_arrays(items) for items in sets], points, default)
        assert got.dtype == np.int64 and got.tolist() == truth
