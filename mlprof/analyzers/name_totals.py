"""Device events and CPU ops of the analysed steps, by name: what changed between runs is read from these.

One measurement for every front end that lists kernels and ops by name (``mlprof
compare`` and the run store the dashboard reads), so the two cannot disagree. A
kernel, memcpy or memset belongs to the step in which it was *launched* (the runtime
call with the same correlation id), or, when the launch was not recorded, to the step
in which it started, as HTA's ``TraceDiff`` assigns GPU events to iterations. A CPU op
(``cpu_op``/``Operator`` range, ``ProfilerStep#N`` itself excluded) belongs to the step
in which it started. Without steps, the analysed window is the one the attribution
uses (:attr:`mlprof.analysis.RankAnalysis.window`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlprof.analysis import RankAnalysis
from mlprof.analyzers.kernels import kernel_classes, launch_times
from mlprof.trace.vocabulary import DISPATCH_CATS, PROFILER_STEP, names_matching


def rank_events(ra: RankAnalysis) -> tuple[pd.DataFrame, int]:
    """kind, klass, name, dur of the device activity and CPU ops inside this rank's analysed windows."""
    starts, ends = _windows(ra)
    trace = ra.trace
    gpu = trace.gpu[trace.gpu["kind"] != "sync"].reset_index(drop=True)
    gpu_kind = gpu["kind"].astype(str).to_numpy()
    gpu_class = np.where(gpu_kind == "kernel", kernel_classes(gpu), gpu_kind)
    host = trace.host
    ops = host[host["cat"].isin(DISPATCH_CATS) & ~names_matching(host["name"], PROFILER_STEP)]
    op_kind = np.full(len(ops), "op", dtype=object)
    parts = []
    for frame, kind, klass, when in (
        (gpu, gpu_kind, gpu_class, launch_times(gpu, trace.runtime)),
        (ops, op_kind, op_kind, ops["ts"].to_numpy(np.int64)),
    ):
        inside = _inside(when, starts, ends)
        parts.append(
            pd.DataFrame(
                {
                    "kind": kind[inside],
                    "klass": klass[inside],
                    "name": frame["name"].astype(str).to_numpy()[inside],
                    "dur": frame["dur"].to_numpy(np.int64)[inside],
                }
            )
        )
    return pd.concat(parts, ignore_index=True), len(starts)


def _windows(ra: RankAnalysis) -> tuple[np.ndarray, np.ndarray]:
    if len(ra.steps):
        starts = ra.steps["ts"].to_numpy(np.int64)
        return starts, starts + ra.steps["dur"].to_numpy(np.int64)
    lo, hi = ra.window
    return np.array([lo], np.int64), np.array([max(hi, lo) + 1], np.int64)


def _inside(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which times fall inside one of the (sorted, disjoint) windows."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    pos = np.searchsorted(s, ts, side="right") - 1
    ok = pos >= 0
    ok[ok] &= ts[ok] < e[pos[ok]]
    return ok
