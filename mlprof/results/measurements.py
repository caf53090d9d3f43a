"""What the analysis measured: per rank, per job, for GPU counters; and the one window definition.

These are results, not computations: :mod:`mlprof.analysis` (in memory), the per-rank
engine tasks and the low-memory path fill them; rules read them through
:class:`mlprof.rules.base.RankContext`; reports render them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pandas as pd

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.analyzers.counter_timeline import MemoryTrend
from mlprof.analyzers.counters import DeviceCounterSummary
from mlprof.analyzers.name_totals import NameTotals
from mlprof.analyzers.rank_skew import RankSkew
from mlprof.analyzers.steady_state import SteadyState
from mlprof.analyzers.temporal import TemporalBreakdown
from mlprof.analyzers.windows import analysis_window, step_windows, trace_span
from mlprof.results.findings import CounterDiagnosis, Diagnosis, Finding
from mlprof.results.spill import SpilledRun, spill_run
from mlprof.trace.model import Trace, TraceMeta


class ReducedRank:
    """What a per-rank task keeps of a rank's trace for the job: its own type, not a trace with emptied tables.

    The cross-rank work on the client reads only these: the metadata, the communication
    kernels and collectives (matching collectives, COMM001/COMM002), the raw step table,
    and at most one allocator event (whether the trace had any, and one with ``Total
    Allocated``; all the job-level advice reads). Anything else needs the full trace
    (:attr:`RankAnalysis.full_trace`).

    A job's client holds one per rank: :meth:`pack` keeps the four tables as compressed
    pickles (~4 KB instead of ~35 KB of small DataFrames, mostly pandas' per-column overhead)
    in the process's anonymous spill file (:mod:`mlprof.results.spill`; only offsets stay in
    memory), each read back when asked for; the last rank's tables read are kept, as the client
    reads one rank at a time.
    """

    def __init__(
        self,
        meta: TraceMeta,
        gpu: pd.DataFrame,
        collectives: pd.DataFrame,
        memory: pd.DataFrame,
        steps: pd.DataFrame,
        device_activity: bool,
    ) -> None:
        self.meta = meta
        self.device_activity = device_activity
        """Whether the full trace had device activity (``gpu`` here holds only communication kernels)."""
        self._tables: tuple[pd.DataFrame, ...] | None = (gpu, collectives, memory, steps)
        self._packed: SpilledRun | None = None

    def with_meta(self, meta: TraceMeta) -> ReducedRank:
        """The same tables with other metadata."""
        out = copy.copy(self)
        out.meta = meta
        return out

    def pack(self) -> None:
        """Hold the tables compressed in the spill file, each on its own (read back on use; they do not change)."""
        if self._tables is not None:
            self._packed = spill_run(self._tables)
            self._tables = None

    def _get(self, i: int) -> pd.DataFrame:
        if self._tables is not None:
            return self._tables[i]
        assert self._packed is not None
        global _LAST_UNPACKED
        if _LAST_UNPACKED is None or _LAST_UNPACKED[0] is not self:
            _LAST_UNPACKED = (self, {})
        read = _LAST_UNPACKED[1]
        if i not in read:
            read[i] = self._packed[i].load()
        return read[i]

    @property
    def gpu(self) -> pd.DataFrame:
        """Communication kernels only."""
        return self._get(0)

    @property
    def collectives(self) -> pd.DataFrame:
        return self._get(1)

    @property
    def memory(self) -> pd.DataFrame:
        return self._get(2)

    @property
    def steps(self) -> pd.DataFrame:
        return self._get(3)

    @property
    def has_device_activity(self) -> bool:
        return self.device_activity


_LAST_UNPACKED: tuple[ReducedRank, dict[int, pd.DataFrame]] | None = None
"""The packed rank read last and the tables read of it (one rank: reading rank after rank holds one rank's)."""


@dataclass
class RankAnalysis:
    """Measurements and findings for one rank's trace.

    ``trace`` is the full trace when the rank was read in this process, or a
    :class:`ReducedRank` when it was analysed by a per-rank task and only what the job
    needs came back; :attr:`full_trace` says which, and refuses the latter.
    """

    trace: Trace | ReducedRank
    steps: pd.DataFrame
    """Per-step attribution (ns), see :func:`mlprof.analyzers.attribution.attribute_steps`."""
    whole_trace: dict[str, int] | None
    """Attribution of the whole trace span when no steps were found."""
    temporal: TemporalBreakdown
    findings: list[Finding] = field(default_factory=list)
    """This rank's findings (ranked); the job's merged findings are on :class:`Analysis`."""
    notes: list[str] = field(default_factory=list)
    causes: pd.DataFrame | None = None
    """ns per cause per analysed window (see :mod:`mlprof.analyzers.causes`)."""
    diagnosis: Diagnosis | None = None
    """Set when this rank was analysed alone (:func:`analyze_trace`)."""
    span_override: tuple[int, int] | None = None
    """The span measured on the full trace (set when measured; a reduced rank cannot measure it again)."""
    window_ns: tuple[int, int] | None = None
    """The stepless window measured on the full trace (set by :func:`measure_trace`): a rank kept reduced
    holds only its communication kernels, so the window cannot be measured again from it."""
    name_views: tuple[pd.DataFrame, pd.DataFrame] | None = None
    """Kernels and CPU ops by name (:func:`mlprof.analyzers.name_totals.name_views`) measured on the full
    trace: by a per-rank task, for a rank kept reduced, and by :func:`mlprof.analysis.analyze_job` before
    the causes and the replay (when the heap is smallest); None: the report measures them."""
    steady: SteadyState | None = None
    """Which steps are steady state and which were set aside (warm-up, outlier, partial) and why;
    ``steps`` holds only the steady ones (:mod:`mlprof.analyzers.steady_state`)."""

    @property
    def span(self) -> tuple[int, int]:
        """First and last instant of host or device activity in the trace."""
        if self.span_override is not None:
            return self.span_override
        return trace_span(self.full_trace)

    @property
    def window(self) -> tuple[int, int]:
        """The one window analysed when the trace has no steps.

        With device activity it is the span from the first to the last GPU event: time
        before the first kernel (imports, model set-up) and after the last (teardown,
        export) is not steady state, and counting it would let a rule claim most of a
        trace that barely ran on the GPU. Without device activity, the whole host span.
        """
        if self.window_ns is not None:
            return self.window_ns
        return analysis_window(self.full_trace)

    @property
    def rank(self) -> int:
        return self.trace.meta.rank if self.trace.meta.rank is not None else 0

    def analysed_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and end (ns) of each analysed window (see :func:`analysed_windows`)."""
        return step_windows(self.steps, self.window)

    @property
    def meta(self) -> TraceMeta:
        return self.trace.meta

    @property
    def full_trace(self) -> Trace:
        """The rank's whole trace; an error for a rank analysed by a per-rank task (only its summary came back)."""
        if isinstance(self.trace, Trace):
            return self.trace
        raise TypeError(
            f"rank {self.rank}: only the reduced result of this rank is here (analysed by a per-rank task); "
            "analyse with keep_traces=True for the full trace"
        )

    def category_totals(self) -> dict[str, int]:
        """ns per category over the analysed steps (or the whole trace)."""
        if len(self.steps):
            return {c: int(self.steps[c].sum()) for c in CATEGORIES}
        return dict(self.whole_trace or dict.fromkeys(CATEGORIES, 0))

    @property
    def has_device_activity(self) -> bool:
        return self.trace.has_device_activity


class CounterAnalysis(msgspec.Struct):
    """GPU counters (nvidia-smi, NVML, DCGM): per-device summaries and the counter rules' findings.

    The result of ``mlprof analyze`` on a counters file alone, and the counters part of an
    :class:`Analysis` given ``--counters``; then ``aligned`` says whether the samples were
    joined to the trace's steps and ``notes`` why not.
    """

    paths: list[str]
    counters: pd.DataFrame
    time_base: str
    """``epoch``, ``epoch (naive local time read as UTC)``, ``relative`` or ``mixed``."""
    formats: list[str]
    summaries: list[DeviceCounterSummary]
    diagnosis: CounterDiagnosis
    notes: list[str] = msgspec.field(default_factory=list)
    aligned: bool = False
    """True when the samples were joined to the trace's steps (same epoch clock, overlapping times)."""
    per_step: pd.DataFrame | None = None
    """One row per (step, device) when aligned, see :func:`mlprof.analyzers.counters.counters_per_step`."""
    during_trace: pd.DataFrame | None = None
    """One row per device over the whole analysed trace window when aligned (same columns)."""
    trace_window_memory: list[MemoryTrend] = msgspec.field(default_factory=list)
    """Device memory trend over the analysed trace window, when aligned."""

    @property
    def findings(self) -> list[Finding]:
        return self.diagnosis.findings

    @property
    def span_ns(self) -> tuple[int, int]:
        ts = self.counters["ts"]
        return (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)


class Analysis(msgspec.Struct):
    """A job: one or more ranks."""

    path: str
    ranks: list[RankAnalysis]
    step_filter: str | None = None
    diagnosis: Diagnosis | None = None
    skew: RankSkew | None = None
    counters: pd.DataFrame | None = None
    """GPU counters given with ``--counters`` (table of :mod:`mlprof.counters.metrics`), if any."""
    counter_summary: CounterAnalysis | None = None
    """What the counters say, and whether they could be joined to the steps."""
    name_totals: tuple[NameTotals, NameTotals] | None = None
    """Kernel and op views summed over the ranks as a job's rank tasks returned (:class:`NameTotals`); None:
    the report sums each rank's :attr:`RankAnalysis.name_views` (or measures them on its full trace)."""

    @property
    def findings(self) -> list[Finding]:
        return self.diagnosis.findings if self.diagnosis is not None else []

    @property
    def has_device_activity(self) -> bool:
        return any(ra.has_device_activity for ra in self.ranks)

    def job_steps(self) -> pd.DataFrame:
        """The job's per-step view: each step's categories averaged over the ranks that have it."""
        from mlprof.results.job_frames import stacked_steps

        stacked = stacked_steps(self.ranks)  # a job's client holds the ranks' steps as one table
        if stacked is None:
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


def analysed_windows(ra: RankAnalysis) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (ns) of each window a rank is analysed over: its steps, else the one stepless window.

    The one definition every path uses (in memory, per-rank engine tasks, low memory, the
    rules' contexts, the by-name totals), so the causes, the rules' step time and the
    totals cut the same time. See :func:`mlprof.analyzers.windows.step_windows`.
    """
    return step_windows(ra.steps, ra.window)
