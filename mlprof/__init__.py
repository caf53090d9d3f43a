"""mlprof: profiling and trace analysis for PyTorch GPU jobs.

The flow is one direction: trace files -> :mod:`mlprof.trace` (columnar tables,
int64 nanoseconds) -> :mod:`mlprof.analyzers` (measurements) -> :mod:`mlprof.rules`
(findings) -> :mod:`mlprof.results` (the report) -> :mod:`mlprof.report` (text, JSON,
markdown, HTML).

In a notebook: ``mlprof.analyze(path)`` returns a :class:`mlprof.Report` (findings,
plan, steps and breakdown as DataFrames; ``to_json()``/``Report.from_json()``).
In a training script: ``mlprof.profile``, ``mlprof.range`` and ``mlprof.step`` (see
:mod:`mlprof.collectors`). Everything is loaded on first use, so ``import mlprof``
imports neither torch nor pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlprof.lazy import lazy_getattr

__version__ = "0.1.0"

__all__ = ["Report", "__version__", "analyze", "profile", "range", "step"]

if TYPE_CHECKING:
    from mlprof.api import analyze
    from mlprof.collectors.profile import profile, step
    from mlprof.collectors.ranges import range
    from mlprof.results import Report

_LAZY = {
    "analyze": "mlprof.api",
    "Report": "mlprof.results",
    "profile": "mlprof.collectors.profile",
    "step": "mlprof.collectors.profile",
    "range": "mlprof.collectors.ranges",
}

__getattr__ = lazy_getattr("mlprof", globals(), _LAZY)
"""Loads the public API on first use (PEP 562): the collectors must not pull pandas into a training job."""
