"""Step times of a replay: where each step starts and when its work is done.

A step starts at its marker's start on the host (``ProfilerStep#N``, mapped onto the
simulated host timeline) and is *done* when the host has reached its end marker and
the device has finished every op launched before it. The steps of a window are
measured end to end (``done[last] - start[first]``), so device work that spills into
the next step is counted once. The recorded trace is measured the same way, from its
recorded times, so a replay error compares like with like.
"""

from __future__ import annotations

import numpy as np

from mlprof.whatif.graph import ReplayGraph
from mlprof.whatif.simulate import Timeline


def recorded_timeline(graph: ReplayGraph) -> Timeline:
    """The recording itself, as a :class:`Timeline` (no simulation)."""
    front = np.maximum.accumulate(graph.h_end) if graph.n_host else graph.h_end
    return Timeline(
        h_start=graph.h_ts,
        h_end=graph.h_end,
        h_front=front,
        g_start=graph.g_ts,
        g_end=graph.g_ts + graph.g_dur,
        rounds=0,
    )


def host_time(graph: ReplayGraph, tl: Timeline, t_rel: np.ndarray, recorded: bool = False) -> np.ndarray:
    """Simulated host time of recorded host instants ``t_rel`` (between calls, host time flows as recorded
    minus what transformations removed; inside a call, as the call moved)."""
    t = np.asarray(t_rel, dtype=np.int64)
    removed = np.zeros(len(t)) if recorded else graph.removed_before(t)
    if graph.n_host == 0:
        return np.rint(t - removed).astype(np.int64)
    rec_front = np.maximum.accumulate(graph.h_end)
    idx = np.searchsorted(graph.h_ts, t, side="right") - 1
    out = np.rint(t - removed).astype(np.int64)
    has = idx >= 0
    i = idx[has]
    tt = t[has]
    removed_at_front = np.zeros(len(i)) if recorded else graph.removed_before(rec_front[i])
    after = tt >= rec_front[i]
    between = tl.h_front[i] + (tt - rec_front[i]) - np.rint(removed[has] - removed_at_front).astype(np.int64)
    inside = np.minimum(tl.h_start[i] + (tt - graph.h_ts[i]), tl.h_front[i])
    out[has] = np.where(after, between, inside)
    return out


def done_times(graph: ReplayGraph, tl: Timeline, ends_rel: np.ndarray, recorded: bool = False) -> np.ndarray:
    """When the work up to each host instant is done: host there, and every op launched before it finished."""
    host = host_time(graph, tl, ends_rel, recorded)
    if graph.n_gpu == 0:
        return host
    key = graph.g_launch.copy()
    unlaunched = key < 0
    if graph.n_host:
        key[unlaunched] = np.searchsorted(graph.h_ts, graph.g_ts[unlaunched], side="right") - 1
    else:
        key[unlaunched] = -1
    order = np.argsort(key, kind="stable")
    keys = key[order]
    drained = np.maximum.accumulate(tl.g_end[order])
    limit = np.searchsorted(graph.h_ts, ends_rel, side="right") - 1 if graph.n_host else np.full(len(ends_rel), -1)
    pos = np.searchsorted(keys, limit, side="right") - 1
    gpu_done = np.where(pos >= 0, drained[np.clip(pos, 0, None)], np.iinfo(np.int64).min)
    if not graph.n_host:
        # No host calls: every op counts toward the step it was recorded in.
        pos = np.searchsorted(np.sort(graph.g_ts), ends_rel, side="right") - 1
        by_ts = np.maximum.accumulate(tl.g_end[np.argsort(graph.g_ts, kind="stable")])
        gpu_done = np.where(pos >= 0, by_ts[np.clip(pos, 0, None)], np.iinfo(np.int64).min)
    return np.maximum(host, gpu_done)


def step_durations(
    graph: ReplayGraph, tl: Timeline, starts_abs: np.ndarray, ends_abs: np.ndarray, recorded: bool = False
) -> np.ndarray:
    """Duration of each step (ns): done minus the later of its start and the previous step's done.

    Consecutive steps add up to the window's span; a step left out of the window is not counted."""
    if len(starts_abs) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = host_time(graph, tl, graph.rel(starts_abs), recorded)
    done = done_times(graph, tl, graph.rel(ends_abs), recorded)
    done = np.maximum(done, starts)
    prev = np.concatenate([[np.iinfo(np.int64).min], np.maximum.accumulate(done)[:-1]])
    return done - np.maximum(starts, prev)
