"""Which host range encloses a call: the op that issued a sync, the line of Python that ran it.

Evidence has to point at something a user can change: not "a cudaStreamSynchronize"
but "``aten::item`` called from ``train.py(57): train_step``". Host ranges on one
thread nest properly, so the innermost range containing a call is the latest-starting
one that still contains it; we find it by stepping back from the last range that
started before the call, all unresolved calls at once.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from mlprof.trace.numbers import sorted_unique

MAX_STEPS_BACK = 512
"""Siblings skipped while looking for the parent; deeper searches give up (-1)."""

_FRAME = re.compile(r"^(?P<file>[^<(][^(]*\.py)\((?P<line>\d+)\): (?P<func>.+)$")
_LIBRARY = re.compile(
    r"(^|/)(torch|torchvision|torchrec|fbgemm_gpu|numpy|site-packages|dist-packages|lib/python3[^/]*)/"
    r"|^(threading|multiprocessing|contextlib|selectors|queue|functools|runpy)\.py$"
)


def innermost_enclosing(
    query_ts: np.ndarray,
    query_end: np.ndarray,
    query_tid: np.ndarray,
    ranges: pd.DataFrame,
) -> np.ndarray:
    """Row position in ``ranges`` (columns ts, end, tid) of the innermost range containing each query, or -1.

    The innermost range is the latest-starting range on the query's thread that starts at or
    before the query and ends at or after it, looked for among the :data:`MAX_STEPS_BACK`
    ranges that start last before the query.
    """
    if len(ranges) == 0 or len(query_ts) == 0:
        return np.full(len(query_ts), -1, dtype=np.int64)
    index = RangeIndex(
        ranges["ts"].to_numpy(np.int64), ranges["end"].to_numpy(np.int64), ranges["tid"].to_numpy(np.int64)
    )
    return index.innermost(query_ts, query_end, query_tid)


TABLE_BLOCK = 1 << 18
"""Ranges per block of the table of running maxima (9 int64 copies of a block's ends and of the
:data:`MAX_STEPS_BACK` before it): the search's memory is bounded whatever the number of ranges. (Above
2**20 ranges the search used to step back one range at a time instead: 7.5 s of a 1 GB trace's analysis.)"""

_LEVELS = max(int(MAX_STEPS_BACK - 1).bit_length(), 1)


