"""What a rule is and what it returns.

A rule judges measurements; it never measures. Each rule owns a set of *causes*
(:mod:`mlprof.analyzers.causes`) and no two rules own the same cause, so the time a
finding says it can save is never claimed twice. A finding's expected speedup is
``step / (step - time_lost)``: the time on the step's critical path that the fix
removes, measured in this trace, not a multiplier from a table.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar, Generic

import numpy as np
import pandas as pd

from mlprof.analyzers.gpu_specs import GpuSpec, spec_for
from mlprof.results import NS_PER_MS as NS_PER_MS
from mlprof.results import Finding as Finding
from mlprof.results import RankAnalysis, ReducedRank, analysed_windows
from mlprof.results import plain as plain
from mlprof.rules.spec import COMMON_OPTIONS as COMMON_OPTIONS
from mlprof.rules.spec import NoOptions as NoOptions
from mlprof.rules.spec import Option as Option
from mlprof.rules.spec import OptionsT as OptionsT
from mlprof.rules.spec import RuleDoc as RuleDoc
from mlprof.rules.spec import RuleOptions as RuleOptions
from mlprof.rules.spec import common as common
from mlprof.rules.spec import option as option
from mlprof.trace.model import Trace

CATEGORIES: tuple[str, ...] = (
    "data_starvation",
    "sync_point",
    "unfused_kernels",
    "comm_not_overlapped",
    "memory_leak",
    "precision",
    "allocator",
    "host_overhead",
    "attention",
    "compile",
    "data_parallel",
    "shape_alignment",
    "small_batch",
    "startup",
)
"""Finding categories. The first five are the pathologies every report knows by these names."""

SEVERITIES = ("critical", "warning", "info")


class RankContext:
    """What a rule may read about one rank: the analysis plus measurements computed on first use."""

    def __init__(self, analysis: RankAnalysis, causes: pd.DataFrame) -> None:
        self.analysis = analysis
        self.tables: Trace | ReducedRank = analysis.trace
        """What every rank has, in memory or reduced by a per-rank task: ``meta``, ``gpu`` (at least the
        communication kernels), ``collectives``, ``memory``. Job-scope rules read only these."""
        self.causes = causes
        """ns per cause per analysed window (steps, or the whole trace as one window)."""
        self.verdicts: dict[str, str] = {}
        """Rules that looked and found nothing may say why here (e.g. the memory trend they measured)."""

    @property
    def trace(self) -> Trace:
        """The rank's full trace (rank-scope rules run where it is read)."""
        return self.analysis.full_trace

    @property
    def rank(self) -> int:
        return self.analysis.rank

    @cached_property
    def windows(self) -> pd.DataFrame:
        """step, ts, end of each analysed window (one synthetic window -1 when there are no steps)."""
        starts, ends = analysed_windows(self.analysis)
        steps = self.analysis.steps
        numbers = steps["step"].to_numpy() if len(steps) else np.array([-1])
        return pd.DataFrame({"step": numbers, "ts": starts, "end": ends})

    @cached_property
    def step_ns(self) -> float:
        w = self.windows
        return float((w["end"].to_numpy() - w["ts"].to_numpy()).mean()) if len(w) else 0.0

    @cached_property
    def _cause_matrix(self) -> tuple[np.ndarray, dict[str, int]]:
        """The causes table as one array and a column index: rules ask for sums of a few causes many times."""
        return self.causes.to_numpy(), {str(c): i for i, c in enumerate(self.causes.columns)}

    def _cause_sum(self, causes: tuple[str, ...]) -> np.ndarray:
        """Per-window sum of the given causes, as ``causes[list(causes)].sum(axis=1)``."""
        matrix, index = self._cause_matrix
        try:
            cols = [index[c] for c in causes]
        except KeyError:
            # Unknown cause: let pandas raise the same KeyError it always did.
            return self.causes[list(causes)].sum(axis=1).to_numpy()
        return matrix[:, cols].sum(axis=1)

    def per_step(self, *causes: str) -> float:
        """Mean ns per analysed window of the given causes."""
        if len(self.causes) == 0:
            return 0.0
        return float(self._cause_sum(causes).mean())

    def steps_with(self, *causes: str, min_share: float = 0.0) -> list[int]:
        if len(self.causes) == 0:
            return []
        w = self.windows
        dur = (w["end"] - w["ts"]).to_numpy()
        share = self._cause_sum(causes) / np.maximum(dur, 1)
        return [int(s) for s in w["step"].to_numpy()[share > min_share] if s >= 0]

    @property
    def has_device(self) -> bool:
        return self.analysis.has_device_activity

    @cached_property
    def gpu_spec(self) -> GpuSpec | None:
        return spec_for(self.tables.meta.devices)

    def in_windows(self, ts: np.ndarray) -> np.ndarray:
        """Which times fall inside an analysed window."""
        w = self.windows
        starts = w["ts"].to_numpy(np.int64)
        ends = w["end"].to_numpy(np.int64)
        pos = np.searchsorted(starts, ts, side="right") - 1
        ok = pos >= 0
        ok[ok] &= ts[ok] < ends[pos[ok]]
        return ok

    @property
    def has_stacks(self) -> bool:
        host = self.trace.host
        return bool((host["cat"] == "python_function").any()) or bool(host["call_stack"].notna().any())

    @property
    def n_windows(self) -> int:
        return len(self.windows)


