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
    findings         ranked findings: rule, name, category, severity, title,
                     expected_speedup, time_lost_ms_per_step, step_ms, confidence,
                     confidence_reason, ranks, steps, time_ranges_ns,
                     claimed_ms_per_step, evidence, fix, record_next
    plan             the fixes applied in ranked order: rule, saves_ms_per_step,
                     step_ms_after, cumulative_speedup (a waterfall)
    checks           rules run, findings under min_speedup, and verdicts of rules
                     that looked and found nothing (e.g. the memory trend)
    record_next      what to record next time for the signals this trace lacks
    notes            plain-language caveats about what the trace lacks
    counters         (1.2) GPU counters given with --counters, or analysed alone:
                     paths, formats, time_base, per-device summaries, whether
                     they were joined to the steps (and per-step means), the
                     counter rules' findings, verdicts and notes; null without
    cross_rank       (1.3) several ranks: summary (stragglers, step-time skew,
                     imbalance vs bandwidth), groups (per rank group), rule_outliers,
                     per_rank (one row per rank); null for one rank
    kernels          (1.4) kernels launched in the analysed steps by name, most GPU
                     time first: count, total_ms, mean_us, ms_per_step, share_pct
                     (of all kernel time), class, tensor_cores, launched_by (the CPU
                     op that launched most of its time); several ranks: mean over
                     ranks, plus worst_rank and worst_rank_total_ms; at most 200
                     names, the rest in one "(other)" row (mlprof.report.views)
    operators        (1.4) CPU ops started in the analysed steps by name, most host
                     time first: count, host_total_ms (inclusive), host_self_ms,
                     device_ms (device time of what it launched directly), mean_us,
                     ms_per_step, input_shapes (most frequent Input Dims of matmul/
                     softmax/attention ops; null for others), call_stack
                     (most frequent, a list of frames; null without with_stack)
    whatif           (1.5) the replay: replay_error_pct (signed, % of the recorded
                     step; the rank with the largest error), trusted (error within
                     max_error_pct), plan_source, per_rank (error, graph size,
                     paced_by per step); findings carry speedup_source
    steady_state     (1.5) steps set aside from every per-step figure (warm-up,
                     outlier, partial) and why: per rank, steady_steps, set_aside
                     (step, dur_ms, reason, detail), median_ms, spread_ms,
                     overridden_by_steps, notes (also on each ``ranks`` entry)

A counters file analysed alone gives the same top-level keys: ``trace`` and
``breakdown`` are null, ``steps``/``ranks``/``plan`` empty, ``findings`` the
counter findings (also under ``counters.findings``). A counter finding's
``step_ms`` is the recorded time it is measured over.

All durations are milliseconds (float) derived from exact int64 ns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from mlprof import __version__
from mlprof.analyzers.attribution import CATEGORIES, CATEGORY_HELP, gpu_busy_pct
from mlprof.analyzers.temporal import TemporalBreakdown
from mlprof.results.measurements import Analysis, CounterAnalysis, RankAnalysis
from mlprof.results.report import Report
from mlprof.results.spill import RawRows
from mlprof.results.views import kernels_and_operators
from mlprof.trace.memory import tidy_rank_loop

SCHEMA_VERSION = "1.5"
ReportSource = Report | Analysis | CounterAnalysis | dict[str, Any]
"""What a renderer accepts: a Report, its JSON dict, or (for existing callers) the analysis it came from."""
NS_PER_MS = 1_000_000


def _ms(ns: float) -> float:
    return round(float(ns) / NS_PER_MS, 6)


def steps_records(steps: pd.DataFrame) -> list[dict[str, Any]]:
    # Columns as lists, not itertuples: a job's report builds one per rank, and itertuples' fixed cost on a
    # frame of a few rows (~1 ms) was most of the 1,024-rank report's per-rank time.
    if len(steps) == 0:
        return []
    step, ts, dur = steps["step"].tolist(), steps["ts"].tolist(), steps["dur"].tolist()
    cats = [(f"{c}_ms", steps[c].tolist()) for c in CATEGORIES]
    records = []
    for i in range(len(step)):
        rec: dict[str, Any] = {"step": int(step[i]), "start_ns": int(ts[i]), "dur_ms": _ms(dur[i])}
        for key, values in cats:
            rec[key] = _ms(values[i])
        records.append(rec)
    return records


