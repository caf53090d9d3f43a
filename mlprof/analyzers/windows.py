"""The analysed windows of a trace: its steps, else one window, defined once for every path.

A trace with steps is analysed step by step. Without steps it is one window: with
device activity, the span from the first to the last GPU event (time before the first
kernel, imports and set-up, and after the last, teardown and export, is not steady
state, and counting it would let a rule claim most of a trace that barely ran on the
GPU); without device activity, the whole host span.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlprof.trace.model import Trace


def trace_span(trace: Trace) -> tuple[int, int]:
    """First and last instant of host, device or runtime activity; (0, 0) for an empty trace."""
    tables = (trace.host, trace.gpu, trace.runtime)
    starts = [int(t["ts"].min()) for t in tables if len(t)]
    ends = [int(t["end"].max()) for t in tables if len(t)]
    return (min(starts), max(ends)) if starts else (0, 0)


def analysis_window(trace: Trace) -> tuple[int, int]:
    """The stepless window: first to last device event (device-side sync records are not work), else the span."""
    gpu = trace.gpu
    if len(gpu):
        work = gpu[gpu["kind"] != "sync"]
        if len(work):
            return int(work["ts"].min()), int(work["end"].max())
    return trace_span(trace)


def step_windows(steps: pd.DataFrame, window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (ns) of each analysed window: the steps (``ts``, ``dur``), else ``window`` as one."""
    if len(steps):
        starts = steps["ts"].to_numpy(np.int64)
        return starts, starts + steps["dur"].to_numpy(np.int64)
    lo, hi = window
    return np.array([lo], np.int64), np.array([max(hi, lo)], np.int64)
