"""Chrome-trace events that show findings next to the kernels they concern."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from mlprof.rules.base import NS_PER_MS, Finding
from mlprof.trace.model import Trace

FINDINGS_PROCESS = "mlprof findings"
FINDING_CAT = "mlprof_finding"
FLOW_ID_BASE = 0x6D6C70000000
"""Flow ids start here so they cannot meet Kineto's own (correlation-sized) ids."""
MAX_RANGES = 50
"""At most this many time ranges (or steps) are drawn per finding."""


@dataclass(frozen=True)
class KernelRef:
    """Where a kernel sits in the original file: its ``pid``/``tid`` exactly as written."""

    pid: Any
    tid: Any


def us(ns: int) -> msgspec.Raw:
    """Microseconds with three decimals, written exactly from int64 ns (no float rounding)."""
    sign = "-" if ns < 0 else ""
    ns = abs(int(ns))
    return msgspec.Raw(f"{sign}{ns // 1000}.{ns % 1000:03d}".encode())


def finding_events(
    findings: list[Finding],
    trace: Trace,
    kernel_refs: dict[int, KernelRef],
    pid: int,
) -> list[dict[str, Any]]:
    """The events to append: process/track names, one slice per range, instants, flows to kernels.

    ``kernel_refs`` maps a kernel's correlation id to its pid/tid in the file;
    kernels without one get no flow arrow.
    """
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": FINDINGS_PROCESS}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": -1}},
    ]
    kernels = trace.gpu[trace.gpu["kind"] != "sync"]
    k_ts = kernels["ts"].to_numpy(np.int64)
    k_end = kernels["end"].to_numpy(np.int64)
    k_corr = kernels["correlation"].to_numpy(np.int64)
    flow_id = FLOW_ID_BASE
    for i, f in enumerate(findings):
        tid = i + 1
        label = f"{f.rule} {f.category} {f.expected_speedup:.2f}x"
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"#{tid} {label}"}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        args = _args(f)
        ranges = list(_ranges(f, trace))
        for a, b in ranges:
            events.append(
                {
                    "ph": "X",
                    "cat": FINDING_CAT,
                    "name": label,
                    "pid": pid,
                    "tid": tid,
                    "ts": us(a),
                    "dur": us(max(b - a, 1)),
                    "args": args,
                }
            )
            target = _kernel_for(a, b, k_ts, k_end)
            if target is None:
                continue
            ref = kernel_refs.get(int(k_corr[target])) if k_corr[target] >= 0 else None
            if ref is None:
                continue
            mid = int(k_ts[target] + (k_end[target] - k_ts[target]) // 2)
            flow = {"cat": FINDING_CAT, "name": f"{f.rule} -> kernel", "id": flow_id}
            events.append({"ph": "s", "pid": pid, "tid": tid, "ts": us(a + (b - a) // 2), **flow})
            events.append({"ph": "f", "bp": "e", "pid": ref.pid, "tid": ref.tid, "ts": us(mid), **flow})
            flow_id += 1
        if ranges:
            events.append(
                {
                    "ph": "i",
                    "s": "t",
                    "cat": FINDING_CAT,
                    "name": f"{f.rule}: {f.title}",
                    "pid": pid,
                    "tid": tid,
                    "ts": us(ranges[0][0]),
                    "args": {"rule": f.rule, "fix": f.fix},
                }
            )
    return events


def target_correlations(findings: list[Finding], trace: Trace) -> set[int]:
    """Correlation ids of the kernels the flow arrows will point at (to look up where they sit in the file)."""
    kernels = trace.gpu[trace.gpu["kind"] != "sync"]
    k_ts = kernels["ts"].to_numpy(np.int64)
    k_end = kernels["end"].to_numpy(np.int64)
    k_corr = kernels["correlation"].to_numpy(np.int64)
    out: set[int] = set()
    for f in findings:
        for a, b in _ranges(f, trace):
            target = _kernel_for(a, b, k_ts, k_end)
            if target is not None and k_corr[target] >= 0:
                out.add(int(k_corr[target]))
    return out


def _args(f: Finding) -> dict[str, Any]:
    return {
        "rule": f.rule,
        "category": f.category,
        "severity": f.severity,
        "title": f.title,
        "expected_speedup": round(f.expected_speedup, 4),
        "time_lost_ms_per_step": round(f.time_lost_ns_per_step / NS_PER_MS, 6),
        "confidence": f.confidence,
        "fix": f.fix,
        "explain": f"mlprof explain {f.rule}",
    }


def _ranges(f: Finding, trace: Trace) -> Iterable[tuple[int, int]]:
    """The finding's time ranges; else its steps' windows; else the whole trace."""
    if f.time_ranges_ns:
        return [(int(a), int(b)) for a, b in f.time_ranges_ns[:MAX_RANGES]]
    steps = trace.steps
    if len(steps) and f.steps:
        chosen = steps[steps["step"].isin(f.steps)].head(MAX_RANGES)
        if len(chosen):
            starts, ends = chosen["ts"].to_numpy(np.int64).tolist(), chosen["end"].to_numpy(np.int64).tolist()
            return list(zip(starts, ends, strict=True))
    lo, hi = _span(trace)
    return [(lo, hi)] if hi > lo else []


def _span(trace: Trace) -> tuple[int, int]:
    frames: list[pd.DataFrame] = [t for t in (trace.host, trace.gpu, trace.runtime) if len(t)]
    if not frames:
        return (0, 0)
    return min(int(t["ts"].min()) for t in frames), max(int(t["end"].max()) for t in frames)


def _kernel_for(a: int, b: int, k_ts: np.ndarray, k_end: np.ndarray) -> int | None:
    """The longest kernel overlapping [a, b), else the first that starts at or after ``b``."""
    if len(k_ts) == 0:
        return None
    overlap = (k_ts < b) & (k_end > a)
    if overlap.any():
        idx = np.flatnonzero(overlap)
        return int(idx[np.argmax(np.minimum(k_end[idx], b) - np.maximum(k_ts[idx], a))])
    after = np.flatnonzero(k_ts >= b)
    if len(after) == 0:
        return None
    return int(after[np.argmin(k_ts[after])])