class Rule(Generic[OptionsT]):
    """Base class: subclasses set the class attributes and implement :meth:`check`.

    ``Rule[XOptions]``: the rule's thresholds are an ``XOptions`` (a :class:`RuleOptions`), set as
    :attr:`options_class`; :meth:`check` receives one built from the defaults and the team's config.
    """

    id: ClassVar[str]
    name: ClassVar[str]
    category: ClassVar[str]
    summary: ClassVar[str]
    claims: ClassVar[tuple[str, ...]] = ()
    """Causes this rule may claim time from (exclusive across rules)."""
    options_class: ClassVar[type[RuleOptions]] = NoOptions
    """The rule's thresholds (a :class:`RuleOptions` subclass); overridable in ``[tool.mlprof.rules.ID]``."""
    needs_device: ClassVar[bool] = True
    scope: ClassVar[str] = "rank"
    """``rank``: judged on each rank alone by :meth:`check`, where its trace is read; ``job``: judged once on
    the whole job by ``check_job`` (it reads the cross-rank view, not one rank)."""
    needs_other_ranks: ClassVar[bool] = False
    """A rank rule whose causes are only final once the ranks' collectives are matched (exposed communication
    split into waiting and transfer): it runs after the match, reading only what every rank keeps
    (:attr:`RankContext.tables`), so a job analysed by per-rank tasks gives the same findings."""
    overlaps: ClassVar[tuple[str, ...]] = ()
    """Rules whose claimed time includes this rule's: the engine takes this rule's time out of theirs
    (:meth:`carve_out`), so the plan counts it once (STRAG001's lateness is part of COMM002's wait)."""
    needs_all_steps: ClassVar[bool] = False
    """Judges a trend over all analysed steps at once: not run one step window at a time (--low-memory)."""
    doc: ClassVar[RuleDoc]

    def check(self, ctx: RankContext, opts: OptionsT) -> list[Finding]:
        raise NotImplementedError

    def check_job(
        self, contexts: list[RankContext], skew: Any, step_ns: float, opts: OptionsT
    ) -> tuple[list[Finding], Any]:
        """A job-scope rule (:attr:`scope` ``job``): its findings over the whole job and the cross-rank view."""
        raise NotImplementedError

    def merge_key(self, finding: Finding) -> str:
        """Findings of this rule with the same key are one job finding when ranks are merged
        (and are matched by ``mlprof compare``); e.g. one per device for a memory leak."""
        return ""

    def merged_title(self, job: Finding, worst: Finding, ranks_with: int, ranks: int, skew: Any) -> str:
        """The title of a finding merged over ``ranks`` ranks (``job`` holds the mean time lost)."""
        mean = ms(job.time_lost_ns_per_step)
        return f"{worst.title} [rank {worst.ranks[0]}; {ranks_with} of {ranks} ranks, mean {mean} ms/step]"

    def carve_out(self, finding: Finding, carved_ns: float) -> Finding | None:
        """Take ``carved_ns`` per step of this rule's time out of ``finding`` (a rule in :attr:`overlaps`);
        None when nothing of it is left."""
        before = finding.time_lost_ns_per_step
        finding.time_lost_ns_per_step = max(before - carved_ns, 0.0)
        if before > 0:
            finding.claimed = {k: v * finding.time_lost_ns_per_step / before for k, v in finding.claimed.items()}
        finding.evidence[f"time_lost_ms_per_step_claimed_by_{self.id}"] = ms(min(carved_ns, before))
        return finding if finding.time_lost_ns_per_step > 0 else None

    def options(self) -> tuple[Option, ...]:
        """Each threshold's documentation and default, in declaration order."""
        return self.options_class.docs()

    @property
    def defaults(self) -> dict[str, float]:
        """The thresholds' defaults by name."""
        return self.options_class().as_dict()

    def finding(self, ctx: RankContext, **kwargs: Any) -> Finding:
        """A finding of this rule for one rank, with the rank's step time filled in."""
        kwargs.setdefault("step_ns", ctx.step_ns)
        kwargs.setdefault("ranks", [ctx.rank])
        return Finding(rule=self.id, name=self.name, category=self.category, **kwargs)


def ms(ns: float) -> float:
    return round(float(ns) / NS_PER_MS, 3)


def top_ranges(ts: np.ndarray, end: np.ndarray, n: int = 5) -> list[tuple[int, int]]:
    """The ``n`` longest intervals, in time order (where in the trace to look)."""
    if len(ts) == 0:
        return []
    idx = np.argsort(end - ts)[::-1][:n]
    idx = np.sort(idx)
    return [(int(ts[i]), int(end[i])) for i in idx]
