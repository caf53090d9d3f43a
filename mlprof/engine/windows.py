"""One trace larger than memory, analysed one step at a time (``mlprof analyze BIG.json --low-memory``).

The in-memory reader keeps every event's columns (about 0.7-0.9x the JSON size). Here
memory is bounded by the largest step instead:

1. **Find the steps.** A first streaming pass keeps only the ``ProfilerStep#N`` ranges.
2. **Spill each step.** A second streaming pass writes every event to the spill of
   each step window it overlaps, where a window is the step plus half the median step
   on each side (so launches, drains and kernels that cross a step boundary are seen by
   both steps). A spill is a folder of zstd-compressed Parquet files, one per flushed
   batch, with one column: the event re-encoded as compact JSON holding only the fields
   mlprof reads (so a window's events decode exactly as they would from the file); the
   header and the events without a time (metadata) are stored once for all windows.
3. **Analyse window by window** (in ``--jobs`` processes): each window's events are read
   back into one Kineto document in memory and loaded like a rank
   (:func:`mlprof.engine.rank_task.reduce_trace`), only its own step is analysed,
   and it is reduced to one row of attribution and causes, its findings and the GPU
   totals of the step.
4. **Merge** on the client: the steps and causes are concatenated (so the attribution is
   the in-memory one, step by step), and each rule's findings over the windows become one
   finding whose time lost is the mean over steps (0 where it did not fire), like ranks.

What is not the same as the in-memory analysis: rules see one step at a time, so a rule
whose threshold is met on average but not in each step may differ; MEM001 (a trend over
steps) cannot run; the HTA-style trace-level split covers the steps only. Traces without
``ProfilerStep`` markers are refused (nothing to cut by). The spill takes a fraction of
the JSON size on disk (the JSON spill it replaced took twice the input: each event is in
its own window and, near a boundary, in the neighbour's) and is deleted afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from mlprof.analysis import Analysis, RankAnalysis, select_steps
from mlprof.analyzers.steady_state import SteadyState, steady_state
from mlprof.analyzers.temporal import TemporalBreakdown, temporal_breakdown
from mlprof.engine.executors import ProgressFn, default_jobs, run_local
from mlprof.engine.rank_task import RankPartial, TaskOptions, reduce_trace
from mlprof.errors import BadInputError, UsageError
from mlprof.results import ReducedRank
from mlprof.rules.base import NS_PER_MS, Finding, RankContext, ms, top_ranges
from mlprof.rules.config import RuleConfig
from mlprof.rules.engine import diagnose, run_rank
from mlprof.rules.registry import TRACE_RULES
from mlprof.trace.jsonstream import ProgressCallback, read_trace_events
from mlprof.trace.numbers import MISSING_NS, raw_us_to_ns
from mlprof.trace.schema import TraceEvent
from mlprof.trace.vocabulary import PROFILER_STEP

FLUSH_BYTES = 32 << 20
"""Spill buffers are written out when they hold this much in total."""
_NULL = msgspec.Raw(b"null")
_ENCODER = msgspec.json.Encoder()
SKIPPED_RULES = tuple(r.id for r in TRACE_RULES if r.needs_all_steps)
"""Rules that need several steps at once (:attr:`mlprof.rules.base.Rule.needs_all_steps`): not run one step at
a time."""


@dataclass
class StepWindow:
    step: int
    start: int
    end: int
    """The step itself: [start, end), cut at the next step's start as the attribution cuts it."""
    lo: int
    hi: int
    """What the spill file holds: the step with half a median step of context on each side."""
    path: Path
    """The window's spill folder (Parquet parts)."""
    common: Path
    """Parquet file of the events every window holds, with the trace header in its metadata."""


@dataclass
class WindowResult:
    partial: RankPartial
    temporal: TemporalBreakdown


