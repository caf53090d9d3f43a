"""One call from trace to results: the flow every front end (CLI, dashboard) uses.

``trace -> analyzers (measurements) -> rules (findings) -> ranking``. Reporters in
:mod:`mlprof.report` only format an :class:`Analysis`; they compute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlprof.analyzers.attribution import CATEGORIES, attribute_span, attribute_steps
from mlprof.analyzers.temporal import TemporalBreakdown, temporal_breakdown
from mlprof.errors import UsageError
from mlprof.trace.model import Trace


@dataclass
class RankAnalysis:
    """Measurements and findings for one rank's trace."""

    trace: Trace
    steps: pd.DataFrame
    """Per-step attribution (ns), see :func:`mlprof.analyzers.attribution.attribute_steps`."""
    whole_trace: dict[str, int] | None
    """Attribution of the whole trace span when no steps were found."""
    temporal: TemporalBreakdown
    findings: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.trace.meta.rank if self.trace.meta.rank is not None else 0

    def category_totals(self) -> dict[str, int]:
        """ns per category over the analysed steps (or the whole trace)."""
        if len(self.steps):
            return {c: int(self.steps[c].sum()) for c in CATEGORIES}
        return dict(self.whole_trace or dict.fromkeys(CATEGORIES, 0))

    @property
    def has_device_activity(self) -> bool:
        return self.trace.has_device_activity


@dataclass
class Analysis:
    """A job: one or more ranks."""

    path: str
    ranks: list[RankAnalysis]
    step_filter: str | None = None

    @property
    def has_device_activity(self) -> bool:
        return any(ra.has_device_activity for ra in self.ranks)

    def job_steps(self) -> pd.DataFrame:
        """The job's per-step view: each step's categories averaged over the ranks that have it."""
        frames = [ra.steps for ra in self.ranks if len(ra.steps)]
        if len(frames) <= 1:
            return frames[0] if frames else self.ranks[0].steps
        stacked = pd.concat(frames, ignore_index=True)
        grouped = stacked.groupby("step", sort=True)
        mean = grouped[["dur", *CATEGORIES]].mean().round().astype(np.int64)
        mean.insert(0, "ts", grouped["ts"].min())
        return mean.reset_index()

    def category_totals(self) -> dict[str, int]:
        """ns per category over the job's steps (mean over ranks), or the mean whole-trace split."""
        if len(self.ranks) == 1:
            return self.ranks[0].category_totals()
        steps = self.job_steps()
        if len(steps):
            return {c: int(steps[c].sum()) for c in CATEGORIES}
        per_rank = [ra.category_totals() for ra in self.ranks]
        return {c: round(sum(t[c] for t in per_rank) / len(per_rank)) for c in CATEGORIES}


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


def analyze_trace(trace: Trace, steps_spec: str | None = None) -> RankAnalysis:
    steps = select_steps(trace.steps, steps_spec)
    attribution = attribute_steps(trace, steps)
    whole = None
    notes: list[str] = []
    if len(attribution) == 0:
        span = _trace_span(trace)
        whole = attribute_span(trace, *span) if span[1] > span[0] else dict.fromkeys(CATEGORIES, 0)
        notes.append(
            "no step markers found (no ProfilerStep#, DataLoader __next__ or Optimizer.step ranges); "
            "the whole trace is analysed as one window. Call prof.step() each iteration, or pass --step-marker."
        )
    elif trace.meta.step_source != "ProfilerStep":
        notes.append(f"no ProfilerStep markers; steps were found from {trace.meta.step_source}")
    if not trace.has_device_activity:
        notes.append("no device (GPU) activity was recorded in this trace: only host-side figures are meaningful")
    return RankAnalysis(
        trace=trace,
        steps=attribution,
        whole_trace=whole,
        temporal=temporal_breakdown(trace),
        notes=notes,
    )


def _trace_span(trace: Trace) -> tuple[int, int]:
    starts = [int(t["ts"].min()) for t in (trace.host, trace.gpu, trace.runtime) if len(t)]
    ends = [int(t["end"].max()) for t in (trace.host, trace.gpu, trace.runtime) if len(t)]
    return (min(starts), max(ends)) if starts else (0, 0)


def analyze_job(traces: list[Trace], path: str, steps_spec: str | None = None) -> Analysis:
    return Analysis(path=path, ranks=[analyze_trace(t, steps_spec) for t in traces], step_filter=steps_spec)
