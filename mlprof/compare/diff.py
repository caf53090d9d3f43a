"""The comparison of two analysed runs, computed once for every reporter."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlprof.analysis import Analysis
from mlprof.compare.findings import FindingsDiff, PredictedVsAchieved, diff_findings, predicted_vs_achieved
from mlprof.compare.names import NameDiff, name_diff
from mlprof.compare.steps import CategoryChange, StepChange, step_change
from mlprof.errors import BadInputError


@dataclass
class Comparison:
    base: Analysis
    new: Analysis
    step: StepChange
    categories: list[CategoryChange]
    """Largest change first; their ``change_ms`` sum to ``step.change_ms``."""
    names: NameDiff
    findings: FindingsDiff
    predicted: list[PredictedVsAchieved]
    notes: list[str] = field(default_factory=list)

    @property
    def main_category(self) -> CategoryChange | None:
        """The category that moved most in the direction of the step-time change."""
        sign = 1.0 if self.step.change_ms >= 0 else -1.0
        moving = [c for c in self.categories if c.change_ms * sign > 0]
        return moving[0] if moving else None


MEAN_MEDIAN_GAP_PP = 5.0
"""A note is added when the mean and median step-time changes differ by more than this (percentage points)."""
OUTLIER_STEP = 1.25
"""A step longer than this multiple of its run's median step is named in the notes as an outlier."""


def _step_notes(label: str, analysis: Analysis) -> list[str]:
    steps = analysis.job_steps()
    if len(steps) == 0:
        return [f"{label} has no steps: its whole trace is compared as one window"]
    notes = []
    if len(steps) < 3:
        notes.append(f"{label} has only {len(steps)} step(s): step-time changes of a few % may be noise")
    dur = steps["dur"].to_numpy(np.int64)
    median = float(np.median(dur))
    slow = steps[dur > OUTLIER_STEP * median]
    if len(slow):
        listed = ", ".join(f"{int(r.step)} ({r.dur / 1e6:.1f} ms)" for r in slow.itertuples(index=False))
        notes.append(f"{label}: outlier step(s) over {OUTLIER_STEP:g}x its median {median / 1e6:.1f} ms: {listed}")
    return notes


def compare_analyses(base: Analysis, new: Analysis) -> Comparison:
    step, categories = step_change(base, new)
    for label, a, ms in (("BASE", base, step.base_ms), ("NEW", new, step.new_ms)):
        if ms <= 0:
            raise BadInputError(f"{label} {a.path}: no recorded activity to compare (an empty trace)")
    findings = diff_findings(base.findings, new.findings)
    notes = []
    b_dev = {d.name for ra in base.ranks for d in ra.trace.meta.devices}
    n_dev = {d.name for ra in new.ranks for d in ra.trace.meta.devices}
    if b_dev and n_dev and b_dev != n_dev:
        notes.append(
            f"different GPUs: {', '.join(sorted(b_dev))} (base) vs {', '.join(sorted(n_dev))} (new); "
            "kernel names often differ between GPU generations, so compare kernels by family as well as by name"
        )
    if len(base.ranks) != len(new.ranks):
        notes.append(f"base has {len(base.ranks)} rank(s), new has {len(new.ranks)}: figures are means over ranks")
    for label, a in (("base", base), ("new", new)):
        notes.extend(_step_notes(label, a))
    if step.base_median_ms and step.new_median_ms:
        median_pct = 100.0 * (step.new_median_ms - step.base_median_ms) / step.base_median_ms
        if abs(median_pct - step.change_pct) > MEAN_MEDIAN_GAP_PP:
            notes.append(
                f"the mean step changed {step.change_pct:+.1f}% but the median {median_pct:+.1f}%: outlier steps "
                "weigh on the mean; pass --steps to compare the steady-state steps of both runs"
            )
    return Comparison(
        base=base,
        new=new,
        step=step,
        categories=categories,
        names=name_diff(base, new),
        findings=findings,
        predicted=predicted_vs_achieved(base, new, findings, step.base_ms, step.new_ms),
        notes=notes,
    )