def analyze_low_memory(
    path: str | Path,
    *,
    config: RuleConfig | None = None,
    steps_spec: str | None = None,
    jobs: int | None = None,
    spill_dir: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
    on_window_done: ProgressFn | None = None,
) -> Analysis:
    """Analyse one trace file step window by step window; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: --low-memory needs one trace file")
    config = config or RuleConfig()
    steps = _find_profiler_steps(path, on_progress)
    if not steps:
        raise UsageError(
            f"{path}: --low-memory cuts the trace by ProfilerStep#N ranges and this trace has none; "
            "analyse it without --low-memory"
        )
    folder = Path(tempfile.mkdtemp(prefix="mlprof-steps-", dir=str(spill_dir) if spill_dir else None))
    try:
        windows = _windows(steps, folder)
        if steps_spec is not None:
            windows = _select(windows, steps_spec)
        steady = _steady(windows, overridden=steps_spec is not None)
        windows = [w for w in windows if w.step in set(steady.steady)]
        header, stats = _spill(path, windows, on_progress)
        options = TaskOptions(config=_without(config, SKIPPED_RULES))
        n = jobs if jobs is not None else default_jobs(len(windows))
        results = run_local(_analyse_window, windows, options, n, on_window_done)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    analysis = _merge(path, results, windows, config, header, stats.json_bytes, stats.file_bytes, stats.events)
    analysis.ranks[0].steady = steady
    return analysis


def _steady(windows: list[StepWindow], *, overridden: bool) -> SteadyState:
    """Warm-up, outlier and partial steps set aside by step times alone (the start-up signals need the events)."""
    table = pd.DataFrame(
        {
            "step": [w.step for w in windows],
            "ts": [w.start for w in windows],
            "dur": [w.end - w.start for w in windows],
        }
    )
    steady = steady_state(table, overridden=overridden)
    if steady.set_aside:
        note = "--low-memory: steps set aside by their times alone (start-up signals need every event at once)"
        steady = msgspec.structs.replace(steady, notes=(*steady.notes, note))
    return steady


def _find_profiler_steps(path: Path, on_progress: ProgressCallback | None) -> list[tuple[int, int, int]]:
    """(step, start ns, end ns) of every ProfilerStep#N range, first occurrence of each number."""
    found: dict[int, tuple[int, int]] = {}

    def on_batch(events: list[TraceEvent]) -> None:
        marks = [e for e in events if isinstance(e.name, str) and e.name.startswith("ProfilerStep#")]
        marks = [e for e in marks if PROFILER_STEP.search(e.name or "")]  # type: ignore[arg-type]
        if not marks:
            return
        ts = raw_us_to_ns([m.ts for m in marks])
        dur = raw_us_to_ns([m.dur for m in marks])
        for m, t, d in zip(marks, ts, dur, strict=True):
            number = str(m.name).rsplit("#", 1)[1]
            if t == MISSING_NS or d == MISSING_NS or not number.isdigit() or len(number) > 18:
                continue
            found.setdefault(int(number), (int(t), int(t + d)))

    read_trace_events(path, on_batch, on_progress)
    return sorted(((k, s, e) for k, (s, e) in found.items()), key=lambda x: x[1])


def _windows(steps: list[tuple[int, int, int]], folder: Path) -> list[StepWindow]:
    starts = np.array([s for _, s, _ in steps], dtype=np.int64)
    ends = np.array([e for _, _, e in steps], dtype=np.int64)
    ends[:-1] = np.minimum(ends[:-1], starts[1:])
    margin = int(np.median(ends - starts)) // 2
    return [
        StepWindow(
            step=k,
            start=int(s),
            end=int(e),
            lo=int(s) - margin,
            hi=int(e) + margin,
            path=folder / f"step{k}",
            common=folder / "common.parquet",
        )
        for (k, _, _), s, e in zip(steps, starts, ends, strict=True)
    ]


def _select(windows: list[StepWindow], spec: str) -> list[StepWindow]:
    table = pd.DataFrame({"step": [w.step for w in windows]})
    keep = set(select_steps(table, spec)["step"].tolist())
    return [w for w in windows if w.step in keep]


