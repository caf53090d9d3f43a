"""What a rule is and what it returns.

A rule judges measurements; it never measures. Each rule owns a set of *causes*
(:mod:`mlprof.analyzers.causes`) and no two rules own the same cause, so the time a
finding says it can save is never claimed twice. A finding's expected speedup is
``step / (step - time_lost)``: the time on the step's critical path that the fix
removes, measured in this trace, not a multiplier from a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from mlprof.analyzers.gpu_specs import GpuSpec, spec_for

if TYPE_CHECKING:
    from mlprof.analysis import RankAnalysis

NS_PER_MS = 1_000_000

CATEGORIES: tuple[str, ...] = (
    "data_starvation",
    "sync_point",
    "unfused_kernels",
    "comm_not_overlapped",
    "memory_leak",
    "precision",
    "allocator",
    "host_overhead",
)
"""Finding categories. The first five are the pathologies every report knows by these names."""

SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class RuleDoc:
    """Linter-style documentation, printed by ``mlprof explain ID``."""

    what: str
    why: str
    detection: str
    fix: str
    """Prose plus a short code example (indented four spaces)."""
    false_alarms: str


@dataclass
class Finding:
    rule: str
    name: str
    category: str
    title: str
    time_lost_ns_per_step: float
    """Critical-path time per step that the fix removes (mean over analysed steps)."""
    step_ns: float
    """Mean step time the speedup is relative to."""
    confidence: str
    confidence_reason: str
    evidence: dict[str, Any]
    fix: str
    steps: list[int] = field(default_factory=list)
    time_ranges_ns: list[tuple[int, int]] = field(default_factory=list)
    claimed: dict[str, float] = field(default_factory=dict)
    """ns per step claimed from each cause."""
    ranks: list[int] = field(default_factory=list)
    record_next: list[str] = field(default_factory=list)
    severity_override: str | None = None

    @property
    def expected_speedup(self) -> float:
        remaining = self.step_ns - self.time_lost_ns_per_step
        if self.step_ns <= 0 or remaining <= 0:
            return 1.0
        return self.step_ns / remaining

    @property
    def severity(self) -> str:
        if self.severity_override is not None:
            return self.severity_override
        s = self.expected_speedup
        return "critical" if s >= 1.25 else "warning" if s >= 1.05 else "info"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "name": self.name,
            "category": self.category,
            "severity": self.severity,
            "title": self.title,
            "expected_speedup": round(self.expected_speedup, 4),
            "time_lost_ms_per_step": round(self.time_lost_ns_per_step / NS_PER_MS, 6),
            "step_ms": round(self.step_ns / NS_PER_MS, 6),
            "confidence": self.confidence,
            "confidence_reason": self.confidence_reason,
            "ranks": self.ranks,
            "steps": self.steps,
            "time_ranges_ns": [[int(a), int(b)] for a, b in self.time_ranges_ns],
            "claimed_ms_per_step": {k: round(v / NS_PER_MS, 6) for k, v in self.claimed.items() if v},
            "evidence": plain(self.evidence),
            "fix": self.fix,
            "record_next": self.record_next,
        }


class RankContext:
    """What a rule may read about one rank: the analysis plus measurements computed on first use."""

    def __init__(self, analysis: RankAnalysis, causes: pd.DataFrame) -> None:
        self.analysis = analysis
        self.trace = analysis.trace
        self.causes = causes
        """ns per cause per analysed window (steps, or the whole trace as one window)."""
        self.verdicts: dict[str, str] = {}
        """Rules that looked and found nothing may say why here (e.g. the memory trend they measured)."""

    @property
    def rank(self) -> int:
        return self.analysis.rank

    @cached_property
    def windows(self) -> pd.DataFrame:
        """step, ts, end of each analysed window (one synthetic window -1 when there are no steps)."""
        steps = self.analysis.steps
        if len(steps):
            return pd.DataFrame(
                {
                    "step": steps["step"].to_numpy(),
                    "ts": steps["ts"].to_numpy(),
                    "end": (steps["ts"] + steps["dur"]).to_numpy(),
                }
            )
        lo, hi = self.analysis.window
        return pd.DataFrame({"step": [-1], "ts": [lo], "end": [hi]})

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
        return spec_for(self.trace.meta.devices)

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


class Rule:
    """Base class: subclasses set the class attributes and implement :meth:`check`."""

    id: ClassVar[str]
    name: ClassVar[str]
    category: ClassVar[str]
    summary: ClassVar[str]
    claims: ClassVar[tuple[str, ...]] = ()
    """Causes this rule may claim time from (exclusive across rules)."""
    defaults: ClassVar[dict[str, float]] = {}
    """Thresholds; overridable per team in ``[tool.mlprof.rules.ID]``."""
    needs_device: ClassVar[bool] = True
    doc: ClassVar[RuleDoc]

    def check(self, ctx: RankContext, cfg: dict[str, float]) -> list[Finding]:
        raise NotImplementedError

    def finding(self, ctx: RankContext, **kwargs: Any) -> Finding:
        """A finding of this rule for one rank, with the rank's step time filled in."""
        kwargs.setdefault("step_ns", ctx.step_ns)
        kwargs.setdefault("ranks", [ctx.rank])
        return Finding(rule=self.id, name=self.name, category=self.category, **kwargs)


def plain(value: Any) -> Any:
    """Evidence as JSON-ready Python values (numpy scalars and arrays become int/float/list)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def ms(ns: float) -> float:
    return round(float(ns) / NS_PER_MS, 3)


def top_ranges(ts: np.ndarray, end: np.ndarray, n: int = 5) -> list[tuple[int, int]]:
    """The ``n`` longest intervals, in time order (where in the trace to look)."""
    if len(ts) == 0:
        return []
    idx = np.argsort(end - ts)[::-1][:n]
    idx = np.sort(idx)
    return [(int(ts[i]), int(end[i])) for i in idx]
