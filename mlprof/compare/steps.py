"""The measured change of the steady-state step, its run-to-run spread, and where the time went.

**Achieved** is measured on the steady steps of both runs (warm-up, outlier and
partial steps set aside, :mod:`mlprof.analyzers.steady_state`): the change of the
*median* step, ``speedup = base median / new median``. The median of steady steps
is what a user's throughput sees; a mean would move with one slow step.

**Spread.** Each run's step-to-step spread is ``1.4826 * MAD / median`` of its steady
steps (a robust relative standard deviation). Two recordings of the same job differ by
at least that much from one step to the next, so a change smaller than
``noise = 2 * sqrt(spread_base^2 + spread_new^2)`` is reported as *within run-to-run
spread* (the four repeats of one run in ``../shared/external_traces``, sidnb13, differ
by 1-7% with noise bands of 12-18%). With one steady step per run the spread is
unknown and no such verdict is given.

**Where the time went.** Every instant of a step is in exactly one breakdown category
(:mod:`mlprof.analyzers.attribution`), so the change of the *mean* steady step is
exactly the sum of the changes of the categories' means: the categories say which
waits shrank and where freed time reappeared, without remainder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlprof.analyzers.attribution import CATEGORIES, CATEGORY_HELP
from mlprof.analyzers.steady_state import MAD_TO_SIGMA
from mlprof.compare.runs import RunSummary

NOISE_SIGMAS = 2.0
"""A median change within this many combined spreads is within run-to-run spread."""


@dataclass(frozen=True)
class StepStats:
    """One run's steady steps, ms."""

    n: int
    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    spread_pct: float | None
    """``1.4826 * MAD / median`` in %; None with fewer than two steps."""

    @classmethod
    def of(cls, ms: np.ndarray) -> StepStats:
        if len(ms) == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, None)
        median = float(np.median(ms))
        mad = float(np.median(np.abs(ms - median)))
        spread = 100.0 * MAD_TO_SIGMA * mad / median if len(ms) >= 2 and median > 0 else None
        return cls(len(ms), median, float(ms.mean()), float(ms.min()), float(ms.max()), spread)


@dataclass(frozen=True)
class StepChange:
    """Steady-state step time of both runs: the median change (achieved), its noise band, the mean."""

    base: StepStats
    new: StepStats

    @property
    def base_ms(self) -> float:
        """Median steady step of BASE."""
        return self.base.median_ms

    @property
    def new_ms(self) -> float:
        return self.new.median_ms

    @property
    def change_ms(self) -> float:
        return self.new_ms - self.base_ms

    @property
    def change_pct(self) -> float:
        """Median change; positive: NEW is slower (a regression), negative: NEW is faster."""
        return 100.0 * self.change_ms / self.base_ms if self.base_ms > 0 else 0.0

    @property
    def speedup(self) -> float:
        """Achieved: base median / new median (above 1.0 NEW is faster)."""
        return self.base_ms / self.new_ms if self.new_ms > 0 else 1.0

    @property
    def mean_change_pct(self) -> float:
        return 100.0 * (self.new.mean_ms - self.base.mean_ms) / self.base.mean_ms if self.base.mean_ms > 0 else 0.0

    @property
    def mean_speedup(self) -> float:
        return self.base.mean_ms / self.new.mean_ms if self.new.mean_ms > 0 else 1.0

    @property
    def noise_pct(self) -> float | None:
        """The run-to-run band, in % of the base median; None when a run has one steady step."""
        if self.base.spread_pct is None or self.new.spread_pct is None:
            return None
        return NOISE_SIGMAS * math.hypot(self.base.spread_pct, self.new.spread_pct)

    @property
    def within_noise(self) -> bool | None:
        """True when the median change is inside the run-to-run band (no measurable change)."""
        noise = self.noise_pct
        return None if noise is None else abs(self.change_pct) <= noise

    @property
    def verdict(self) -> str:
        if self.within_noise:
            return "within run-to-run spread"
        return "slower" if self.change_pct > 0 else "faster" if self.change_pct < 0 else "unchanged"


@dataclass(frozen=True)
class CategoryChange:
    """One breakdown category, mean ms per steady step in each run."""

    category: str
    base_ms: float
    new_ms: float
    step_change_ms: float
    """Change of the mean steady step (the sum of every category's change)."""

    @property
    def change_ms(self) -> float:
        return self.new_ms - self.base_ms

    @property
    def share_of_change_pct(self) -> float | None:
        """This category's change as a percentage of the mean step change (they sum to 100)."""
        if abs(self.step_change_ms) < 1e-9:
            return None
        return 100.0 * self.change_ms / self.step_change_ms

    @property
    def meaning(self) -> str:
        return CATEGORY_HELP[self.category]


def step_change(base: RunSummary, new: RunSummary) -> tuple[StepChange, list[CategoryChange]]:
    """The steady step change and the categories of the mean steady step, largest change first."""
    step = StepChange(StepStats.of(base.step_ms), StepStats.of(new.step_ms))
    b, n = base.category_ms(), new.category_ms()
    mean_change = sum(n.values()) - sum(b.values())
    changes = [CategoryChange(c, b[c], n[c], mean_change) for c in CATEGORIES]
    changes.sort(key=lambda c: -abs(c.change_ms))
    return step, changes


def per_step_categories(analysis: object) -> tuple[dict[str, float], int]:
    """ms per analysed step of each category of an analysis (job view: mean over ranks), and the step count.

    What the budget gates read (:mod:`mlprof.gates.evaluate`); the steps are the steady ones.
    """
    from mlprof.analysis import Analysis

    assert isinstance(analysis, Analysis)
    steps = analysis.job_steps()
    n = max(len(steps), 1)
    totals = analysis.category_totals()
    return {c: totals[c] / n / 1e6 for c in CATEGORIES}, len(steps)