def _spill(path: Path, windows: list[StepWindow], on_progress: ProgressCallback | None) -> tuple[dict[str, Any], Any]:
    """Write each event into the spill of every window it overlaps; metadata events once, for all."""
    lo = np.array([w.lo for w in windows], dtype=np.int64)
    hi = np.array([w.hi for w in windows], dtype=np.int64)
    buffers: list[list[bytes]] = [[] for _ in windows]
    common: list[bytes] = []
    parts = [0] * len(windows)
    pending = 0

    def flush() -> None:
        nonlocal pending
        for i, buf in enumerate(buffers):
            if not buf:
                continue
            windows[i].path.mkdir(exist_ok=True)
            _write_events(windows[i].path / f"part{parts[i]:06d}.parquet", buf)
            parts[i] += 1
            buf.clear()
        pending = 0

    def on_batch(events: list[TraceEvent]) -> None:
        nonlocal pending
        if not events:
            return
        ts = raw_us_to_ns([e.ts for e in events])
        dur = raw_us_to_ns([e.dur for e in events])
        dur = np.where(dur == MISSING_NS, 0, np.maximum(dur, 0))
        timed = ts != MISSING_NS
        end = ts + dur
        first = np.searchsorted(hi, ts, side="right")  # windows ending after the event starts
        last = np.searchsorted(lo, np.maximum(end, ts + 1), side="left") - 1  # windows starting before it ends
        for i, ev in enumerate(events):
            if not len(ev.ts) or not len(ev.dur):  # an absent time must stay valid JSON
                ev = msgspec.structs.replace(
                    ev, ts=ev.ts if len(ev.ts) else _NULL, dur=ev.dur if len(ev.dur) else _NULL
                )
            if not timed[i] or ev.ph == "M":
                common.append(_ENCODER.encode(ev))
                continue
            if first[i] > last[i]:
                continue  # before the first window or after the last: no step sees it
            data = _ENCODER.encode(ev)
            for w in range(first[i], last[i] + 1):
                buffers[w].append(data)
            pending += len(data) * (last[i] - first[i] + 1)
        if pending >= FLUSH_BYTES:
            flush()

    header, stats = read_trace_events(path, on_batch, on_progress)
    flush()
    prefix = _ENCODER.encode(header)[:-1] + (b"," if header else b"") + b'"traceEvents":['
    _write_events(windows[0].common, common, {b"mlprof_prefix": prefix})
    return header, stats


def _write_events(target: Path, events: list[bytes], metadata: dict[bytes, bytes] | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"event": pa.array(events, type=pa.binary())})
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, target, compression="zstd")


def _read_events(source: Path) -> tuple[list[bytes], dict[bytes, bytes]]:
    import pyarrow.parquet as pq

    files = sorted(source.iterdir()) if source.is_dir() else [source] if source.exists() else []
    events: list[bytes] = []
    metadata: dict[bytes, bytes] = {}
    for f in files:
        table = pq.read_table(f)
        metadata.update(table.schema.metadata or {})
        events.extend(table.column("event").to_pylist())
    return events, metadata


def window_document(window: StepWindow) -> bytes:
    """The window's spill as one Kineto JSON document: header, metadata events, then its own events."""
    shared, metadata = _read_events(window.common)
    own, _ = _read_events(window.path)
    return b"".join((metadata[b"mlprof_prefix"], b",".join(shared + own), b"]}"))


def _analyse_window(window: StepWindow, options: TaskOptions) -> WindowResult:
    from mlprof.trace.loader import load_trace_bytes

    trace = load_trace_bytes(window_document(window), window.path)
    own = dataclasses.replace(options, steps_spec=str(window.step))
    partial = reduce_trace(trace, own)
    gpu = trace.gpu
    clipped = gpu[(gpu["end"] > window.start) & (gpu["ts"] < window.end)].copy()
    clipped["ts"] = clipped["ts"].clip(lower=window.start)
    clipped["end"] = clipped["end"].clip(upper=window.end)
    temporal = temporal_breakdown(msgspec.structs.replace(trace, gpu=clipped.reset_index(drop=True)))
    return WindowResult(partial=partial, temporal=temporal)


def _without(config: RuleConfig, rule_ids: tuple[str, ...]) -> RuleConfig:
    return msgspec.structs.replace(config, disabled=set(config.disabled) | set(rule_ids))


def _merge(
    path: Path,
    results: list[WindowResult],
    windows: list[StepWindow],
    config: RuleConfig,
    header: dict[str, Any],
    json_bytes: int,
    file_bytes: int,
    events: int,
) -> Analysis:
    parts = [r.partial for r in results]
    first = parts[0].analysis
    meta = copy.deepcopy(first.trace.meta)
    meta.path, meta.json_bytes, meta.file_bytes, meta.num_events = str(path), json_bytes, file_bytes, events
    meta.notes = sorted({n for p in parts for n in p.analysis.trace.meta.notes})
    assert isinstance(first.trace, ReducedRank)
    trace = first.trace.with_meta(meta)
    steps = pd.concat([p.analysis.steps for p in parts], ignore_index=True)
    causes = pd.concat([p.analysis.causes for p in parts], ignore_index=True)
    t = [r.temporal for r in results]
    temporal = TemporalBreakdown(*(sum(getattr(x, name) for x in t) for name in TemporalBreakdown.__struct_fields__))
    notes = sorted({n for p in parts for n in p.analysis.notes})
    notes.append(
        f"analysed one step at a time (--low-memory, {len(windows)} step windows); MEM001 needs all steps at "
        "once and was not run; the trace-level split covers the steps only"
    )
    ra = RankAnalysis(trace=trace, steps=steps, whole_trace=None, temporal=temporal, notes=notes, causes=causes)
    ra.span_override = ra.window_ns = (min(w.start for w in windows), max(w.end for w in windows))
    ra.name_views = _merge_name_views([p.analysis.name_views for p in parts])
    ctx = RankContext(ra, causes)
    for p in parts:
        for rule_id, text in p.verdicts.items():
            ctx.verdicts.setdefault(rule_id, text)
    for rule_id in SKIPPED_RULES:
        ctx.verdicts[rule_id] = "not run with --low-memory (a trend over steps needs all steps at once)"
    per_window = [_window_findings(p, config) for p in parts]
    findings = _merge_windows(per_window, [w.step for w in windows], ctx.step_ns)
    diagnosis = diagnose([ctx], config, None, meta.world_size, per_rank=[findings])
    ra.findings = diagnosis.findings
    ra.diagnosis = diagnosis
    del header
    return Analysis(path=str(path), ranks=[ra], diagnosis=diagnosis)


