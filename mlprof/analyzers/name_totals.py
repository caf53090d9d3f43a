"""Device events and CPU ops of the analysed steps, by name: what changed between runs is read from these.

One measurement for every front end that lists kernels and ops by name (``mlprof
compare`` and the run store the dashboard reads), so the two cannot disagree. A
kernel, memcpy or memset belongs to the step in which it was *launched* (the runtime
call with the same correlation id), or, when the launch was not recorded, to the step
in which it started, as HTA's ``TraceDiff`` assigns GPU events to iterations. A CPU op
(``cpu_op``/``Operator`` range, ``ProfilerStep#N`` itself excluded) belongs to the step
in which it started. Without steps, the analysed window is the one the attribution
uses (:func:`mlprof.analyzers.windows.step_windows`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from mlprof.analyzers.kernels import kernel_classes, launch_times
from mlprof.trace.model import Trace
from mlprof.trace.vocabulary import DISPATCH_CATS, PROFILER_STEP, names_matching


class AnalysedRank(Protocol):
    """What this measurement reads of a rank's analysis (:class:`mlprof.results.RankAnalysis`)."""

    @property
    def full_trace(self) -> Trace: ...

    def analysed_windows(self) -> tuple[np.ndarray, np.ndarray]: ...


def rank_events(ra: AnalysedRank) -> tuple[pd.DataFrame, int]:
    """kind, klass, name, dur of the device activity and CPU ops inside this rank's analysed windows."""
    starts, ends = ra.analysed_windows()
    trace = ra.full_trace
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


def _inside(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which times fall inside one of the (sorted, disjoint) windows."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    pos = np.searchsorted(s, ts, side="right") - 1
    ok = pos >= 0
    ok[ok] &= ts[ok] < e[pos[ok]]
    return ok
