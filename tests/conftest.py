"""Shared fixtures: where the real third-party traces live, and a builder for tiny traces."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlprof.trace import Trace
from mlprof.trace.model import TABLES

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "external_traces"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def external(relative: str) -> Path:
    """A file under ../shared/external_traces, or skip the test when the folder is absent."""
    path = EXTERNAL / relative
    if not path.exists():
        pytest.skip(f"real trace not available: {path}")
    return path


def write_trace(path: Path, events: list[dict[str, Any]], **header: Any) -> Path:
    """Write a Kineto-style trace (gzipped when the name ends in .gz)."""
    doc = {"schemaVersion": 1, **header, "traceEvents": events}
    data = json.dumps(doc, indent=1).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def X(cat: str, name: str, ts: float, dur: float, pid: Any = 1, tid: Any = 1, **args: Any) -> dict[str, Any]:
    """A complete ("X") event, times in microseconds like Kineto writes them."""
    ev: dict[str, Any] = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}
    if args:
        ev["args"] = args
    return ev


def kernel(name: str, ts: float, dur: float, stream: int = 7, corr: int = 0) -> dict[str, Any]:
    return X("kernel", name, ts, dur, pid=0, tid=stream, device=0, stream=stream, correlation=corr)


def assert_same_tables(a: Trace, b: Trace, *, meta: bool = True) -> None:
    """Every table identical (values, dtypes, order); with ``meta``, what the reader saw too."""
    for name in TABLES:
        pd.testing.assert_frame_equal(a.table(name), b.table(name), obj=name)
    if meta:
        assert a.meta.num_events == b.meta.num_events
        assert a.meta.rank == b.meta.rank
        assert a.meta.devices == b.meta.devices
        assert a.meta.notes == b.meta.notes
        assert a.meta.step_source == b.meta.step_source
