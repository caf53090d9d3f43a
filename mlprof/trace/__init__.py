"""Trace files -> the columnar trace model (see :mod:`mlprof.trace.model`)."""

from mlprof.trace.loader import load_job, load_trace
from mlprof.trace.model import DeviceInfo, Trace, TraceMeta

__all__ = ["DeviceInfo", "Trace", "TraceMeta", "load_job", "load_trace"]
