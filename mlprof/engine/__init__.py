"""Running a job's per-rank work in parallel: here, in local processes, or as Dask tasks past one machine.

``trace files -> per-rank tasks (read, measure, judge, reduce) -> cross-rank reduction``.
Each rank is reduced where it is read (:mod:`mlprof.engine.rank_task`) to a compact
result of a few small tables, so the client never holds more than one full trace per
worker and its memory does not grow with the size of the traces; the cross-rank
steps (matching collectives, the straggler analysis, merging findings) run on the
client from those results (:mod:`mlprof.engine.job`). :mod:`mlprof.engine.executors`
runs the tasks; :mod:`mlprof.engine.sources` finds the rank files (local paths,
globs, fsspec URLs).
"""

from mlprof.engine.job import ENGINES, analyze_paths, combine

__all__ = ["ENGINES", "analyze_paths", "combine"]