def _window_findings(p: RankPartial, config: RuleConfig) -> list[Finding]:
    """The window's own findings plus the communication rules (run here: no other rank to wait for)."""
    ctx = RankContext(p.analysis, p.analysis.causes if p.analysis.causes is not None else pd.DataFrame())
    return [*p.findings, *run_rank(ctx, config, matched=True)]


def _merge_windows(per_window: list[list[Finding]], steps: list[int], step_ns: float) -> list[Finding]:
    """One finding per rule: time lost = mean over steps (0 where it did not fire), evidence of the worst step."""
    n = len(per_window)
    groups: dict[str, list[tuple[int, Finding]]] = {}
    for step, findings in zip(steps, per_window, strict=True):
        for f in findings:
            groups.setdefault(f.rule, []).append((step, f))
    order = {r.id: i for i, r in enumerate(TRACE_RULES)}
    out: list[Finding] = []
    for rule_id in sorted(groups, key=lambda r: order.get(r, len(order))):
        group = groups[rule_id]
        worst_step, worst = max(group, key=lambda sf: (sf[1].time_lost_ns_per_step, -sf[0]))
        job = copy.deepcopy(worst)
        job.step_ns = step_ns
        job.time_lost_ns_per_step = sum(f.time_lost_ns_per_step for _, f in group) / n
        job.claimed = {k: sum(f.claimed.get(k, 0.0) for _, f in group) / n for k in worst.claimed}
        job.steps = sorted({s for _, f in group for s in f.steps} | {s for s, _ in group})
        ranges = [r for _, f in group for r in f.time_ranges_ns]
        if ranges:
            job.time_ranges_ns = top_ranges(np.array([a for a, _ in ranges]), np.array([b for _, b in ranges]))
        largest = sorted(group, key=lambda sf: (-sf[1].time_lost_ns_per_step, sf[0]))[:16]
        job.evidence = {
            "steps_with_finding": f"{len(group)} of {n}",
            "time_lost_ms_by_step": {str(s): ms(f.time_lost_ns_per_step) for s, f in largest},
            "worst_step": worst_step,
            "worst_step_evidence": worst.evidence,
        }
        job.title = (
            f"{worst.title} [worst step {worst_step}; {len(group)} of {n} steps, "
            f"mean {job.time_lost_ns_per_step / NS_PER_MS:.3f} ms/step]"
        )
        out.append(job)
    return out


def _merge_name_views(
    views: list[tuple[pd.DataFrame, pd.DataFrame] | None],
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Kernels and ops by name over every step: each window measured its own step, so the totals add up;
    a name's other columns come from the window with the most time in it."""
    if not views or any(v is None for v in views):
        return None
    out = []
    for i, sums in ((0, ["count", "total_ns"]), (1, ["count", "total_ns", "self_ns", "device_ns"])):
        every = pd.concat([v[i] for v in views if v is not None], ignore_index=True)
        if len(every) == 0:
            out.append(every)
            continue
        totals = every.groupby("name", sort=False)[sums].sum()
        rest = [c for c in every.columns if c not in sums and c != "name"]
        firsts = every.sort_values("total_ns", ascending=False, kind="stable").drop_duplicates("name")
        merged = totals.join(firsts.set_index("name")[rest]).reset_index()
        out.append(merged[list(every.columns)].sort_values("total_ns", ascending=False, kind="stable"))
    return out[0].reset_index(drop=True), out[1].reset_index(drop=True)
