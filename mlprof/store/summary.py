"""What the store keeps of an analysis: rows for each table, computed once at ingest.

The dashboard and ``mlprof runs`` read these rows and never re-run the analysis. All
figures come from the typed results (:class:`mlprof.results.measurements.Analysis`, its
findings and plan), not from the JSON report's dict; nothing new is
measured here except two summaries the report does not carry: per-name kernel/op time
inside the analysed steps (for Compare) and the memory curve at step boundaries with
its least-squares trend (for the Run page).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.analyzers.memory_curve import memory_curves
from mlprof.analyzers.name_totals import rank_events
from mlprof.results.measurements import Analysis, CounterAnalysis

MIB = 1 << 20
TOP_OPS = 200
"""Kernels and host ops kept per run (most time first); the rest is one ``(other)`` row."""


def step_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """Per-step attribution rows: every rank, plus rank -1 for the job's view (mean over ranks)."""
    frames: list[tuple[int, pd.DataFrame]] = [(ra.rank, ra.steps) for ra in analysis.ranks]
    frames.append((-1, analysis.job_steps()))
    rows: list[dict[str, Any]] = []
    for rank, steps in frames:
        if len(steps) == 0:
            continue
        cols = {c: steps[c].to_numpy(np.int64) for c in ("step", "ts", "dur", *CATEGORIES)}
        for i in range(len(steps)):
            row = {"rank": rank, "step": int(cols["step"][i]), "start_ns": int(cols["ts"][i])}
            row["dur_ns"] = int(cols["dur"][i])
            row.update({f"{c}_ns": int(cols[c][i]) for c in CATEGORIES})
            rows.append(row)
    return rows


def op_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """Per kernel name and per host op name: count and ns inside the analysed steps, mean over ranks.

    Measured by :func:`mlprof.analyzers.name_totals.rank_events`, the same events
    ``mlprof compare`` matches by name (memcpy/memset rows are left out here). Host ops
    carry their inclusive time (an op's children count in it too), so host rows do not
    add up to the step; they say which ops got slower.
    """
    parts: dict[str, list[pd.DataFrame]] = {"kernel": [], "op": []}
    n_windows = 1
    for ra in analysis.ranks:
        events, windows = rank_events(ra)
        n_windows = max(n_windows, windows)
        for kind in parts:
            frame = events[events["kind"].to_numpy() == kind]
            if len(frame):
                parts[kind].append(frame.groupby("name", sort=False)["dur"].agg(["count", "sum"]))
    rows: list[dict[str, Any]] = []
    n_ranks = max(len(analysis.ranks), 1)
    for kind, frames in parts.items():
        if not frames:
            continue
        total = pd.concat(frames).groupby(level=0).sum() / n_ranks
        total = total.sort_values("sum", ascending=False)
        head, tail = total.iloc[:TOP_OPS], total.iloc[TOP_OPS:]
        if len(tail):
            head = pd.concat(
                [head, pd.DataFrame({"count": [tail["count"].sum()], "sum": [tail["sum"].sum()]}, index=["(other)"])]
            )
        for pos, (name, row) in enumerate(head.iterrows()):
            rows.append(
                {
                    "kind": kind,
                    "position": pos,
                    "name": str(name),
                    "count": round(float(row["count"])),
                    "total_ns": round(float(row["sum"])),
                    "ns_per_step": float(row["sum"]) / n_windows,
                }
            )
    return rows


def memory_summary(analysis: Analysis) -> list[dict[str, Any]]:
    """Allocated memory at each step boundary and its straight-line trend, per rank and device."""
    out: list[dict[str, Any]] = []
    for ra in analysis.ranks:
        if len(ra.steps) == 0:
            continue
        numbers = ra.steps["step"].to_numpy(np.int64).tolist()
        starts = dict(zip(numbers, ra.steps["ts"].to_numpy(np.int64).tolist(), strict=True))
        for curve in memory_curves(ra.full_trace.memory, ra.steps, ra.full_trace.host):
            out.append(
                {
                    "rank": ra.rank,
                    "device": curve.device,
                    "steps": curve.steps.tolist(),
                    "step_start_ns": [starts[int(s)] for s in curve.steps],
                    "boundary_bytes": curve.boundary_bytes.tolist(),
                    "peak_bytes": curve.peak_bytes.tolist(),
                    "slope_bytes_per_step": curve.slope_bytes_per_step,
                    "intercept_bytes": curve.intercept_bytes,
                    "r2": curve.r2,
                    "late_slope_bytes_per_step": curve.late_slope_bytes_per_step,
                }
            )
    return out


def finding_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """Trace findings in ranked order with their plan saving, then counter findings (typed results, the
    numbers rounded as the JSON report writes them; ``detail`` is the finding as the report has it)."""
    diagnosis = analysis.diagnosis
    plan = {p.rule: p for p in (diagnosis.plan if diagnosis is not None else [])}
    counters = analysis.counter_summary
    rows: list[dict[str, Any]] = []
    for source, findings in (("trace", analysis.findings), ("counters", counters.findings if counters else [])):
        for f in findings:
            step = plan.get(f.rule) if source == "trace" else None
            rows.append(
                {
                    "position": len(rows),
                    **f.brief(),
                    "confidence": f.confidence,
                    "saves_ms_per_step": None if step is None else float(step.saves_ms_per_step),
                    "cumulative_speedup": None if step is None else float(step.cumulative_speedup),
                    "source": source,
                    "detail": f.to_dict(),
                }
            )
    return rows


def counter_rows(counters: CounterAnalysis | None) -> list[dict[str, Any]]:
    """One row per GPU of the counters' per-device summaries (non-finite figures as None)."""
    if counters is None:
        return []
    return [
        {
            "device": int(s.device),
            "samples": int(s.samples),
            "span_s": _finite(s.span_ns / 1e9, 3),
            "util_mean_pct": _finite(s.util_mean_pct, 2),
            "util_p5_pct": _finite(s.util_p5_pct, 2),
            "util_p95_pct": _finite(s.util_p95_pct, 2),
            "mem_used_max_mib": _finite(s.mem_used_max_bytes / MIB, 1),
            "mem_total_mib": _finite(s.mem_total_bytes / MIB, 1),
            "mem_growth_mib_per_min": _finite(s.mem_growth_bytes_per_s * 60 / MIB, 3),
            "sm_active_mean": _finite(s.sm_active_mean, 4),
            "throttle": {k: round(v, 4) for k, v in s.throttle_frac.items()},
        }
        for s in counters.summaries
    ]


def _finite(value: float, digits: int) -> float | None:
    """Rounded as the JSON report writes it; None where it has no value (NaN)."""
    value = float(value)
    return round(value, digits) if np.isfinite(value) else None
