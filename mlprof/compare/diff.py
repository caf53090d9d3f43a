"""The comparison of two runs, computed once for every reporter (CLI and dashboard)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlprof.compare.findings import (
    FindingsDiff,
    PredictedVsAchieved,
    diff_findings,
    predicted_together,
    predicted_vs_achieved,
)
from mlprof.compare.names import NameDiff, name_diff
from mlprof.compare.runs import RunSummary
from mlprof.compare.steps import CategoryChange, StepChange, step_change
from mlprof.errors import BadInputError

if TYPE_CHECKING:
    from mlprof.analysis import Analysis

FEW_STEPS = 3
"""Fewer steady steps than this in a run: a note says small changes may be noise."""


@dataclass
class Comparison:
    base: RunSummary
    new: RunSummary
    step: StepChange
    """Achieved: the median steady step of both runs, with the run-to-run band."""
    categories: list[CategoryChange]
    """Largest change first; their ``change_ms`` sum to the change of the mean steady step."""
    names: NameDiff
    findings: FindingsDiff
    predicted: list[PredictedVsAchieved]
    predicted_together: float | None
    """BASE's predicted speedup of the findings NEW acted on, together; None when none was."""
    notes: list[str] = field(default_factory=list)

    @property
    def main_category(self) -> CategoryChange | None:
        """The category that moved most in the direction of the mean step change."""
        total = sum(c.change_ms for c in self.categories)
        sign = 1.0 if total >= 0 else -1.0
        moving = [c for c in self.categories if c.change_ms * sign > 0]
        return moving[0] if moving else None

    @property
    def freed(self) -> list[CategoryChange]:
        """Categories that shrank (time freed), largest first."""
        return [c for c in self.categories if c.change_ms < 0]

    @property
    def grew(self) -> list[CategoryChange]:
        """Categories that grew (where freed time reappeared, or a regression), largest first."""
        return [c for c in self.categories if c.change_ms > 0]


def compare_runs(base: RunSummary, new: RunSummary) -> Comparison:
    """Compare two runs (from analyses or stored reports); see :mod:`mlprof.compare`."""
    step, categories = step_change(base, new)
    for label, run, stats in (("BASE", base, step.base), ("NEW", new, step.new)):
        if stats.n == 0 or stats.median_ms <= 0:
            raise BadInputError(f"{label} {run.path}: no recorded activity to compare (an empty trace)")
    findings = diff_findings(base.findings, new.findings)
    predicted = predicted_vs_achieved(base.findings, findings, step, {c.category: c.change_ms for c in categories})
    return Comparison(
        base=base,
        new=new,
        step=step,
        categories=categories,
        names=name_diff(base.names, new.names),
        findings=findings,
        predicted=predicted,
        predicted_together=predicted_together(predicted, base.plan),
        notes=_notes(base, new, step),
    )


def compare_analyses(base: Analysis, new: Analysis) -> Comparison:
    """Compare two analyses computed in this process (``mlprof compare``)."""
    return compare_runs(RunSummary.from_analysis(base), RunSummary.from_analysis(new))


def _notes(base: RunSummary, new: RunSummary, step: StepChange) -> list[str]:
    notes = [*base.notes, *new.notes]
    if base.devices and new.devices and base.devices != new.devices:
        notes.append(
            f"different GPUs: {', '.join(base.devices)} (base) vs {', '.join(new.devices)} (new); "
            "kernel names often differ between GPU generations, so compare kernels by family as well as by name"
        )
    if len(base.ranks) != len(new.ranks):
        notes.append(f"base has {len(base.ranks)} rank(s), new has {len(new.ranks)}: figures are means over ranks")
    for label, run in (("base", base), ("new", new)):
        if run.stepless:
            notes.append(f"{label} has no steps: its whole analysed window is compared as one step")
        elif len(run.steps) < FEW_STEPS:
            notes.append(f"{label} has only {len(run.steps)} steady step(s): step-time changes of a few % may be noise")
        if run.set_aside:
            listed = ", ".join(
                f"{s['step']} ({s['reason']}, {float(s['dur_ms']):.2f} ms"
                + (f", rank {s['rank']}" if s.get("rank") is not None and len(run.ranks) > 1 else "")
                + ")"
                for s in run.set_aside
            )
            notes.append(f"{label}: step(s) set aside from the steady state: {listed}")
    if step.within_noise:
        notes.append(
            f"the median step changed {step.change_pct:+.1f}%, within the run-to-run spread "
            f"(+/-{step.noise_pct:.1f}%): no measurable change"
        )
    elif step.noise_pct is None:
        notes.append("a run has one steady step: its run-to-run spread is unknown, so a small change may be noise")
    return notes
