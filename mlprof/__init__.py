"""mlprof: profiling and trace analysis for PyTorch GPU jobs.

The flow is one direction: trace files -> :mod:`mlprof.trace` (columnar tables,
int64 nanoseconds) -> :mod:`mlprof.analyzers` (measurements) -> :mod:`mlprof.rules`
(findings) -> :mod:`mlprof.report` (text, JSON, markdown).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
