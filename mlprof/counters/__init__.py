"""GPU counters (NVML, DCGM, nvidia-smi, Nsight Systems GPU metrics) as one table.

See :mod:`mlprof.counters.metrics` for the columns and the canonical metric names,
and :func:`load_counters` to read any supported file.
"""

from mlprof.counters.loader import load_counters, sniff_counters
from mlprof.counters.metrics import COLUMNS, METRICS, THROTTLE_REASONS, Metric, concat_counters, empty_counters

__all__ = [
    "COLUMNS",
    "METRICS",
    "THROTTLE_REASONS",
    "Metric",
    "concat_counters",
    "empty_counters",
    "load_counters",
    "sniff_counters",
]