@dataclass(frozen=True)
class StepSummary:
    """The analysed steps in a few figures: the report's ``breakdown`` and the run store's run row share them."""

    steps_analysed: int
    median_ms: float | None
    mean_ms: float | None
    min_ms: float | None
    max_ms: float | None
    gpu_busy_pct: float | None
    """Compute, exposed communication and copies, % of wall time (None without device activity)."""


def step_summary(totals: dict[str, int], steps: pd.DataFrame, has_device: bool) -> StepSummary:
    """Step-time statistics over ``steps`` and the GPU-busy share of ``totals`` (ns per category)."""
    step_ms = steps["dur"].to_numpy() / NS_PER_MS if len(steps) else np.empty(0)
    wall = sum(totals.values())

    busy = round(gpu_busy_pct(totals), 3) if wall and has_device else None
    if not len(step_ms):
        return StepSummary(0, None, None, None, None, busy)
    return StepSummary(
        steps_analysed=len(steps),
        median_ms=round(float(np.median(step_ms)), 6),
        mean_ms=round(float(step_ms.mean()), 6),
        min_ms=round(float(step_ms.min()), 6),
        max_ms=round(float(step_ms.max()), 6),
        gpu_busy_pct=busy,
    )


def job_step_summary(analysis: Analysis) -> StepSummary:
    """:func:`step_summary` of the job's view (one rank: its steps; several: the mean over ranks per step)."""
    return step_summary(analysis.category_totals(), analysis.job_steps(), analysis.has_device_activity)


def breakdown_dict(
    totals: dict[str, int], steps: pd.DataFrame, has_device: bool, temporal: TemporalBreakdown | None
) -> dict[str, Any]:
    """The ``breakdown`` object; the same shape for one rank and for a job."""
    wall = sum(totals.values())
    n_steps = max(len(steps), 1)
    cats = {
        c: {
            "ms": _ms(totals[c]),
            "pct": round(100.0 * totals[c] / wall, 3) if wall else 0.0,
            "ms_per_step": _ms(totals[c] / n_steps),
            "meaning": CATEGORY_HELP[c],
        }
        for c in CATEGORIES
    }
    summary = step_summary(totals, steps, has_device)
    return {
        "wall_ms": _ms(wall),
        "steps_analysed": summary.steps_analysed,
        "step_time_ms": {
            "median": summary.median_ms,
            "mean": summary.mean_ms,
            "min": summary.min_ms,
            "max": summary.max_ms,
        },
        "gpu_busy_pct": summary.gpu_busy_pct,
        "categories": cats,
        "trace_level": None if temporal is None else _trace_level(temporal),
    }


def _trace_level(t: TemporalBreakdown) -> dict[str, Any]:
    return {
        "gpu_span_ms": _ms(t.span_ns),
        "idle_pct": round(t.idle_pct, 3),
        "compute_pct": round(t.compute_pct, 3),
        "non_compute_pct": round(t.non_compute_pct, 3),
        "comm_ms": _ms(t.comm_ns),
        "comm_comp_overlap_pct": None if t.comm_comp_overlap_pct is None else round(t.comm_comp_overlap_pct, 3),
    }


def rank_breakdown(ra: RankAnalysis) -> dict[str, Any]:
    return breakdown_dict(ra.category_totals(), ra.steps, ra.has_device_activity, ra.temporal)


