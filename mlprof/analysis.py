"""One call from trace to results: the flow every front end (CLI, dashboard) uses.

``trace -> analyzers (measurements) -> rules (findings) -> ranking``. Reporters in
:mod:`mlprof.report` only format an :class:`Analysis`; they compute nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlprof.analyzers.attribution import CATEGORIES, attribute_span, attribute_steps
from mlprof.analyzers.causes import attribute_causes
from mlprof.analyzers.counter_timeline import memory_trends
from mlprof.analyzers.counters import counters_per_step, summarize_devices
from mlprof.analyzers.name_totals import name_views
from mlprof.analyzers.rank_skew import RankSkew, rank_skew
from mlprof.analyzers.steady_state import steady_state
from mlprof.analyzers.temporal import temporal_breakdown
from mlprof.errors import UsageError
from mlprof.results import Analysis as Analysis
from mlprof.results import CounterAnalysis as CounterAnalysis
from mlprof.results import RankAnalysis as RankAnalysis
from mlprof.results import analysed_windows as analysed_windows
from mlprof.results import analysis_window, trace_span
from mlprof.rules.base import RankContext
from mlprof.rules.config import RuleConfig
from mlprof.rules.counter_base import CounterContext
from mlprof.rules.engine import Diagnosis, diagnose, diagnose_counters
from mlprof.rules.memory_growth import counter_memory_verdict
from mlprof.trace.memory import release_freed_memory
from mlprof.trace.model import Trace


def select_steps(steps: pd.DataFrame, spec: str | None) -> pd.DataFrame:
    """Keep the steps named by ``spec``: ``"16"``, ``"16-18"``, ``"16,18"``, ``"17-"``."""
    if spec is None:
        return steps
    if len(steps) == 0:
        raise UsageError(f"--steps {spec}: the trace has no steps to select (see the step_source note)")

    wanted = np.zeros(len(steps), dtype=bool)
    numbers = steps["step"].to_numpy()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_text, hi_text = part.split("-", 1)
                lo = int(lo_text) if lo_text else numbers.min()
                hi = int(hi_text) if hi_text else numbers.max()
                wanted |= (numbers >= lo) & (numbers <= hi)
            else:
                wanted |= numbers == int(part)
        except ValueError:
            raise UsageError(f"--steps: cannot read {part!r}; use e.g. 16, 16-18, 16,18 or 17-") from None
    if not wanted.any():
        raise UsageError(f"--steps {spec}: no such step; the trace has steps {numbers.min()}..{numbers.max()}")
    return steps[wanted].reset_index(drop=True)


def analyze_trace(trace: Trace, steps_spec: str | None = None, config: RuleConfig | None = None) -> RankAnalysis:
    """Measure one rank and run the rules on it alone."""
    ra = measure_trace(trace, steps_spec)
    diagnosis = _diagnose([ra], None, config or RuleConfig())
    ra.findings = diagnosis.findings
    ra.diagnosis = diagnosis
    return ra


def measure_trace(trace: Trace, steps_spec: str | None = None) -> RankAnalysis:
    """The measurements of one rank (attribution, temporal breakdown), no rules.

    Warm-up, outlier and partial steps are set aside first (:mod:`mlprof.analyzers.steady_state`),
    so every per-step cost is a steady-state one; ``steps_spec`` (``--steps``) overrides that.
    """
    steps = select_steps(trace.steps, steps_spec)
    steady = steady_state(steps, trace, overridden=steps_spec is not None)
    steps = steady.select(steps)
    attribution = attribute_steps(trace, steps)
    whole = None
    notes: list[str] = []
    if len(attribution) == 0:
        span = analysis_window(trace)
        whole = attribute_span(trace, *span) if span[1] > span[0] else dict.fromkeys(CATEGORIES, 0)
        notes.append(
            "no step markers found (no ProfilerStep#, DataLoader __next__ or Optimizer.step ranges); "
            + (
                "the span from the first to the last GPU event is analysed as one window"
                if trace.has_device_activity
                else "the whole trace is analysed as one window"
            )
            + ". Call prof.step() each iteration, or pass --step-marker."
        )
    elif trace.meta.step_source != "ProfilerStep":
        notes.append(f"no ProfilerStep markers; steps were found from {trace.meta.step_source}")
    if not trace.has_device_activity:
        notes.append("no device (GPU) activity was recorded in this trace: only host-side figures are meaningful")
    temporal = temporal_breakdown(trace)
    release_freed_memory()  # the attribution's temporaries (see mlprof.trace.memory)
    return RankAnalysis(
        trace=trace,
        steps=attribution,
        whole_trace=whole,
        temporal=temporal,
        notes=notes,
        span_override=trace_span(trace),
        window_ns=analysis_window(trace),
        steady=steady,
    )


def analyze_job(
    traces: list[Trace],
    path: str,
    steps_spec: str | None = None,
    config: RuleConfig | None = None,
    *,
    counters: pd.DataFrame | None = None,
    counter_paths: list[str] | None = None,
) -> Analysis:
    """Measure every rank, match collectives across ranks, and run the rules on the job.

    ``counters`` (a table from :func:`mlprof.counters.load_counters`, ``attrs["time_base"]`` set)
    adds the counter rules and, when the clocks agree, a join of the samples to the steps.
    """
    config = config or RuleConfig()
    ranks = [measure_trace(t, steps_spec) for t in traces]
    skew = rank_skew(traces)
    diagnosis = _diagnose(ranks, skew, config, views=True)
    for ra, findings in zip(ranks, diagnosis.per_rank, strict=True):
        ra.findings = sorted(findings, key=lambda f: -f.expected_speedup)
    analysis = Analysis(path=path, ranks=ranks, step_filter=steps_spec, diagnosis=diagnosis, skew=skew)
    if counters is not None:
        attach_counters(analysis, counters, counter_paths or [], config)
    return analysis


def attach_counters(analysis: Analysis, counters: pd.DataFrame, paths: list[str], config: RuleConfig) -> None:
    """Add GPU counters to a job's analysis: the counter rules, the join to the steps, the memory verdict.

    The same for a job analysed in memory and one combined from per-rank engine tasks.
    """
    ca = analyze_counters(counters, paths, config)
    _align(analysis, ca)
    analysis.counters = counters
    analysis.counter_summary = ca
    has_memory = bool((counters["metric"] == "mem_used_bytes").any())
    verdict = counter_memory_verdict(ca.diagnosis, ca.trace_window_memory) if has_memory else None
    if verdict and analysis.diagnosis is not None:
        old = analysis.diagnosis.verdicts.get("MEM001")
        analysis.diagnosis.verdicts["MEM001"] = f"{old} | {verdict}" if old else verdict


EPOCH_MIN_NS = 10**18
"""Times at or after 2001-09-09 in ns are taken as Unix-epoch times (traces and counters alike)."""


def analyze_counters(counters: pd.DataFrame, paths: list[str], config: RuleConfig | None = None) -> CounterAnalysis:
    """Summarise a counters table per device and run the counter rules on it."""
    time_base = str(counters.attrs.get("time_base", "relative"))
    fmt = counters.attrs.get("format")
    formats = list(fmt) if isinstance(fmt, list) else [str(fmt)] if fmt else []
    notes = [str(n) for n in counters.attrs.get("notes", [])]
    if time_base == "relative":
        notes.append("the counters carry no wall clock: times are from the start of the recording")
    elif time_base.startswith("epoch ("):
        notes.append("the counter timestamps have no time zone and were read as UTC")
    diagnosis = diagnose_counters(CounterContext(counters, time_base), config or RuleConfig())
    return CounterAnalysis(
        paths=paths,
        counters=counters,
        time_base=time_base,
        formats=formats,
        summaries=summarize_devices(counters),
        diagnosis=diagnosis,
        notes=notes,
    )


def _align(analysis: Analysis, ca: CounterAnalysis) -> None:
    """Join the counters to the job's steps when both are on the epoch clock and overlap; else say why not."""
    steps = analysis.job_steps()
    if len(steps):
        windows = pd.DataFrame(
            {"step": steps["step"].to_numpy(), "ts": steps["ts"].to_numpy(np.int64)},
        )
        windows["end"] = windows["ts"] + steps["dur"].to_numpy(np.int64)
    else:
        lo, hi = min(ra.span[0] for ra in analysis.ranks), max(ra.span[1] for ra in analysis.ranks)
        windows = pd.DataFrame({"step": [-1], "ts": [lo], "end": [hi]})
    t_lo, t_hi = int(windows["ts"].min()), int(windows["end"].max())
    c_lo, c_hi = ca.span_ns
    if not ca.time_base.startswith("epoch"):
        ca.notes.append(
            f"counters not joined to steps: their time base is '{ca.time_base}' (no wall clock), the trace's is "
            "the epoch; record counters with timestamps (nvidia-smi --query-gpu=timestamp,..., the mlprof collector)"
        )
        return
    if t_lo < EPOCH_MIN_NS:
        ca.notes.append("counters not joined to steps: the trace's times are not on the Unix epoch clock")
        return
    if c_hi < t_lo or c_lo >= t_hi:
        gap_s = (t_lo - c_hi if c_hi < t_lo else c_lo - t_hi) / 1e9
        side = "before" if c_hi < t_lo else "after"
        ca.notes.append(
            f"counters not joined to steps: they end {gap_s:,.1f} s {side} the trace's steps "
            "(different runs, or clocks that disagree)"
        )
        return
    ca.aligned = True
    ca.per_step = counters_per_step(ca.counters, windows)
    ca.during_trace = counters_per_step(ca.counters, pd.DataFrame({"step": [-1], "ts": [t_lo], "end": [t_hi]}))
    ca.trace_window_memory = memory_trends(ca.counters, t_lo, t_hi)
    inside = int(((ca.counters["ts"] >= t_lo) & (ca.counters["ts"] < t_hi)).sum())
    ca.notes.append(f"counters joined to {len(windows)} step window(s): {inside} samples fall inside the trace's steps")


