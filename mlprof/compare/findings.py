"""Findings of two runs side by side, and each predicted fix next to the measured change.

Findings are matched by rule id (and by device for MEM001, like the job merge in
:mod:`mlprof.rules.engine`). A finding of BASE absent from NEW is *resolved* (it no
longer fires, or falls under ``min_speedup``); one only in NEW is *new*; one in both
is *changed* when its time lost per step moved by at least
:data:`CHANGE_MIN_SHARE` of the base figure (or at least :data:`CHANGE_MIN_MS`) or
its severity changed, else *unchanged*.

**Predicted vs achieved.** For each fix BASE predicted (a finding with time lost):

* ``predicted_saving_ms`` / ``predicted_speedup``: what BASE's report said the fix
  would save per step and the speedup it expected.
* ``base_lost_ms`` -> ``new_lost_ms``: the finding's own measure in each run (0 in NEW
  when resolved): whether the change acted on it at all.
* ``achieved_speedup`` / ``achieved_saving_ms``: the measured change of the whole
  steady-state step (:mod:`mlprof.compare.steps`, medians), the same figure for every
  finding, never the drop in the causes the rule itself claimed (that would let a
  prediction confirm itself: time freed by a fix can reappear elsewhere).
* ``freed_categories``: the breakdown categories the rule claimed its time from; the
  comparison's category table says how much those shrank and where time reappeared.

When several findings were acted on, the achieved change is theirs together, next
to ``predicted_together``: BASE's savings of those findings added (rules claim
disjoint causes), as one speedup of the step BASE's findings are relative to (so
one acted-on finding gives exactly its own expected speedup).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from mlprof.analyzers.causes import PARENT
from mlprof.compare.runs import FindingView
from mlprof.compare.steps import StepChange
from mlprof.rules.registry import BY_ID

CHANGE_MIN_SHARE = 0.10
"""A finding in both runs is *changed* when its time lost moved by 10% of the base figure..."""
CHANGE_MIN_MS = 1.0
"""...or by 1 ms per step, whichever is smaller."""


@dataclass
class FindingPair:
    """One rule's finding in BASE and/or NEW (``None`` where it did not fire)."""

    status: str
    """``resolved``, ``new``, ``changed`` or ``unchanged``."""
    base: FindingView | None
    new: FindingView | None

    @property
    def finding(self) -> FindingView:
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
        return self.base.time_lost_ms if self.base is not None else 0.0

    @property
    def new_ms(self) -> float:
        return self.new.time_lost_ms if self.new is not None else 0.0


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
    predicted_saving_ms: float
    predicted_speedup: float
    base_lost_ms: float
    new_lost_ms: float
    freed_categories: tuple[str, ...]
    step: StepChange
    predicted_step_ms: float
    """The step BASE's prediction is relative to (its mean steady step)."""

    @property
    def acted_on(self) -> bool:
        """NEW no longer has the finding, or it *changed* (see :func:`diff_findings`) to less time lost."""
        return self.status == "resolved" or (self.status == "changed" and self.new_lost_ms < self.base_lost_ms)

    @property
    def achieved_speedup(self) -> float:
        return self.step.speedup

    @property
    def achieved_saving_ms(self) -> float:
        return self.step.base_ms - self.step.new_ms


def _key(f: FindingView) -> tuple[str, str]:
    """The rule's own merge key (e.g. one MEM001 leak per device); a rule's key reads only the evidence."""
    rule = BY_ID.get(f.rule)
    return (f.rule, rule.merge_key(cast(Any, f)) if rule is not None else "")


def diff_findings(base: list[FindingView], new: list[FindingView]) -> FindingsDiff:
    """Match findings by rule and sort them into resolved / new / changed / unchanged."""
    out = FindingsDiff()
    new_by_key: dict[tuple[str, str], list[FindingView]] = {}
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


def _changed(a: FindingView, b: FindingView) -> bool:
    delta = abs(b.time_lost_ms - a.time_lost_ms)
    limit = min(CHANGE_MIN_SHARE * a.time_lost_ms, CHANGE_MIN_MS)
    return a.severity != b.severity or delta >= max(limit, 1e-6)


def predicted_vs_achieved(
    base: list[FindingView], findings: FindingsDiff, step: StepChange
) -> list[PredictedVsAchieved]:
    """For each base finding that predicted a saving, in the base run's ranked order."""
    pairs = [*findings.resolved, *findings.changed, *findings.unchanged]
    by_base = {id(p.base): p for p in pairs}
    out = []
    for f in base:
        if f.time_lost_ms <= 0:
            continue
        pair = by_base.get(id(f))
        cats = tuple(dict.fromkeys(PARENT.get(c, c) for c, v in f.claimed_ms.items() if v > 0))
        out.append(
            PredictedVsAchieved(
                rule=f.rule,
                category=f.category,
                title=f.title,
                status=pair.status if pair is not None else "resolved",
                predicted_saving_ms=f.time_lost_ms,
                predicted_speedup=f.expected_speedup,
                base_lost_ms=f.time_lost_ms,
                new_lost_ms=pair.new_ms if pair is not None else 0.0,
                freed_categories=cats,
                step=step,
                predicted_step_ms=f.step_ms,
            )
        )
    return out


def predicted_together(predicted: list[PredictedVsAchieved]) -> float | None:
    """BASE's predicted speedup of the acted-on fixes together, None when none was acted on.

    Their savings add (rules claim disjoint causes), relative to the step BASE's findings
    are relative to, so one acted-on fix gives exactly its own expected speedup.
    """
    acted = [p for p in predicted if p.acted_on]
    if not acted:
        return None
    step_ms = max(p.predicted_step_ms for p in acted)
    left = step_ms - sum(p.predicted_saving_ms for p in acted)
    return step_ms / left if left > 0 and step_ms > 0 else None
