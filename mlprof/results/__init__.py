"""What an analysis produces, as types: findings, measurements, and the :class:`Report`.

The results layer sits between the measurements (:mod:`mlprof.analyzers`) and
everything that judges or shows them: rules return :class:`Finding`, the orchestrators
fill :class:`RankAnalysis`/:class:`Analysis`, renderers and notebooks read a
:class:`Report`. It imports only :mod:`mlprof.trace` and :mod:`mlprof.analyzers`, so
any layer above can depend on it without a cycle.
"""

from mlprof.results.findings import NS_PER_MS, CounterDiagnosis, Diagnosis, Finding, PlanStep, plain
from mlprof.results.measurements import (
    Analysis,
    CounterAnalysis,
    RankAnalysis,
    ReducedRank,
    analysed_windows,
    analysis_window,
    trace_span,
)
from mlprof.results.report import Report

__all__ = [
    "NS_PER_MS",
    "Analysis",
    "CounterAnalysis",
    "CounterDiagnosis",
    "Diagnosis",
    "Finding",
    "PlanStep",
    "RankAnalysis",
    "ReducedRank",
    "Report",
    "analysed_windows",
    "analysis_window",
    "plain",
    "trace_span",
]
