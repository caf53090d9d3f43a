"""Chrome-trace events that show findings next to the kernels they concern."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from mlprof.annotate.targets import Arrow, Targets
from mlprof.rules.base import NS_PER_MS, Finding
from mlprof.trace.model import Trace

FINDINGS_PROCESS = "mlprof findings"
FINDING_CAT = "mlprof_finding"
MARK_CAT = "mlprof_mark"
"""Job-level marks on a rank's copy (the straggler), apart from the findings."""
FLOW_ID_BASE = 0x6D6C70000000
"""Flow ids start here so they cannot meet Kineto's own (correlation-sized) ids."""
MAX_RANGES = 50
"""At most this many time ranges (or steps) are drawn per finding."""


@dataclass(frozen=True)
class KernelRef:
    """Where a device event sits in the original file: its ``pid``/``tid`` exactly as written."""

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
    arrows: list[tuple[int, Arrow]] | None = None,
    marks: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The events to append: process/track names, one slice per range, instants, flows to kernels.

    ``arrows`` (from :func:`finding_arrows`) pairs a finding's index with an arrow;
    ``kernel_refs`` maps the ``trace.gpu`` row an arrow lands on to that event's
    pid/tid in the file; arrows to rows without one are dropped. ``marks`` are
    job-level notes for this rank (e.g. that it is the straggler): each becomes a
    process label, a track of its own and a global instant event at the trace's start.
    """
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": FINDINGS_PROCESS}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": -1}},
    ]
    for i, f in enumerate(findings):
        tid = i + 1
        label = f"{f.rule} {f.category} {f.expected_speedup:.2f}x"
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"#{tid} {label}"}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        args = _args(f)
        ranges = _ranges(f, trace)
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
    flow_id = FLOW_ID_BASE
    kinds = trace.gpu["kind"].astype(str).to_numpy() if len(trace.gpu) else []
    for i, arrow in arrows if arrows is not None else finding_arrows(findings, trace):
        ref = kernel_refs.get(arrow.row)
        if ref is None:
            continue
        flow = {"cat": FINDING_CAT, "name": f"{findings[i].rule} -> {kinds[arrow.row]}", "id": flow_id}
        events.append({"ph": "s", "pid": pid, "tid": i + 1, "ts": us(arrow.start_ns), **flow})
        events.append({"ph": "f", "bp": "e", "pid": ref.pid, "tid": ref.tid, "ts": us(arrow.end_ns), **flow})
        flow_id += 1
    if marks:
        events.extend(_mark_events(marks, trace, pid, len(findings) + 1))
    return events


def finding_arrows(findings: list[Finding], trace: Trace) -> list[tuple[int, Arrow]]:
    """(index of the finding, arrow) for every range that has a device event to point at (:mod:`.targets`)."""
    if not findings or not len(trace.gpu):
        return []
    targets = Targets(trace)
    out: list[tuple[int, Arrow]] = []
    for i, f in enumerate(findings):
        rows = targets.prepare(np.flatnonzero(targets.candidates(f)))
        for a, b in _ranges(f, trace):
            arrow = targets.arrow(a, b, rows)
            if arrow is not None:
                out.append((i, arrow))
    return out


def _mark_events(marks: list[str], trace: Trace, pid: int, tid: int) -> list[dict[str, Any]]:
    lo, hi = _span(trace)
    text = "; ".join(marks)
    return [
        {"ph": "M", "name": "process_labels", "pid": pid, "tid": 0, "args": {"labels": text}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": text}},
        {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": 0}},
        {
            "ph": "X",
            "cat": MARK_CAT,
            "name": text,
            "pid": pid,
            "tid": tid,
            "ts": us(lo),
            "dur": us(max(hi - lo, 1)),
            "args": {"marks": marks},
        },
        {"ph": "i", "s": "g", "cat": MARK_CAT, "name": text, "pid": pid, "tid": tid, "ts": us(lo)},
    ]


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


def _ranges(f: Finding, trace: Trace) -> list[tuple[int, int]]:
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
