"""MEM001 without step markers: memory taken across the window and never given back.

Inputs: the memory_leak scenario recorded through mlprof.profile (bad: ``append(val_loss)``
keeps each step's graph; fixed: ``.detach()``) with its step markers removed, and a forward
pass that grows from 2 GiB to 20 GiB on a GPU and keeps it. Truths come from the raw
``[memory]`` events (a plain Python suffix minimum), not from mlprof.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mlprof.analysis import analyze_trace
from mlprof.trace.loader import load_trace

from conftest import SAMPLES, X, kernel, write_trace

RECORDED = SAMPLES / "scenarios" / "recorded" / "memory_leak"
GIB = 1 << 30
MIB = 1 << 20


def _stepless(side: str, tmp_path: Path) -> tuple[Path, list[dict]]:  # type: ignore[type-arg]
    with gzip.open(RECORDED / side / "trace.rank0.json.gz", "rt") as fh:
        doc = json.load(fh)
    markers = ("ProfilerStep#", "Optimizer.")
    doc["traceEvents"] = [e for e in doc["traceEvents"] if not str(e.get("name", "")).startswith(markers)]
    path = tmp_path / f"{side}.json"
    path.write_text(json.dumps(doc))
    memory = sorted(
        (e for e in doc["traceEvents"] if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})),
        key=lambda e: e["ts"],
    )
    return path, memory


def test_recorded_leak_without_step_markers_is_found_with_the_ops(tmp_path: Path) -> None:
    path, memory = _stepless("bad", tmp_path)
    totals = [int(e["args"]["Total Allocated"]) for e in memory]
    never_released_from_start = min(totals)  # the floor at the window start
    ra = analyze_trace(load_trace(path))
    assert ra.trace.meta.step_source == "none" and len(ra.steps) == 0
    finding = {f.rule: f for f in ra.findings}["MEM001"]
    ev = finding.evidence
    assert ev["never_released_at_start_mib"] == round(never_released_from_start / MIB, 2)
    assert ev["allocated_at_end_mib"] == round(totals[-1] / MIB, 2)
    assert ev["peak_mib"] == round(max(totals) / MIB, 2)
    assert ev["retained_mib"] >= 2.0 and ev["rising_quarters"] >= 3
    # The scenario keeps each step's activations: the never-freed bytes come from the forward ops.
    ops = {site["op"] for site in ev["never_freed_allocations_by_op"]}
    assert {"aten::mm", "aten::clamp_min"} <= ops
    assert finding.time_lost_ns_per_step == 0 and finding.confidence == "medium"


def test_recorded_fix_without_step_markers_is_not_a_leak(tmp_path: Path) -> None:
    path, _ = _stepless("fixed", tmp_path)
    ra = analyze_trace(load_trace(path))
    assert "MEM001" not in {f.rule for f in ra.findings}
    verdict = ra.diagnosis.verdicts["MEM001"]  # type: ignore[union-attr]
    assert "no steady rise" in verdict or "no leak" in verdict


def test_forward_pass_that_keeps_18_gib_is_reported(tmp_path: Path) -> None:
    """One inference forward (no steps) allocating 2 -> 20 GiB in 36 activations and freeing none."""
    events: list[dict] = []  # type: ignore[type-arg]
    total = 2 * GIB
    for i in range(36):
        ts = 1_000.0 + i * 100
        events.append(X("cpu_op", "aten::mm", ts, 60.0))  # allocation at ts + 25 lies inside the op
        events.append(X("cuda_runtime", "cudaLaunchKernel", ts + 10, 5.0, correlation=i + 1))
        events.append(kernel("gemm_kernel", ts + 20, 50.0, corr=i + 1))
        total += GIB // 2
        events.append(
            {
                "ph": "i",
                "cat": "cpu_instant_event",
                "s": "t",
                "name": "[memory]",
                "pid": 1,
                "tid": 1,
                "ts": ts + 25,  # inside the GPU span (the window of a stepless GPU trace)
                "args": {
                    "Total Allocated": total,
                    "Total Reserved": total,
                    "Bytes": GIB // 2,
                    "Addr": 1 << 40 | i << 32,
                    "Device Id": 0,
                    "Device Type": 1,
                },
            }
        )
    props = [{"id": 0, "name": "NVIDIA A100-SXM4-40GB", "totalGlobalMem": 40 * GIB, "computeMajor": 8}]
    ra = analyze_trace(load_trace(write_trace(tmp_path / "fwd.json", events, deviceProperties=props)))
    finding = {f.rule: f for f in ra.findings}["MEM001"]
    assert finding.evidence["device"] == "cuda:0"
    assert finding.evidence["allocated_at_end_mib"] == 20 * 1024
    assert finding.evidence["never_freed_allocations_by_op"][0] == {
        "op": "aten::mm",
        "bytes": 36 * (GIB // 2),
        "allocations": 36,
    }
    assert finding.severity == "warning"  # 20 of 40 GiB: not near full
    assert "20480.0 MiB" in finding.title


@pytest.mark.parametrize("side", ["bad", "fixed"])
def test_with_step_markers_the_per_step_trend_is_still_used(side: str) -> None:
    ra = analyze_trace(load_trace(RECORDED / side / "trace.rank0.json.gz"))
    leak = [f for f in ra.findings if f.rule == "MEM001"]
    assert bool(leak) is (side == "bad")
    if leak:
        assert "growth_mib_per_step" in leak[0].evidence
