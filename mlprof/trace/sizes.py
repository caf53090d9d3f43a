"""The file sizes that choose how a trace is read (one process, worker processes, read ahead).

Standard library only: the CLI's read-ahead (:mod:`mlprof.trace.prefetch`) checks them before
anything else is imported.
"""

from __future__ import annotations

PARALLEL_MIN_JSON_BYTES = 48 << 20
"""JSON from which worker processes decode the slices (below it one process reads)."""

GZIP_RATIO_GUESS = 10
"""Kineto JSON gzips 10-20x: the JSON a gzip file of a given size is taken to hold."""


def expected_json_bytes(file_bytes: int, gzipped: bool) -> int:
    """The JSON bytes a trace file of ``file_bytes`` on disk is taken to hold (before reading it)."""
    return file_bytes * GZIP_RATIO_GUESS if gzipped else file_bytes
