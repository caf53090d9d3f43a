"""Findings of two runs side by side, and each predicted fix against what was achieved.

Findings are matched by rule id (and by device for MEM001, like the job merge in
:mod:`mlprof.rules.engine`). A finding of BASE absent from NEW is *resolved* (it no
longer fires, or falls under ``min_speedup``); one only in NEW is *new*; one in both
is *changed* when its time lost per step moved by at least
:data:`CHANGE_MIN_SHARE` of the base figure (or at least :data:`CHANGE_MIN_MS`) or
its severity changed, else *unchanged*.

**Predicted vs achieved.** Every finding names the causes it claims time from
(:mod:`mlprof.analyzers.causes`: ``data.loader``, ``sync.host_read``...; each cause is
owned by one rule). For each fix BASE predicted:

* ``predicted_saving_ms``: the base finding's time lost per step; ``predicted_speedup``
  its expected speedup, ``base_step / (base_step - predicted_saving)``.
* ``achieved_saving_ms``: how much the time of those same causes per step fell from
  BASE to NEW, measured in both traces; ``achieved_speedup`` the same formula with it,
  ``base_step / (base_step - achieved_saving)``: the speedup this change alone would give
  if nothing else moved.
* ``step_speedup``: ``base_step / new_step``, the whole run, every change included
  (time freed by one fix can reappear elsewhere, e.g. as host overhead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlprof.analysis import Analysis
from mlprof.rules.base import Finding
from mlprof.rules.registry import BY_ID

NS_PER_MS = 1_000_000
CHANGE_MIN_SHARE = 0.10
"""A finding in both runs is *changed* when its time lost moved by 10% of the base figure..."""
CHANGE_MIN_MS = 1.0
"""...or by 1 ms per step, whichever is smaller."""


@dataclass
class FindingPair:
    """One rule's finding in BASE and/or NEW (``None`` where it did not fire)."""

    status: str
    """``resolved``, ``new``, ``changed`` or ``unchanged``."""
    base: Finding | None
    new: Finding | None

    @property
    def finding(self) -> Finding:
        found = self.new if self.new is not None else self.base
        assert found is not None
        return found

    @property
    def rule(self) -> str:
        return self.finding.rule

    @property
    def category(self) -> str:
        return self.finding.category

    @property
    def base_ms(self) -> float:
        return self.base.time_lost_ns_per_step / NS_PER_MS if self.base is not None else 0.0

    @property
    def new_ms(self) -> float:
        return self.new.time_lost_ns_per_step / NS_PER_MS if self.new is not None else 0.0


@dataclass
class FindingsDiff:
    resolved: list[FindingPair] = field(default_factory=list)
    new: list[FindingPair] = field(default_factory=list)
    changed: list[FindingPair] = field(default_factory=list)
    unchanged: list[FindingPair] = field(default_factory=list)


@dataclass(frozen=True)
class PredictedVsAchieved:
    rule: str
    category: str
    title: str
    status: str
    """What became of the finding in NEW: ``resolved``, ``changed``, ``unchanged``."""
    causes: tuple[str, ...]
    predicted_saving_ms: float
    predicted_speedup: float
    base_cause_ms: float
    """Time of the claimed causes per step in BASE (at least the predicted saving)."""
    new_cause_ms: float
    """Time of the same causes per step in NEW."""
    base_step_ms: float
    new_step_ms: float

    @property
    def achieved_saving_ms(self) -> float:
        return self.base_cause_ms - self.new_cause_ms

    @property
    def achieved_speedup(self) -> float:
        left = self.base_step_ms - self.achieved_saving_ms
        return self.base_step_ms / left if left > 0 and self.base_step_ms > 0 else 1.0

    @property
    def step_speedup(self) -> float:
        return self.base_step_ms / self.new_step_ms if self.new_step_ms > 0 else 1.0

    @property
    def achieved_share(self) -> float | None:
        """Achieved over predicted saving (1.0: the fix delivered what was expected)."""
        return self.achieved_saving_ms / self.predicted_saving_ms if self.predicted_saving_ms > 0 else None


def _key(f: Finding) -> tuple[str, str]:
    rule = BY_ID.get(f.rule)
    return (f.rule, rule.merge_key(f) if rule is not None else "")


def diff_findings(base: list[Finding], new: list[Finding]) -> FindingsDiff:
    """Match findings by rule and sort them into resolved / new / changed / unchanged."""
    out = FindingsDiff()
    new_by_key: dict[tuple[str, str], list[Finding]] = {}
    for f in new:
        new_by_key.setdefault(_key(f), []).append(f)
    for f in base:
        matches = new_by_key.get(_key(f))
        if not matches:
            out.resolved.append(FindingPair("resolved", f, None))
            continue
        g = matches.pop(0)
        pair = FindingPair("changed" if _changed(f, g) else "unchanged", f, g)
        (out.changed if pair.status == "changed" else out.unchanged).append(pair)
    for rest in new_by_key.values():
        out.new.extend(FindingPair("new", None, g) for g in rest)
    out.new.sort(key=lambda p: -p.finding.expected_speedup)
    return out


def _changed(a: Finding, b: Finding) -> bool:
    delta = abs(b.time_lost_ns_per_step - a.time_lost_ns_per_step) / NS_PER_MS
    limit = min(CHANGE_MIN_SHARE * a.time_lost_ns_per_step / NS_PER_MS, CHANGE_MIN_MS)
    return a.severity != b.severity or delta >= max(limit, 1e-6)


def cause_ms_per_step(analysis: Analysis) -> dict[str, float]:
    """ms per analysed step of every cause (job view: mean over ranks)."""
    totals: dict[str, float] = {}
    ranks = [ra for ra in analysis.ranks if ra.causes is not None and len(ra.causes)]
    for ra in ranks:
        assert ra.causes is not None
        for cause, value in ra.causes.mean(axis=0).items():
            totals[str(cause)] = totals.get(str(cause), 0.0) + float(value) / NS_PER_MS / len(ranks)
    return totals


def predicted_vs_achieved(
    base: Analysis, new: Analysis, findings: FindingsDiff, base_step_ms: float, new_step_ms: float
) -> list[PredictedVsAchieved]:
    """For each base finding that predicted a saving, in the base run's ranked order."""
    status = {id(p.base): p.status for p in [*findings.resolved, *findings.changed, *findings.unchanged]}
    base_causes = cause_ms_per_step(base)
    new_causes = cause_ms_per_step(new)
    out = []
    for f in base.findings:
        if f.time_lost_ns_per_step <= 0:
            continue
        causes = tuple(c for c, v in f.claimed.items() if v > 0)
        out.append(
            PredictedVsAchieved(
                rule=f.rule,
                category=f.category,
                title=f.title,
                status=status.get(id(f), "resolved"),
                causes=causes,
                predicted_saving_ms=f.time_lost_ns_per_step / NS_PER_MS,
                predicted_speedup=f.expected_speedup,
                base_cause_ms=sum(base_causes.get(c, 0.0) for c in causes),
                new_cause_ms=sum(new_causes.get(c, 0.0) for c in causes),
                base_step_ms=base_step_ms,
                new_step_ms=new_step_ms,
            )
        )
    return out


def finding_brief(f: Finding) -> dict[str, Any]:
    """The fields of a finding a comparison shows (the full finding is in each run's own report)."""
    return {
        "rule": f.rule,
        "name": f.name,
        "category": f.category,
        "severity": f.severity,
        "title": f.title,
        "expected_speedup": round(f.expected_speedup, 4),
        "time_lost_ms_per_step": round(f.time_lost_ns_per_step / NS_PER_MS, 6),
    }
