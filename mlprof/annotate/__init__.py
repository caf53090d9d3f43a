"""A copy of a trace with mlprof's findings drawn on it, for Perfetto / chrome://tracing.

Findings become Chrome-trace events on their own process, ``mlprof findings`` (one
track per finding): a complete event over every time range the finding concerns
(else over the steps it names), an instant event at its first range, and flow
arrows from each range to a kernel the finding is about, forward in time
(:mod:`mlprof.annotate.targets`). In a multi-rank job the straggler's copy is marked
(:mod:`mlprof.annotate.job`). The original file is never modified and never
overwritten; every byte of it is kept in the copy, the new events are appended to
``traceEvents``.
"""

from __future__ import annotations

from mlprof.annotate.events import FINDINGS_PROCESS, finding_events
from mlprof.annotate.writer import annotate_file

__all__ = ["FINDINGS_PROCESS", "annotate_file", "finding_events"]
