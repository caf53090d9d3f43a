"""The timeline's window as a Chrome/Perfetto trace, with the findings drawn on it.

What the Run page's timeline shows, for a closer look in Perfetto (ui.perfetto.dev) or
chrome://tracing: every GPU event (kernels, copies, memsets) of the window on a
``GPU d`` process with one thread per stream, every host op and runtime call on a
``CPU`` process with one thread per thread id, and each finding's time ranges on an
``mlprof findings`` process (one track per rule), named ``RULE: title``. Built from
the run's Parquet cache (the original trace need not be on this machine); names are
written as JSON strings, so a name from the trace is data, never markup.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

FINDINGS_PID = 1_000_000
CPU_PID = 999_999


def _complete(frame: pd.DataFrame, pid: np.ndarray, tid: np.ndarray, cat: str) -> list[dict[str, Any]]:
    ts = frame["ts"].to_numpy(np.int64)
    dur = np.maximum(frame["end"].to_numpy(np.int64) - ts, 0)
    names = frame["name"].astype(str).tolist()
    return [
        {"ph": "X", "cat": cat, "name": n, "pid": int(p), "tid": int(t), "ts": a / 1e3, "dur": d / 1e3}
        for n, p, t, a, d in zip(names, pid.tolist(), tid.tolist(), ts.tolist(), dur.tolist(), strict=True)
    ]


def window_trace(
    gpu: pd.DataFrame | None,
    host: pd.DataFrame | None,
    runtime: pd.DataFrame | None,
    findings: pd.DataFrame,
) -> bytes:
    """A Chrome trace (JSON) of the given event tables and finding ranges (columns rule, title, ts, end)."""
    events: list[dict[str, Any]] = []
    meta: list[dict[str, Any]] = []
    if gpu is not None and len(gpu):
        gpu = gpu[gpu["kind"].astype(str) != "sync"]
        devices = gpu["device"].to_numpy(np.int64)
        events += _complete(gpu, devices, gpu["stream"].to_numpy(np.int64), "gpu")
        for d in sorted(set(devices.tolist())):
            meta.append({"ph": "M", "name": "process_name", "pid": int(d), "args": {"name": f"GPU {d}"}})
    for frame, cat in ((host, "cpu_op"), (runtime, "cuda_runtime")):
        if frame is not None and len(frame):
            pid = np.full(len(frame), CPU_PID, dtype=np.int64)
            events += _complete(frame, pid, frame["tid"].to_numpy(np.int64), cat)
    if host is not None or runtime is not None:
        meta.append({"ph": "M", "name": "process_name", "pid": CPU_PID, "args": {"name": "CPU"}})
    if len(findings):
        meta.append({"ph": "M", "name": "process_name", "pid": FINDINGS_PID, "args": {"name": "mlprof findings"}})
        rules = list(dict.fromkeys(findings["rule"].astype(str)))
        for i, rule in enumerate(rules):
            meta.append({"ph": "M", "name": "thread_name", "pid": FINDINGS_PID, "tid": i, "args": {"name": rule}})
        track = {rule: i for i, rule in enumerate(rules)}
        for rule, title, a, b in zip(findings["rule"], findings["title"], findings["ts"], findings["end"], strict=True):
            events.append(
                {
                    "ph": "X",
                    "cat": "mlprof",
                    "name": f"{rule}: {title}",
                    "pid": FINDINGS_PID,
                    "tid": track[str(rule)],
                    "ts": int(a) / 1e3,
                    "dur": max(int(b) - int(a), 0) / 1e3,
                    "args": {"explain": f"mlprof explain {rule}"},
                }
            )
    doc = {"traceEvents": meta + events, "displayTimeUnit": "ns"}
    return json.dumps(doc, ensure_ascii=True).encode()
