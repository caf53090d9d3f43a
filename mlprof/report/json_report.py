"""The JSON contract of ``mlprof analyze --format json``.

Versioned by ``schema_version`` (semver: a new optional key is a minor bump, a
removed or renamed key a major bump). Layout::

    schema_version   "1.0"
    tool             {"name": "mlprof", "version": ...}
    trace            path, format, ranks, world_size, devices, file/json bytes,
                     events, step_source, has_device_activity, notes
    steps            one object per analysed step (all ranks: the job's view,
                     averaged over ranks), times in ms
    breakdown        totals per category: ms, pct of wall time, per-step ms,
                     plus gpu_busy_pct and the HTA-comparable trace-level split
    ranks            per rank: rank, steps, breakdown (same shape as above)
    findings         ranked findings: rule, category, severity, title,
                     expected_speedup, time_lost_ms_per_step, evidence, fix
    notes            plain-language caveats about what the trace lacks

All durations are milliseconds (float) derived from exact int64 ns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlprof import __version__
from mlprof.analysis import Analysis, RankAnalysis
from mlprof.analyzers.attribution import BUSY, CATEGORIES, CATEGORY_HELP

SCHEMA_VERSION = "1.0"
NS_PER_MS = 1_000_000


def _ms(ns: float) -> float:
    return round(float(ns) / NS_PER_MS, 6)


def steps_records(steps: pd.DataFrame) -> list[dict[str, Any]]:
    records = []
    for row in steps.itertuples(index=False):
        rec: dict[str, Any] = {"step": int(row.step), "start_ns": int(row.ts), "dur_ms": _ms(row.dur)}
        for c in CATEGORIES:
            rec[f"{c}_ms"] = _ms(getattr(row, c))
        records.append(rec)
    return records


def breakdown_dict(ra: RankAnalysis) -> dict[str, Any]:
    totals = ra.category_totals()
    wall = sum(totals.values())
    n_steps = max(len(ra.steps), 1)
    cats = {
        c: {
            "ms": _ms(totals[c]),
            "pct": round(100.0 * totals[c] / wall, 3) if wall else 0.0,
            "ms_per_step": _ms(totals[c] / n_steps),
            "meaning": CATEGORY_HELP[c],
        }
        for c in CATEGORIES
    }
    busy = sum(totals[c] for c in BUSY)
    step_ms = ra.steps["dur"].to_numpy() / NS_PER_MS if len(ra.steps) else np.empty(0)
    t = ra.temporal
    return {
        "wall_ms": _ms(wall),
        "steps_analysed": len(ra.steps),
        "step_time_ms": {
            "median": round(float(np.median(step_ms)), 6) if len(step_ms) else None,
            "mean": round(float(step_ms.mean()), 6) if len(step_ms) else None,
            "min": round(float(step_ms.min()), 6) if len(step_ms) else None,
            "max": round(float(step_ms.max()), 6) if len(step_ms) else None,
        },
        "gpu_busy_pct": round(100.0 * busy / wall, 3) if wall and ra.trace.has_device_activity else None,
        "categories": cats,
        "trace_level": {
            "gpu_span_ms": _ms(t.span_ns),
            "idle_pct": round(t.idle_pct, 3),
            "compute_pct": round(t.compute_pct, 3),
            "non_compute_pct": round(t.non_compute_pct, 3),
            "comm_ms": _ms(t.comm_ns),
            "comm_comp_overlap_pct": None if t.comm_comp_overlap_pct is None else round(t.comm_comp_overlap_pct, 3),
        },
    }


def _trace_dict(analysis: Analysis) -> dict[str, Any]:
    first = analysis.ranks[0].trace.meta
    devices = [
        {"id": d.id, "name": d.name, "memory_bytes": d.total_memory_bytes, "sms": d.num_sms} for d in first.devices
    ]
    return {
        "path": analysis.path,
        "format": first.format,
        "ranks": [ra.rank for ra in analysis.ranks],
        "world_size": first.world_size,
        "backend": first.backend,
        "devices": devices,
        "file_bytes": sum(ra.trace.meta.file_bytes for ra in analysis.ranks),
        "json_bytes": sum(ra.trace.meta.json_bytes for ra in analysis.ranks),
        "events": sum(ra.trace.meta.num_events for ra in analysis.ranks),
        "step_source": first.step_source,
        "step_filter": analysis.step_filter,
        "has_device_activity": any(ra.trace.has_device_activity for ra in analysis.ranks),
        "notes": sorted({n for ra in analysis.ranks for n in ra.trace.meta.notes}),
    }


def job_steps(analysis: Analysis) -> pd.DataFrame:
    """The job's per-step view: each step's categories averaged over ranks."""
    frames = [ra.steps for ra in analysis.ranks if len(ra.steps)]
    if not frames:
        return analysis.ranks[0].steps
    if len(frames) == 1:
        return frames[0]
    stacked = pd.concat(frames, ignore_index=True)
    cols = ["dur", *CATEGORIES]
    grouped = stacked.groupby("step", sort=True)
    mean = grouped[cols].mean().round().astype(np.int64)
    mean.insert(0, "ts", grouped["ts"].min())
    return mean.reset_index()


def to_json_dict(analysis: Analysis) -> dict[str, Any]:
    ranks = [
        {
            "rank": ra.rank,
            "path": ra.trace.meta.path,
            "step_source": ra.trace.meta.step_source,
            "steps": steps_records(ra.steps),
            "breakdown": breakdown_dict(ra),
            "notes": ra.notes,
        }
        for ra in analysis.ranks
    ]
    if len(analysis.ranks) == 1:
        top_steps = ranks[0]["steps"]
        top_breakdown = ranks[0]["breakdown"]
    else:
        top_steps = steps_records(job_steps(analysis))
        top_breakdown = _job_breakdown(analysis)
    findings = [f.to_dict() if hasattr(f, "to_dict") else f for ra in analysis.ranks for f in ra.findings]
    notes = sorted({n for ra in analysis.ranks for n in ra.notes})
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "mlprof", "version": __version__},
        "trace": _trace_dict(analysis),
        "steps": top_steps,
        "breakdown": top_breakdown,
        "ranks": ranks,
        "findings": findings,
        "notes": notes,
    }


def _job_breakdown(analysis: Analysis) -> dict[str, Any]:
    totals = {c: sum(ra.category_totals()[c] for ra in analysis.ranks) for c in CATEGORIES}
    wall = sum(totals.values())
    per_rank_busy = [breakdown_dict(ra)["gpu_busy_pct"] for ra in analysis.ranks]
    busy_values = [b for b in per_rank_busy if b is not None]
    return {
        "wall_ms": _ms(wall),
        "aggregation": "sum over ranks",
        "categories": {
            c: {
                "ms": _ms(totals[c]),
                "pct": round(100.0 * totals[c] / wall, 3) if wall else 0.0,
                "meaning": CATEGORY_HELP[c],
            }
            for c in CATEGORIES
        },
        "gpu_busy_pct": round(float(np.mean(busy_values)), 3) if busy_values else None,
    }
