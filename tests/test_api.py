"""``mlprof.analyze`` is the one door: the same input gives the same report whichever way it comes in.

Inputs are built from the bundled ``sample_traces/`` (no ``../shared`` needed): a stepped
trace, and the same trace with its step markers removed (a stepless trace, analysed as
one window from the first to the last GPU event), each copied as ranks 0 and 1 of a job.
The stepless window is checked against the raw JSON, not against mlprof.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mlprof
from mlprof.cli import main
from mlprof.results import ReducedRank, Report
from mlprof.trace.model import Trace

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "sample_traces" / "synthetic" / "sync_point.json.gz"
STEP_NAMES = ("ProfilerStep#", "enumerate(DataLoader)", "Optimizer.step")
DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def _write_job(folder: Path, stepless: bool) -> Path:
    """``folder`` with rank-0 and rank-1 copies of the source trace (step markers removed if ``stepless``)."""
    doc = json.loads(gzip.decompress(SOURCE.read_bytes()))
    if stepless:
        doc["traceEvents"] = [e for e in doc["traceEvents"] if not str(e.get("name", "")).startswith(STEP_NAMES)]
    folder.mkdir(parents=True, exist_ok=True)
    for rank in (0, 1):
        copy = dict(doc, distributedInfo={**doc.get("distributedInfo", {}), "rank": rank, "world_size": 2})
        (folder / f"rank-{rank}.json.gz").write_bytes(gzip.compress(json.dumps(copy).encode()))
    return folder


def _raw_gpu_span_ms(path: Path) -> float:
    """First device event start to last device event end, from the raw JSON (µs -> ms)."""
    events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    device = [e for e in events if e.get("cat") in DEVICE_CATS and e.get("ph") == "X"]
    lo = min(float(e["ts"]) for e in device)
    hi = max(float(e["ts"]) + float(e["dur"]) for e in device)
    return (hi - lo) / 1000.0


def _essence(report: Report) -> dict[str, object]:
    """What must agree between one rank alone and a job of identical ranks (titles name the ranks)."""
    d = report.data
    return {
        "findings": [(f["rule"], f["time_lost_ms_per_step"], f["expected_speedup"]) for f in d["findings"]],
        "plan": d["plan"],
        "steps": d["steps"],
        "categories": {k: v["ms"] for k, v in d["breakdown"]["categories"].items()},
        "step_ms": d["checks"]["step_ms"],
    }


@pytest.mark.parametrize("stepless", [False, True], ids=["stepped", "stepless"])
def test_engine_equals_in_memory_equals_rank(tmp_path: Path, stepless: bool) -> None:
    job = _write_job(tmp_path / "job", stepless)
    engine = mlprof.analyze(job, jobs=1, counters=None)  # per-rank tasks, reduced on the client
    in_memory = mlprof.analyze(job, counters=None, keep_traces=True)  # every trace held here
    rank0 = mlprof.analyze(job, rank=0, counters=None)
    alone = mlprof.analyze(job / "rank-0.json.gz", counters=None)

    assert engine == in_memory  # the whole JSON report
    # The engine's ranks came back reduced (their own type, not a trace with emptied tables).
    assert all(isinstance(ra.trace, ReducedRank) for ra in engine.analysis.ranks)
    assert all(isinstance(ra.trace, Trace) for ra in in_memory.analysis.ranks)
    with pytest.raises(TypeError, match="keep_traces"):
        _ = engine.analysis.ranks[0].full_trace
    assert _essence(engine) == _essence(rank0) == _essence(alone)
    assert len(engine.data["findings"]) >= 1
    if stepless:
        assert engine.data["trace"]["step_source"] == "none"
        assert engine.step_ms == pytest.approx(_raw_gpu_span_ms(job / "rank-0.json.gz"), abs=1e-3)
    else:
        assert len(engine.steps) == len(alone.steps) >= 4


def test_report_round_trips_through_json(tmp_path: Path) -> None:
    report = mlprof.analyze(SOURCE)
    again = Report.from_json(report.to_json())
    assert again == report and again.analysis is None
    assert list(again.findings["rule"]) == [f["rule"] for f in json.loads(report.to_json())["findings"]]
    # What the CLI writes is the same report.
    out = tmp_path / "r.json"
    assert main(["analyze", str(SOURCE), "--format", "json", "-o", str(out)]) == 0
    assert Report.from_json(out) == report
    assert out.read_text() == report.to_json()


def test_report_tables_are_the_json_numbers() -> None:
    report = mlprof.analyze(SOURCE)
    raw = report.to_dict()
    assert report.findings["expected_speedup"].tolist() == [f["expected_speedup"] for f in raw["findings"]]
    assert report.plan["cumulative_speedup"].tolist() == [p["cumulative_speedup"] for p in raw["plan"]]
    assert report.breakdown.loc["compute", "ms"] == raw["breakdown"]["categories"]["compute"]["ms"]
    assert report.steps["dur_ms"].sum() == pytest.approx(sum(s["dur_ms"] for s in raw["steps"]))
    # the categories add up to the steps' wall time
    assert report.breakdown["ms"].sum() == pytest.approx(report.steps["dur_ms"].sum(), abs=1e-3)


def test_from_json_refuses_other_documents(tmp_path: Path) -> None:
    from mlprof.errors import BadInputError

    for text in ("[1, 2]", "{", '{"schema_version": "2.0"}', '{"traceEvents": []}'):
        with pytest.raises(BadInputError):
            Report.from_json(text)


def test_import_mlprof_stays_cheap() -> None:
    code = "import sys, mlprof; print(sorted(m for m in ('pandas', 'torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_low_memory_gives_the_same_steps_kernels_and_operators() -> None:
    whole = mlprof.analyze(SOURCE, counters=None)
    windowed = mlprof.analyze(SOURCE, counters=None, low_memory=True, jobs=1)
    for key in ("steps", "kernels", "operators"):
        assert windowed.data[key] == whole.data[key], key
    assert len(whole.data["kernels"]) > 0 and len(whole.data["operators"]) > 0
