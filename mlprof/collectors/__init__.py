"""Collectors that run inside a training job: profiler, ranges, GPU counters, run metadata.

Everything here is written so that profiling can never take the training job down:
failures are recorded in a :class:`~mlprof.collectors.faults.FaultLog`, one warning is
printed per run, and what was already collected is kept. ``torch`` is imported only
when a collector is used, never by ``import mlprof``.
"""
