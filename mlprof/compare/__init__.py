"""What changed between two runs of a job, and did the fix deliver.

One comparison for every front end: ``mlprof compare`` builds a
:class:`~mlprof.compare.runs.RunSummary` from each analysis it computes, the
dashboard's Compare page from each run's stored JSON report and per-name table, and
both call :func:`compare_runs`. A summary holds the run's *steady* steps (warm-up,
outlier and partial steps set aside, :mod:`mlprof.analyzers.steady_state`).

Measured: the median steady step of both runs and its change (*achieved*), each run's
step-to-step spread and whether the change is within run-to-run spread
(:mod:`mlprof.compare.steps`); the breakdown categories of the mean steady step, whose
changes add up to its change (where freed time went); kernels and ops matched by name
(:mod:`mlprof.compare.names`); findings resolved, new and changed, and each fix BASE
predicted next to the measured change (:mod:`mlprof.compare.findings`). Reporters in
:mod:`mlprof.report.compare_report` only format the :class:`Comparison`.
"""

from __future__ import annotations

from mlprof.compare.diff import Comparison, compare_analyses, compare_runs
from mlprof.compare.findings import FindingsDiff, PredictedVsAchieved
from mlprof.compare.names import NameDiff, name_diff
from mlprof.compare.runs import FindingView, RunSummary
from mlprof.compare.steps import CategoryChange, StepChange, StepStats

__all__ = [
    "CategoryChange",
    "Comparison",
    "FindingView",
    "FindingsDiff",
    "NameDiff",
    "PredictedVsAchieved",
    "RunSummary",
    "StepChange",
    "StepStats",
    "compare_analyses",
    "compare_runs",
    "name_diff",
]
