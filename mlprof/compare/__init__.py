"""What changed between two runs of a job, and why.

``BASE`` and ``NEW`` are each analysed as usual (:func:`mlprof.analysis.analyze_job`);
:func:`compare_analyses` then measures the differences: the step time, the step
breakdown categories that moved (they add up to the step, so their changes add up to
the step-time change), the kernels and ops matched by name whose time or count
changed, the findings resolved, new and changed, and for every fix the base run
predicted, the speedup achieved next to the one expected. Reporters in
:mod:`mlprof.report.compare_report` only format the :class:`Comparison`.
"""

from __future__ import annotations

from mlprof.compare.diff import Comparison, compare_analyses
from mlprof.compare.findings import FindingsDiff, PredictedVsAchieved
from mlprof.compare.names import NameDiff, name_diff
from mlprof.compare.steps import CategoryChange, StepChange

__all__ = [
    "CategoryChange",
    "Comparison",
    "FindingsDiff",
    "NameDiff",
    "PredictedVsAchieved",
    "StepChange",
    "compare_analyses",
    "name_diff",
]