def _diagnose(
    ranks: list[RankAnalysis], skew: RankSkew | None, config: RuleConfig, *, views: bool = False
) -> Diagnosis:
    """The causes, the rules and the what-if replay of the ranks; with ``views``, each rank's name views first.

    The name views (independent of everything after the measurement) are measured in a helper process while
    this one measures the causes and builds the replay graphs, and the replays' checks and pacing probes
    (independent of the rules) while it runs the rules, when a core is idle (:mod:`mlprof.whatif.helper`);
    what a helper does not do runs here after.
    """
    from functools import partial

    from mlprof.analyzers.rank_skew import comm_signature
    from mlprof.whatif.graph import build_graph
    from mlprof.whatif.helper import SharedTasks
    from mlprof.whatif.job import predict_job
    from mlprof.whatif.replay import ReplayWork

    n_ops = sum(len(ra.full_trace.runtime) + len(ra.full_trace.gpu) for ra in ranks)  # about the graphs' size
    # The views before the causes' and the graphs' temporaries: measured last, theirs set the peak memory of
    # analyze on a 217 MB trace; here (no helper) they run first, as before.
    view_tasks = [partial(name_views, ra) for ra in ranks] if views else []
    with SharedTasks(view_tasks, n_ops=n_ops, at_least=1) as measured_views:
        if view_tasks and not measured_views.started:
            for ra, measured in zip(ranks, measured_views.results(), strict=True):
                ra.name_views = measured
        contexts = []
        works: list[ReplayWork] = []
        for ra in ranks:
            starts, ends = analysed_windows(ra)
            wait = skew.wait_intervals.get(ra.rank) if skew is not None else None
            ra.causes = attribute_causes(ra.full_trace, starts, ends, comm_wait=wait)
            contexts.append(RankContext(ra, ra.causes))
            works.append(ReplayWork(build_graph(ra.full_trace), ra.rank, starts, ends, ra.steps))
            release_freed_memory()  # the graph build's temporaries (see mlprof.trace.memory)
        if measured_views.started:
            for ra, measured in zip(ranks, measured_views.results(), strict=True):
                ra.name_views = measured
    world = ranks[0].trace.meta.world_size if ranks else None
    # The replays' checks and pacing probes (independent of the rules) run in a helper process while this one
    # runs the rules, when a core is idle (mlprof.whatif.helper); what the helper does not do runs here after.
    tasks = [task for work in works for task in work.tasks]
    with SharedTasks(tasks, n_ops=sum(work.graph.n_host + work.graph.n_gpu for work in works)) as shared:
        diagnosis = diagnose(contexts, config, skew, world)
        release_freed_memory()
        specs = [c.gpu_spec for c in contexts]
        signatures = [comm_signature(ra.full_trace) for ra in ranks] if len(ranks) > 1 else []  # (a job's only)
        results = shared.results()
    bounds = np.cumsum([0, *(len(work.tasks) for work in works)])
    replays = [work.finish(results[a:b]) for work, a, b in zip(works, bounds[:-1], bounds[1:], strict=True)]
    diagnosis.whatif = predict_job(diagnosis, replays, signatures, skew, specs, config)
    release_freed_memory()  # the fixed graphs' and the plan's replays (the report's views come next)
    return diagnosis
