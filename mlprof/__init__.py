"""mlprof: profiling and trace analysis for PyTorch GPU jobs.

The flow is one direction: trace files -> :mod:`mlprof.trace` (columnar tables,
int64 nanoseconds) -> :mod:`mlprof.analyzers` (measurements) -> :mod:`mlprof.rules`
(findings) -> :mod:`mlprof.report` (text, JSON, markdown).

In a training script: ``mlprof.profile``, ``mlprof.range`` and ``mlprof.step`` (see
:mod:`mlprof.collectors`). They are loaded on first use, so ``import mlprof`` never
imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "profile", "range", "step"]

if TYPE_CHECKING:
    from mlprof.collectors.profile import profile, step
    from mlprof.collectors.ranges import range

_LAZY = {
    "profile": "mlprof.collectors.profile",
    "step": "mlprof.collectors.profile",
    "range": "mlprof.collectors.ranges",
}


def __getattr__(name: str) -> Any:
    """Load the in-training-script API on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlprof' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
