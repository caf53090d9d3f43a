"""Findings and what the rule engine makes of them: the data types rules return and reports read.

A finding's expected speedup is ``step / (step - time_lost)``: the time on the step's
critical path that the fix removes, measured in the trace. These types hold results
only; :mod:`mlprof.rules` computes them, :mod:`mlprof.report` renders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from mlprof.analyzers.stragglers import CrossRank

NS_PER_MS = 1_000_000


def brief_fields(
    rule: str,
    name: str,
    category: str,
    severity: str,
    title: str,
    expected_speedup: float,
    time_lost_ms_per_step: float,
) -> dict[str, Any]:
    """A finding's headline fields with the report's rounding; shared by :class:`Finding`
    and readers of a JSON report (compare's ``FindingView``) so both round alike."""
    return {
        "rule": rule,
        "name": name,
        "category": category,
        "severity": severity,
        "title": title,
        "expected_speedup": round(expected_speedup, 4),
        "time_lost_ms_per_step": round(time_lost_ms_per_step, 6),
    }


class Finding(msgspec.Struct, weakref=True):
    """One finding of a rule: what it found, the time it costs per step, the evidence and the fix."""

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
    steps: list[int] = msgspec.field(default_factory=list)
    time_ranges_ns: list[tuple[int, int]] = msgspec.field(default_factory=list)
    claimed: dict[str, float] = msgspec.field(default_factory=dict)
    """ns per step claimed from each cause."""
    ranks: list[int] = msgspec.field(default_factory=list)
    record_next: list[str] = msgspec.field(default_factory=list)
    severity_override: str | None = None
    speedup_source: str | None = None
    """Where ``time_lost_ns_per_step`` comes from when not this trace's own measurement of the rule's causes
    (e.g. a what-if replay); None: measured. Written to JSON only when set."""

    @property
    def expected_speedup(self) -> float:
        remaining = self.step_ns - self.time_lost_ns_per_step
        if self.step_ns <= 0 or remaining <= 0:
            return 1.0
        return self.step_ns / remaining

    @property
    def severity(self) -> str:
        if self.severity_override is not None:
            # Critical needs confidence high or medium, whatever set it (issue 13).
            if self.severity_override == "critical" and self.confidence not in ("high", "medium"):
                return "warning"
            return self.severity_override
        s = self.expected_speedup
        if s >= 1.25 and self.confidence in ("high", "medium"):
            return "critical"
        return "warning" if s >= 1.05 else "info"

    def brief(self) -> dict[str, Any]:
        """The headline fields, as every list of findings (report, store, compare) shows them."""
        return brief_fields(
            self.rule,
            self.name,
            self.category,
            self.severity,
            self.title,
            self.expected_speedup,
            self.time_lost_ns_per_step / NS_PER_MS,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.brief(),
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
            **({"speedup_source": self.speedup_source} if self.speedup_source is not None else {}),
        }


class PlanStep(msgspec.Struct):
    """One step of the plan: a finding's fix and the step time after it and the fixes before it."""

    rule: str
    title: str
    saves_ms_per_step: float
    step_ms_after: float
    cumulative_speedup: float


class Diagnosis(msgspec.Struct):
    """The findings of an analysis, the plan and the what-if replay."""

    findings: list[Finding]
    plan: list[PlanStep]
    step_ms: float
    record_next: list[str] = msgspec.field(default_factory=list)
    rules_run: list[str] = msgspec.field(default_factory=list)
    below_threshold: int = 0
    """Findings dropped because their expected speedup was under ``min_speedup``."""
    verdicts: dict[str, str] = msgspec.field(default_factory=dict)
    """Why a rule that looked found nothing (e.g. the measured memory trend), per rule id."""
    per_rank: Sequence[list[Finding]] = msgspec.field(default_factory=list)
    """Each rank's own findings before merging (the same as ``findings`` for one rank); a job's client holds
    them in its spill file once merged (:class:`mlprof.results.spill.SpilledLists`)."""
    cross_rank: CrossRank | None = None
    """Several ranks: the per-rank table, rank-group summaries and job totals (:mod:`mlprof.analyzers.stragglers`)."""
    rule_outliers: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """Several ranks: per rule, the ranks whose time lost is at least twice the median rank's."""
    whatif: Any = None
    """The replay (:class:`mlprof.whatif.predict.WhatIf`) when it ran; it set the speedups and the plan."""


class CounterDiagnosis(msgspec.Struct):
    """The counter rules' findings over one counters table (ranked), apart from the trace's plan."""

    findings: list[Finding]
    rules_run: list[str] = msgspec.field(default_factory=list)
    verdicts: dict[str, str] = msgspec.field(default_factory=dict)
    below_threshold: int = 0
    record_next: list[str] = msgspec.field(default_factory=list)
    """Counters to add next time for the checks these could not make."""


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