def _trace_dict(analysis: Analysis) -> dict[str, Any]:
    first = analysis.ranks[0].trace.meta
    devices = [
        {"id": d.id, "name": d.name, "memory_bytes": d.total_memory_bytes, "sms": d.num_sms} for d in first.devices
    ]
    # the ranks' sizes and notes in one pass: a job's kept rank reads its metadata back from the spill file
    file_bytes = json_bytes = events = 0
    notes: set[str] = set()
    for ra in analysis.ranks:
        meta = ra.trace.meta
        file_bytes += meta.file_bytes
        json_bytes += meta.json_bytes
        events += meta.num_events
        notes.update(meta.notes)
    return {
        "path": analysis.path,
        "format": first.format,
        "ranks": [ra.rank for ra in analysis.ranks],
        "world_size": first.world_size,
        "backend": first.backend,
        "devices": devices,
        "file_bytes": file_bytes,
        "json_bytes": json_bytes,
        "events": events,
        "step_source": first.step_source,
        "step_filter": analysis.step_filter,
        "has_device_activity": analysis.has_device_activity,
        "notes": sorted(notes),
    }


def to_json_dict(analysis: Analysis, *, encode_rows: bool = False) -> dict[str, Any]:
    """The JSON report's values.

    ``encode_rows``: a job's per-rank rows (``ranks``, ``cross_rank.per_rank``, ``whatif.per_rank``,
    ``steady_state.ranks``) are each encoded as soon as built and written to the spill file
    (:class:`~mlprof.results.spill.RawRows` of their compact JSON, which :func:`~mlprof.results.report.encode_parts`
    writes as is, so the report's text is the same): what :func:`build_report` encodes, without every rank's rows
    held at once, as Python values (~8 KB a rank) or as their JSON (~3.3 KB a rank)."""
    row = _ENCODED if encode_rows and len(analysis.ranks) > 1 else _PLAIN
    ranks = row.rows()
    steady = _SteadyRows(row)
    for i, ra in enumerate(analysis.ranks):
        tidy_rank_loop(i)
        entry = {
            "rank": ra.rank,
            "path": ra.trace.meta.path,
            "step_source": ra.trace.meta.step_source,
            "steps": steps_records(ra.steps),
            "breakdown": rank_breakdown(ra),
            "notes": ra.notes,
            "steady_state": None if ra.steady is None else ra.steady.to_dict(),
        }
        steady.add(entry)
        ranks.append(row.of(entry))
    if len(analysis.ranks) == 1:
        top_steps = ranks[0]["steps"]
        top_breakdown = ranks[0]["breakdown"]
    else:
        job_steps = analysis.job_steps()
        top_steps = steps_records(job_steps)
        top_breakdown = breakdown_dict(analysis.category_totals(), job_steps, analysis.has_device_activity, None)
        top_breakdown["aggregation"] = "mean over ranks"
    diagnosis = analysis.diagnosis
    kernels, operators = kernels_and_operators(analysis)
    findings = [f.to_dict() for f in analysis.findings]
    notes = sorted({n for ra in analysis.ranks for n in ra.notes})
    plan = [
        {
            "rule": p.rule,
            "saves_ms_per_step": p.saves_ms_per_step,
            "step_ms_after": p.step_ms_after,
            "cumulative_speedup": p.cumulative_speedup,
        }
        for p in (diagnosis.plan if diagnosis else [])
    ]
    checks = {
        "rules_run": diagnosis.rules_run if diagnosis else [],
        "below_min_speedup": diagnosis.below_threshold if diagnosis else 0,
        "verdicts": diagnosis.verdicts if diagnosis else {},
        "step_ms": round(diagnosis.step_ms, 6) if diagnosis else None,
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "mlprof", "version": __version__},
        "trace": _trace_dict(analysis),
        "steps": top_steps,
        "breakdown": top_breakdown,
        "ranks": ranks,
        "findings": findings,
        "plan": plan,
        "checks": checks,
        "record_next": diagnosis.record_next if diagnosis else [],
        "notes": notes,
        "counters": None if analysis.counter_summary is None else counters_dict(analysis.counter_summary),
        "cross_rank": cross_rank_dict(analysis, row),
        "kernels": kernels,
        "operators": operators,
        "whatif": _whatif_dict(diagnosis, row),
        "steady_state": steady.to_dict(),
    }