class RangeIndex:
    """Host ranges sorted by (thread, start), for :func:`innermost_enclosing` queries asked several times
    of the same ranges (the sort and the table of running maxima are made once, not per query set)."""

    def __init__(self, ts: np.ndarray, end: np.ndarray, tid: np.ndarray) -> None:
        self.order = np.lexsort((ts, tid))
        self.s_tid, self.s_ts, self.s_end = tid[self.order], ts[self.order], end[self.order]
        self._levels: list[np.ndarray] | None = None

    def innermost(self, query_ts: np.ndarray, query_end: np.ndarray, query_tid: np.ndarray) -> np.ndarray:
        """Row position (in the arrays given) of the innermost range containing each query, or -1."""
        out = np.full(len(query_ts), -1, dtype=np.int64)
        if len(self.order) == 0 or len(query_ts) == 0:
            return out
        q_tid = query_tid.astype(np.int64, copy=False)
        q_end = query_end.astype(np.int64, copy=False)
        # Position of the last range (same tid) starting at or before the query, and the first
        # position the search may go back to (its thread's first range, at most MAX_STEPS_BACK back).
        pos = _search_pairs(self.s_tid, self.s_ts, q_tid, query_ts.astype(np.int64, copy=False))
        floor = np.maximum(np.searchsorted(self.s_tid, q_tid, side="left"), pos - (MAX_STEPS_BACK - 1))
        n = len(self.s_end)
        if n <= TABLE_BLOCK:
            if self._levels is None:
                self._levels = _running_maxima(self.s_end)
            found = _nearest_back(pos, floor, q_end, self.s_end, self._levels)
        else:
            # Block by block of positions: a query at a position of block b looks back into
            # [b * TABLE_BLOCK - MAX_STEPS_BACK + 1, (b + 1) * TABLE_BLOCK) only.
            found = np.full(len(pos), -1, dtype=np.int64)
            block = np.where(pos >= 0, pos // TABLE_BLOCK, -1)
            by_block = np.argsort(block, kind="stable")
            bounds = np.searchsorted(block[by_block], np.arange(-1, (n - 1) // TABLE_BLOCK + 1), side="right")
            for b in range((n - 1) // TABLE_BLOCK + 1):
                rows = by_block[bounds[b] : bounds[b + 1]]
                if len(rows) == 0:
                    continue
                lo = max(b * TABLE_BLOCK - (MAX_STEPS_BACK - 1), 0)
                ends = self.s_end[lo : (b + 1) * TABLE_BLOCK]
                got = _nearest_back(pos[rows] - lo, floor[rows] - lo, q_end[rows], ends, _running_maxima(ends))
                found[rows] = np.where(got >= 0, got + lo, -1)
        hit = found >= 0
        out[hit] = self.order[found[hit]]
        return out


def _running_maxima(s_end: np.ndarray) -> list[np.ndarray]:
    """``levels[k][i]``: the largest end among the ``2**k`` ranges ending at sorted position ``i``
    (fewer at the start of the array, where no search reaches back that far)."""
    levels = [s_end]
    for k in range(1, _LEVELS):
        prev = levels[-1]
        half = 1 << (k - 1)
        nxt = prev.copy()
        if half < len(prev):
            np.maximum(prev[half:], prev[:-half], out=nxt[half:])
        levels.append(nxt)
    return levels


def _nearest_back(
    pos: np.ndarray, floor: np.ndarray, q_end: np.ndarray, s_end: np.ndarray, levels: list[np.ndarray]
) -> np.ndarray:
    """For each query, the largest j in ``[floor, pos]`` with ``s_end[j] >= q_end``, else -1 (``floor``:
    the first range of the query's thread, at most ``MAX_STEPS_BACK - 1`` before ``pos``), in
    ``log2(MAX_STEPS_BACK)`` steps instead of one range at a time.

    ``levels[k][i]`` is the largest end among the ``2**k`` ranges ending at ``i``; going down the
    levels, a query skips a block of ``2**k`` ranges that all end before it.
    """
    found = np.full(len(pos), -1, dtype=np.int64)
    valid = pos >= 0
    if not valid.any():
        return found
    p = np.where(valid, pos, 0)
    for k in range(_LEVELS - 1, -1, -1):
        step = 1 << k
        skip = valid & (p - step + 1 >= floor) & (levels[k][p] < q_end)
        p = np.where(skip, p - step, p)
    ok = valid & (p >= floor) & (s_end[np.maximum(p, 0)] >= q_end)
    found[ok] = p[ok]
    return found


def _search_pairs(tids: np.ndarray, times: np.ndarray, tid: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """searchsorted on (tid, ts) pairs sorted by tid then ts, ``side="right"`` minus one; -1 where no
    range of the query's thread starts at or before it.

    One search of combined keys (thread rank * span + time from the earliest) instead of one masked
    search per thread (~0.2 s of the name views on a 1 GB trace); the loop where the keys would not
    fit in int64.
    """
    pos = np.full(len(tid), -1, dtype=np.int64)
    if len(tids) == 0 or len(tid) == 0:
        return pos
    threads = sorted_unique(tids)
    earliest = min(int(times.min()), int(ts.min()))
    span = max(int(times.max()), int(ts.max())) - earliest + 1
    if span * (len(threads) + 1) < 1 << 62:
        rank = np.searchsorted(threads, tid)
        known = (rank < len(threads)) & (threads[np.minimum(rank, len(threads) - 1)] == tid)
        keys = np.searchsorted(threads, tids) * span + (times - earliest)
        found = np.searchsorted(keys, rank * span + (ts - earliest), side="right") - 1
        ok = known & (found >= 0)
        ok[ok] &= tids[found[ok]] == tid[ok]  # else the last range before it is another thread's
        pos[ok] = found[ok]
        return pos
    lo = np.searchsorted(tids, tid, side="left")
    hi = np.searchsorted(tids, tid, side="right")
    for t in sorted_unique(tid):
        sel = tid == t
        a, b = lo[sel][0], hi[sel][0]
        pos[sel] = a + np.searchsorted(times[a:b], ts[sel], side="right") - 1
        pos[sel & (pos < a)] = -1
    return pos


def user_frames(host: pd.DataFrame) -> pd.DataFrame:
    """``python_function`` ranges that are the user's own code (not torch or the standard library)."""
    py = host[host["cat"] == "python_function"]
    if len(py) == 0:
        return py
    names = py["name"].astype("category")
    keep = []
    for c in names.cat.categories:
        m = _FRAME.match(str(c))
        if m and not _LIBRARY.search(m.group("file")):
            keep.append(c)
    return py[names.isin(keep)]


def source_lines(host: pd.DataFrame, ts: np.ndarray, end: np.ndarray, tid: np.ndarray) -> list[str | None]:
    """The innermost user Python frame (``file.py(line): func``) around each call, where stacks were recorded."""
    frames = user_frames(host)
    if len(frames) == 0:
        return [None] * len(ts)
    idx = innermost_enclosing(ts, end, tid, frames)
    names = frames["name"].astype(str).to_numpy()
    return [names[i] if i >= 0 else None for i in idx.tolist()]
