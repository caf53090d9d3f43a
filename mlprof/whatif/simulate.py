"""Replay a :class:`~mlprof.whatif.graph.ReplayGraph`: when does every call and op start and end.

Two recurrences, each a max-plus scan that numpy evaluates in one pass:

* host: the frontier after item ``i`` is ``F[i] = max(F[i-1] + max(gap[i] + base[i], 0),
  end of the op it waits for + tail[i])``; the item starts at ``F[i-1] + gap[i]``;
* each stream: ``end[i] = max(ready[i], end[i-1]) + residual[i] + dur[i]`` with ``ready`` the
  launch time plus latency, or a cross-stream predecessor's end plus its delay.

With ``c = residual + dur`` and ``C`` its running sum per stream, ``end[i] = C[i] +
cummax(ready - C[i-1])``: a cumulative sum and a cumulative maximum. The host pass
needs the device ends and the device pass needs the host starts, so the two are
alternated until nothing moves (a fixed point: every edge points forward in time, so
each round settles at least one more wait; the unmodified graph settles in one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlprof.whatif.graph import NONE, ReplayGraph

MAX_ROUNDS = 100_000
SEGMENT = np.int64(1) << 50
"""Offset between streams in the segmented cumulative maximum (relative times stay far below it)."""


@dataclass
class Timeline:
    """Simulated times (relative ns) of every host item and device op."""

    h_start: np.ndarray
    h_end: np.ndarray
    h_front: np.ndarray
    """Host frontier after each item."""
    g_start: np.ndarray
    g_end: np.ndarray
    rounds: int


def simulate(graph: ReplayGraph, gpu_end: np.ndarray | None = None) -> Timeline:
    """Replay the graph. ``gpu_end`` is a first guess of device ends (default: the recorded ends)."""
    g = graph
    g_end = (g.g_ts + g.g_dur).astype(np.int64) if gpu_end is None else gpu_end.astype(np.int64)
    seg_first = np.ones(g.n_gpu, dtype=bool)
    seg_first[1:] = g.g_stream[1:] != g.g_stream[:-1]
    c = (g.g_gap + g.g_dur).astype(np.int64)
    csum = _segmented_cumsum(c, seg_first)
    offset = g.g_stream.astype(np.int64) * SEGMENT
    rounds = 0
    h_start = h_end = h_front = np.zeros(0, dtype=np.int64)
    g_start = g_end
    while rounds < MAX_ROUNDS:
        rounds += 1
        h_start, h_end, h_front = _host_pass(g, g_end)
        new_start, new_end = _device_pass(g, h_start, g_end, csum, c, offset)
        settled = np.array_equal(new_end, g_end)
        g_start, g_end = new_start, new_end
        if settled:
            break
    return Timeline(h_start=h_start, h_end=h_end, h_front=h_front, g_start=g_start, g_end=g_end, rounds=rounds)


def _segmented_cumsum(c: np.ndarray, seg_first: np.ndarray) -> np.ndarray:
    total = np.cumsum(c)
    if len(c) == 0:
        return total
    before = total - c
    base = np.maximum.accumulate(np.where(seg_first, before, 0))
    return total - base


def _host_pass(g: ReplayGraph, g_end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = g.n_host
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    waits = g.h_wait >= 0
    w = np.full(n, NONE, dtype=np.int64)
    w[waits] = g_end[g.h_wait[waits]] + g.h_tail[waits]
    step = np.maximum(g.h_gap + g.h_base, 0)
    csum = np.cumsum(step)
    # F[i] = C[i] + max(0, cummax(w - C)): the host starts at the origin (relative time 0).
    front = csum + np.maximum(np.maximum.accumulate(w - csum), 0)
    prev = np.concatenate([[0], front[:-1]])
    start = prev + g.h_gap
    end = np.maximum(start + g.h_base, w)
    return start, end, front


def _device_pass(
    g: ReplayGraph, h_start: np.ndarray, g_end_prev: np.ndarray, csum: np.ndarray, c: np.ndarray, offset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = g.n_gpu
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    ready = g.g_anchor.copy()
    launched = g.g_launch >= 0
    ready[launched] = h_start[g.g_launch[launched]] + g.g_lat[launched]
    dep = g.g_dep >= 0
    if dep.any():
        ready[dep] = np.maximum(ready[dep], g_end_prev[g.g_dep[dep]] + g.g_dep_delay[dep])
    before = csum - c
    key = ready - before + offset
    end = csum + (np.maximum.accumulate(key) - offset)
    return end - g.g_dur, end