def steady_state_dict(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """(1.5) The steps each rank set aside from its per-step figures (:mod:`mlprof.analyzers.steady_state`)."""
    steady = _SteadyRows(_PLAIN)
    for r in ranks:
        steady.add(r)
    return steady.to_dict()


class _RowKind:
    """How a report's per-rank rows are held: as values in a list, or encoded in the spill file."""

    def __init__(self, rows: Callable[[], Any], of: Callable[[dict[str, Any]], Any]) -> None:
        self.rows = rows
        """A new empty list of rows (with ``append``)."""
        self.of = of
        """A row as held, from its values."""


def _same(values: dict[str, Any]) -> Any:
    return values


_PLAIN = _RowKind(list, _same)
_ENCODED = _RowKind(RawRows, msgspec.json.encode)


class _SteadyRows:
    """``steady_state``'s values, from each rank's report row as it is built (``row``: how a row is held)."""

    def __init__(self, row: _RowKind) -> None:
        self.row = row
        self.overridden = False
        self.set_aside: set[Any] = set()
        self.ranks: Any = row.rows()

    def add(self, rank_entry: dict[str, Any]) -> None:
        own = rank_entry["steady_state"]
        if own is None:
            return
        self.overridden = self.overridden or bool(own["overridden_by_steps"])
        self.set_aside.update(s["step"] for s in own["set_aside"])
        self.ranks.append(self.row.of({"rank": rank_entry["rank"], **own}))

    def to_dict(self) -> dict[str, Any]:
        return {"overridden_by_steps": self.overridden, "set_aside_steps": sorted(self.set_aside), "ranks": self.ranks}


def _whatif_dict(diagnosis: Any, row: _RowKind) -> dict[str, Any] | None:
    if diagnosis is None or diagnosis.whatif is None:
        return None
    if row is _PLAIN:
        plain: dict[str, Any] = diagnosis.whatif.to_dict()
        return plain
    # each rank's row encoded as it is made: not every rank's row at once (~1.5 KB a rank)
    values: dict[str, Any] = diagnosis.whatif.to_dict(per_rank=lambda rows: _held_rows(row, rows))
    return values


def _held_rows(row: _RowKind, records: Iterable[dict[str, Any]]) -> Any:
    rows = row.rows()
    for r in records:
        rows.append(row.of(r))
    return rows


def cross_rank_dict(analysis: Analysis, row: _RowKind = _PLAIN) -> dict[str, Any] | None:
    """(1.3) Several ranks: job summary, summaries by rank group, rule outliers and one row per rank.

    Column meanings: :mod:`mlprof.analyzers.stragglers`; ``docs/multirank.md``.
    """
    diagnosis = analysis.diagnosis
    cr = diagnosis.cross_rank if diagnosis is not None else None
    if cr is None:
        return None
    return {
        "summary": cr.summary,
        "group_size": cr.group_size,
        "groups": _records(cr.groups),
        "rule_outliers": diagnosis.rule_outliers if diagnosis is not None else [],
        "per_rank": _held_rows(row, _iter_records(cr.per_rank)),
    }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (numpy scalars to int/float)."""
    return list(_iter_records(frame))


def _iter_records(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """:func:`_records`, one row at a time."""
    cols = list(frame.columns)
    for row in frame.itertuples(index=False, name=None):
        yield {c: (v.item() if isinstance(v, np.generic) else v) for c, v in zip(cols, row, strict=True)}


MIB = 1 << 20


def _num(value: float, digits: int = 3) -> float | None:
    """A finite float rounded, or None (JSON has no NaN)."""
    value = float(value)
    return round(value, digits) if np.isfinite(value) else None


def counters_dict(ca: CounterAnalysis) -> dict[str, Any]:
    """The ``counters`` object: per-device summaries, the join to steps, the counter rules' findings."""
    lo, hi = ca.span_ns
    devices = [
        {
            "device": s.device,
            "samples": s.samples,
            "span_s": _num(s.span_ns / 1e9),
            "util_mean_pct": _num(s.util_mean_pct, 2),
            "util_p5_pct": _num(s.util_p5_pct, 2),
            "util_p95_pct": _num(s.util_p95_pct, 2),
            "low_util_pct": s.low_util_pct,
            "util_below_share": _num(s.util_below_frac, 4),
            "mem_used_max_mib": _num(s.mem_used_max_bytes / MIB, 1),
            "mem_total_mib": _num(s.mem_total_bytes / MIB, 1),
            "mem_used_max_share": _num(s.mem_used_max_frac, 4),
            "mem_growth_mib_per_min": _num(s.mem_growth_bytes_per_s * 60 / MIB, 3),
            "mem_growth_r2": _num(s.mem_growth_r2, 4),
            "sm_active_mean": _num(s.sm_active_mean, 4),
            "throttle_share": {k: round(v, 4) for k, v in s.throttle_frac.items()},
        }
        for s in ca.summaries
    ]
    return {
        "paths": ca.paths,
        "formats": ca.formats,
        "time_base": ca.time_base,
        "start_ns": lo,
        "end_ns": hi,
        "span_s": _num((hi - lo) / 1e9),
        "rows": len(ca.counters),
        "metrics": sorted({str(m) for m in ca.counters["metric"].astype(str).unique()}),
        "devices": devices,
        "aligned_to_steps": ca.aligned,
        "during_trace": _per_step_records(ca.during_trace),
        "per_step": _per_step_records(ca.per_step),
        "findings": [f.to_dict() for f in ca.findings],
        "checks": {
            "rules_run": ca.diagnosis.rules_run,
            "below_min_speedup": ca.diagnosis.below_threshold,
            "verdicts": ca.diagnosis.verdicts,
        },
        "record_next": ca.diagnosis.record_next,
        "notes": ca.notes,
    }


def _per_step_records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    if frame is None or len(frame) == 0:
        return []
    return [
        {
            "step": int(r.step),
            "device": int(r.device),
            "util_mean_pct": _num(r.util_mean_pct, 2),
            "util_samples": int(r.util_samples),
            "sm_active_mean": _num(r.sm_active_mean, 4),
            "mem_used_at_start_mib": _num(r.mem_used_at_start_bytes / MIB, 1),
        }
        for r in frame.itertuples(index=False)
    ]


def counters_only_json_dict(ca: CounterAnalysis) -> dict[str, Any]:
    """The JSON report of a counters file analysed alone (same top-level keys as a trace report)."""
    counters = counters_dict(ca)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "mlprof", "version": __version__},
        "trace": None,
        "steps": [],
        "breakdown": None,
        "ranks": [],
        "findings": counters["findings"],
        "plan": [],
        "checks": counters["checks"],
        "record_next": counters["record_next"],
        "notes": counters["notes"],
        "counters": counters,
        "kernels": [],
        "operators": [],
        "whatif": None,
    }


def build_report(analysis: Analysis | CounterAnalysis) -> Report:
    """The :class:`~mlprof.results.Report` of an analysis: its JSON report, with the live analysis attached."""
    if isinstance(analysis, Analysis):
        # a job's per-rank rows encoded as built, the rest held as values until written or read
        return Report.of_parts(to_json_dict(analysis, encode_rows=True), analysis=analysis)
    # encoded as soon as built, so the report's values and their normalised copy are not held at once
    return Report.of_encoded(msgspec.json.encode(counters_only_json_dict(analysis)), analysis=analysis)


def report_data(source: ReportSource) -> dict[str, Any]:
    """The JSON report a renderer reads: a Report's data, a JSON dict as is, or an analysis's report."""
    if isinstance(source, Report):
        return source.data
    if isinstance(source, dict):
        return source
    return build_report(source).data
