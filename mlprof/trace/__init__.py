"""Trace files -> the columnar trace model (see :mod:`mlprof.trace.model`).

The names below are loaded on first use (PEP 562): importing a submodule such as
:mod:`mlprof.trace.build` must not import pandas, so that the CLI's read-ahead process
(:mod:`mlprof.trace.prefetch`) decodes a trace while the main process imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlprof.lazy import lazy_getattr

if TYPE_CHECKING:
    from mlprof.trace.loader import load_job, load_trace
    from mlprof.trace.model import DeviceInfo, Trace, TraceMeta

_LAZY = {
    "load_job": "mlprof.trace.loader",
    "load_trace": "mlprof.trace.loader",
    "DeviceInfo": "mlprof.trace.model",
    "Trace": "mlprof.trace.model",
    "TraceMeta": "mlprof.trace.model",
}

__getattr__ = lazy_getattr(__name__, globals(), _LAZY)


__all__ = ["DeviceInfo", "Trace", "TraceMeta", "load_job", "load_trace"]
