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
    """Row position in ``ranges`` (columns ts, end, tid) of the innermost range containing each query, or -1."""
    out = np.full(len(query_ts), -1, dtype=np.int64)
    if len(ranges) == 0 or len(query_ts) == 0:
        return out
    r_tid = ranges["tid"].to_numpy(np.int64)
    r_ts = ranges["ts"].to_numpy(np.int64)
    r_end = ranges["end"].to_numpy(np.int64)
    order = np.lexsort((r_ts, r_tid))
    s_tid, s_ts, s_end = r_tid[order], r_ts[order], r_end[order]
    # Position of the last range (same tid) starting at or before the query.
    key_ranges = np.stack([s_tid, s_ts], axis=1)
    pos = _search_pairs(key_ranges, query_tid.astype(np.int64), query_ts.astype(np.int64))
    active = np.flatnonzero(pos >= 0)
    for _ in range(MAX_STEPS_BACK):
        if len(active) == 0:
            break
        p = pos[active]
        ok = (p >= 0) & (s_tid[np.maximum(p, 0)] == query_tid[active])
        contains = ok & (s_end[np.maximum(p, 0)] >= query_end[active])
        out[active[contains]] = order[p[contains]]
        still = ok & ~contains
        pos[active[still]] -= 1
        active = active[still]
    return out


def _search_pairs(sorted_pairs: np.ndarray, tid: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """searchsorted on (tid, ts) pairs, ``side="right"`` minus one."""
    tids = sorted_pairs[:, 0]
    times = sorted_pairs[:, 1]
    lo = np.searchsorted(tids, tid, side="left")
    hi = np.searchsorted(tids, tid, side="right")
    pos = np.full(len(tid), -1, dtype=np.int64)
    for t in np.unique(tid):
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
