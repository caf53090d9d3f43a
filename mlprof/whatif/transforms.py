"""Graph edits a fix is made of. Each returns a new graph; the one given is not changed.

=========================  ==============================================================
:func:`remove_host_time`   host time inside intervals removed (keeping some ns of each)
:func:`set_op_durations`   device ops take new durations (faster kernels, faster copies)
:func:`drop_waits`         host calls no longer wait for the device; their own time set
:func:`detach_ops`         ops leave their stream: nothing queued behind them, and no op
                           of another stream waits for them (overlap with other work)
:func:`merge_ops`          groups of ops on one stream become one op (fusion): the first
                           takes the group's new duration, the others and their launch
                           calls cost nothing
:func:`set_latency`        launch-to-start latency of ops capped and a fixed per-op
                           cost set (CUDA graph replay)
=========================  ==============================================================

Intervals are relative to ``graph.origin`` (use ``graph.rel`` on trace times).
"""

from __future__ import annotations

import numpy as np

from mlprof.trace.numbers import sorted_inverse
from mlprof.whatif.graph import ReplayGraph


def merge_intervals(
    starts: np.ndarray, ends: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of overlapping intervals; a merged interval keeps the largest ``keep`` of its parts (nested
    DataLoader ranges are one wait). Intervals that only touch are not merged."""
    if len(starts) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    if not bool((starts[1:] >= starts[:-1]).all()):  # most come in start order (LAUNCH001's 100 k): no sort
        order = np.argsort(starts, kind="stable")
        starts, ends, keep = starts[order], ends[order], keep[order]
    s, e, k = starts.astype(np.int64), ends.astype(np.int64), keep.astype(np.int64)
    run_end = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] >= run_end[:-1]  # touching intervals stay apart: each keeps its own share
    firsts = np.flatnonzero(new)
    # Each merged interval's largest end and keep (not below 0, as maxima taken into zeros were): one pass each.
    out_e = np.maximum(np.maximum.reduceat(e, firsts), 0)
    out_k = np.maximum(np.maximum.reduceat(k, firsts), 0)
    return s[firsts], out_e, out_k


def remove_host_time(
    graph: ReplayGraph, starts: np.ndarray, ends: np.ndarray, keep_ns: np.ndarray | int = 0
) -> ReplayGraph:
    """Remove the host time inside ``[starts, ends)`` (relative ns), leaving ``keep_ns`` of each interval.

    Host time is the gaps between calls and the own time of calls that do not wait; a
    call that waits for the device keeps its wait (that is the device's time, not the host's).
    """
    g = graph.copy()
    keep = np.broadcast_to(np.asarray(keep_ns, dtype=np.int64), np.shape(starts))
    s, e, k = merge_intervals(np.asarray(starts), np.asarray(ends), keep)
    length = e - s
    ok = length > 0
    s, e, k, length = s[ok], e[ok], np.minimum(k[ok], length[ok]), length[ok]
    if len(s) == 0:
        return g
    removed_each = (length - k).astype(np.float64)
    xs = np.empty(2 * len(s), dtype=np.float64)
    xs[0::2], xs[1::2] = s, e
    rs = np.zeros(2 * len(s), dtype=np.float64)
    rs[1::2] = np.cumsum(removed_each)
    rs[2::2] = rs[1:-1:2]
    curve = (xs, rs)

    def removed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ra = np.interp(a.astype(np.float64), xs, rs, left=0.0, right=float(rs[-1]))
        rb = np.interp(b.astype(np.float64), xs, rs, left=0.0, right=float(rs[-1]))
        return np.rint(rb - ra).astype(np.int64)

    if g.n_host:
        front = np.maximum.accumulate(g.h_end)
        prev = np.concatenate([[0], front[:-1]])
        positive = g.h_gap > 0
        cut = removed(prev, g.h_ts)
        g.h_gap = np.where(positive, np.maximum(g.h_gap - cut, 0), g.h_gap)
        own = g.h_wait < 0
        cut_own = removed(g.h_ts, g.h_end)
        g.h_base = np.where(own, np.maximum(g.h_base - cut_own, 0), g.h_base)
    g.removals.append(curve)
    return g


def set_op_durations(graph: ReplayGraph, ops: np.ndarray, durations: np.ndarray) -> ReplayGraph:
    """Ops (indices into the graph's device arrays) take new durations (ns)."""
    g = graph.copy("g_dur")
    g.g_dur[ops] = np.maximum(np.rint(durations).astype(np.int64), 0)
    return g


def drop_waits(graph: ReplayGraph, items: np.ndarray, own_ns: np.ndarray | int) -> ReplayGraph:
    """Host calls ``items`` no longer wait for the device; each takes ``own_ns`` of host time."""
    g = graph.copy("h_wait", "h_tail", "h_base")
    g.h_wait[items] = -1
    g.h_tail[items] = 0
    g.h_base[items] = np.broadcast_to(np.asarray(own_ns, dtype=np.int64), np.shape(items))
    return g


def detach_ops(graph: ReplayGraph, ops: np.ndarray) -> ReplayGraph:
    """Ops move to a stream of their own (one per old stream, in their old order): ops behind them on
    their old stream and ops of other streams that waited for them no longer do (host calls that
    waited for them still do)."""
    g = graph.copy()
    if len(ops) == 0:
        return g
    mask = np.zeros(g.n_gpu, dtype=bool)
    mask[ops] = True
    # Stream-order edges into the op after a detached op become the op before it (or none).
    # One new stream per old stream: detached ops keep their order among themselves (a NCCL stream is FIFO).
    stream = g.g_stream.copy()
    stream[mask] = stream.max() + 1 + stream[mask]
    g.g_dep = np.where((g.g_dep >= 0) & mask[np.clip(g.g_dep, 0, None)], -1, g.g_dep)
    # A detached op's own stream predecessor is gone: it starts when launched (or when recorded, if not).
    unlaunched = mask & (g.g_launch < 0)
    g.g_anchor = np.where(unlaunched, g.g_ts, g.g_anchor)
    return _reorder(g, stream)


def merge_ops(graph: ReplayGraph, groups: list[np.ndarray], durations: np.ndarray) -> ReplayGraph:
    """Each group (ops on one stream, in order) becomes one op of the given duration, launched once:
    the other ops take no time and their launch calls cost the host nothing."""
    g = graph.copy("g_dur", "g_gap", "h_base")
    sizes = np.array([len(m) for m in groups], dtype=np.int64)
    members = np.concatenate(groups).astype(np.int64) if groups else np.zeros(0, dtype=np.int64)
    if len(groups) == len(durations) and (sizes > 0).all() and _disjoint(members, graph.n_gpu):
        # Disjoint groups (fusion's runs, a graph's chains): every group at once, as the loop below would.
        starts = np.cumsum(sizes) - sizes
        is_rest = np.ones(len(members), dtype=bool)
        is_rest[starts] = False
        rest = members[is_rest]
        g.g_dur[members[starts]] = np.maximum(np.rint(np.asarray(durations, dtype=np.float64)), 0)
        g.g_dur[rest] = 0
        g.g_gap[rest] = 0
        launches = g.g_launch[rest]
        launches = launches[(launches >= 0)]
        g.h_base[launches[g.h_wait[launches] < 0]] = 0
        return g
    for members, dur in zip(groups, durations, strict=True):
        first, rest = int(members[0]), members[1:]
        g.g_dur[first] = max(round(float(dur)), 0)
        g.g_dur[rest] = 0
        g.g_gap[rest] = 0
        launches = g.g_launch[rest]
        launches = launches[(launches >= 0)]
        launches = launches[g.h_wait[launches] < 0]
        g.h_base[launches] = 0
    return g


def _disjoint(members: np.ndarray, n: int) -> bool:
    """Whether no op index (of ``n`` ops) appears twice in ``members``."""
    if len(members) == 0:
        return True
    return bool(members.min() >= 0 and members.max() < n and np.bincount(members, minlength=n).max() <= 1)


def set_latency(graph: ReplayGraph, ops: np.ndarray, latency_ns: int, gap_ns: int) -> ReplayGraph:
    """Launch-to-start latency of ``ops`` capped at ``latency_ns``; each op then costs ``gap_ns`` on its
    stream before it starts (the per-node cost of a CUDA graph), instead of its recorded residual."""
    g = graph.copy("g_lat", "g_gap")
    g.g_lat[ops] = np.minimum(g.g_lat[ops], latency_ns)
    g.g_gap[ops] = gap_ns
    return g


def _reorder(g: ReplayGraph, stream: np.ndarray) -> ReplayGraph:
    """Re-sort the device arrays by (stream, recorded start) after streams changed; indices follow."""
    order = np.lexsort((g.g_ts, stream))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    for name in (
        "g_ts",
        "g_dur",
        "g_launch",
        "g_lat",
        "g_gap",
        "g_dep",
        "g_dep_delay",
        "g_anchor",
        "g_row",
        "g_klass",
        "g_name",
        "g_flags",
    ):
        setattr(g, name, getattr(g, name)[order])
    _, g.g_stream = sorted_inverse(stream[order])
    g.g_dep = np.where(g.g_dep >= 0, inverse[np.clip(g.g_dep, 0, None)], -1)
    g.h_wait = np.where(g.h_wait >= 0, inverse[np.clip(g.h_wait, 0, None)], -1)
    # Each op's stream predecessor may have changed: recompute anchors of new stream heads.
    first = np.ones(g.n_gpu, dtype=bool)
    first[1:] = g.g_stream[1:] != g.g_stream[:-1]
    from mlprof.whatif.graph import NONE

    g.g_anchor = np.where(first & (g.g_launch < 0), g.g_ts, np.where(g.g_launch < 0, NONE, g.g_anchor))
    return g
