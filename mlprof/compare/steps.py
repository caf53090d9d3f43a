"""Step-time change and its attribution to the step breakdown categories.

Every instant of a step belongs to exactly one category
(:mod:`mlprof.analyzers.attribution`), so a step's categories add up to its wall
time and the change of the mean step is exactly the sum of the changes of the
categories' means per step: the categories *explain* the step-time change without
remainder. The step time compared is the mean over the analysed steps (for a job of
several ranks: the mean over ranks), the same figure every expected speedup is
relative to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlprof.analysis import Analysis
from mlprof.analyzers.attribution import CATEGORIES, CATEGORY_HELP

NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class StepChange:
    """Mean (and median) step time of both runs, in ms."""

    base_ms: float
    new_ms: float
    base_median_ms: float | None
    new_median_ms: float | None
    base_steps: int
    new_steps: int

    @property
    def change_ms(self) -> float:
        return self.new_ms - self.base_ms

    @property
    def change_pct(self) -> float:
        """Positive: NEW is slower (a regression); negative: NEW is faster."""
        return 100.0 * self.change_ms / self.base_ms if self.base_ms > 0 else 0.0

    @property
    def speedup(self) -> float:
        """base / new step time: above 1.0 NEW is faster."""
        return self.base_ms / self.new_ms if self.new_ms > 0 else 1.0


@dataclass(frozen=True)
class CategoryChange:
    """One breakdown category, ms per step in each run."""

    category: str
    base_ms: float
    new_ms: float
    step_change_ms: float

    @property
    def change_ms(self) -> float:
        return self.new_ms - self.base_ms

    @property
    def share_of_change_pct(self) -> float | None:
        """This category's change as a percentage of the step-time change (they sum to 100)."""
        if abs(self.step_change_ms) < 1e-9:
            return None
        return 100.0 * self.change_ms / self.step_change_ms

    @property
    def meaning(self) -> str:
        return CATEGORY_HELP[self.category]


def per_step_categories(analysis: Analysis) -> tuple[dict[str, float], int]:
    """ms per step of each category (job view: mean over ranks), and the number of steps."""
    steps = analysis.job_steps()
    n = max(len(steps), 1)
    totals = analysis.category_totals()
    return {c: totals[c] / n / NS_PER_MS for c in CATEGORIES}, len(steps)


def step_change(base: Analysis, new: Analysis) -> tuple[StepChange, list[CategoryChange]]:
    """The step-time change and the categories that make it up, largest change first."""
    base_cats, base_n = per_step_categories(base)
    new_cats, new_n = per_step_categories(new)
    step = StepChange(
        # The categories of a step sum to its duration, so their per-step sums are the mean step.
        base_ms=sum(base_cats.values()),
        new_ms=sum(new_cats.values()),
        base_median_ms=_median_step_ms(base),
        new_median_ms=_median_step_ms(new),
        base_steps=base_n,
        new_steps=new_n,
    )
    changes = [CategoryChange(c, base_cats[c], new_cats[c], step.change_ms) for c in CATEGORIES]
    changes.sort(key=lambda c: -abs(c.change_ms))
    return step, changes


def _median_step_ms(analysis: Analysis) -> float | None:
    steps = analysis.job_steps()
    if len(steps) == 0:
        return None
    return float(np.median(steps["dur"].to_numpy(np.int64))) / NS_PER_MS
