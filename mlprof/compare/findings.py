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

A finding is *acted on* when NEW no longer reports it (resolved). When several were,
the achieved change is theirs together, next to ``predicted_together``: BASE's plan's
cumulative speedup after them when they lead its plan, else their savings added.
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
    freed_ms: float = 0.0
    """How much ``freed_categories`` shrank per mean steady step from BASE to NEW (measured in both)."""

    @property
    def acted_on(self) -> bool:
        """NEW no longer has the finding (*resolved*), or it *changed* and the categories it claims
        time from shrank by at least half its predicted saving.

        A finding's time lost can move because another fix changed what paces the step (a
        launch-bound saving shrinks once the DataLoader no longer holds the host, while the
        launch idle time itself stays): that is not acting on it.
        """
        if self.status == "resolved":
            return True
        return self.status == "changed" and self.freed_ms >= 0.5 * self.predicted_saving_ms

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
    base: list[FindingView], findings: FindingsDiff, step: StepChange, category_change: dict[str, float] | None = None
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
                freed_ms=-sum((category_change or {}).get(c, 0.0) for c in cats),
            )
        )
    return out


def predicted_together(
    predicted: list[PredictedVsAchieved], plan: list[tuple[str, float]] | None = None
) -> float | None:
    """BASE's predicted speedup of the acted-on fixes together, None when none was acted on.

    When they are the first fixes of BASE's plan (``plan``: rule and cumulative speedup,
    in order), the plan's cumulative speedup after them (the replay applies fixes one on
    top of the other); else their savings added, relative to the step BASE's findings
    are relative to. One acted-on fix gives exactly its own expected speedup.
    """
    acted = [p for p in predicted if p.acted_on]
    if not acted:
        return None
    if len(acted) == 1:
        return acted[0].predicted_speedup
    rules = {p.rule for p in acted}
    if plan and {r for r, _ in plan[: len(rules)]} == rules:
        return plan[len(rules) - 1][1]
    step_ms = max(p.predicted_step_ms for p in acted)
    left = step_ms - sum(p.predicted_saving_ms for p in acted)
    return step_ms / left if left > 0 and step_ms > 0 else None
