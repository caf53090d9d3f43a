"""BATCH001 (small batch) on the real H100 transformer trace, against the raw JSON; quiet on ResNet-50."""

from __future__ import annotations

import json
from statistics import median

import pytest

from mlprof.analysis import analyze_trace
from mlprof.trace.loader import load_trace

from conftest import external

SIDNB13 = "sidnb13__torch-profiling-tutorial/dc3b0e7228dd_851.1752215573993169006.pt.trace.json"
R50_NW4 = "pytorch__kineto/resnet50_num_workers_4/worker0.1623213129365.pt.trace.json.gz"


def test_h100_inference_with_90_mib_of_80_gib_is_a_small_batch() -> None:
    path = external(SIDNB13)
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    steps = [
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and e["name"].startswith("ProfilerStep#")
    ]
    kernels = [e["dur"] for e in events if e.get("cat") == "kernel" and any(a <= e["ts"] < b for a, b in steps)]
    peak = max(
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 1 and any(a <= e["ts"] < b for a, b in steps)
    )
    capacity = doc["deviceProperties"][0]["totalGlobalMem"]
    f = {x.rule: x for x in analyze_trace(load_trace(path)).findings}["BATCH001"]
    assert f.category == "small_batch" and f.time_lost_ns_per_step == 0 and f.severity == "warning"
    ev = f.evidence
    assert ev["median_kernel_us"] == pytest.approx(median(kernels), abs=0.01)
    assert ev["peak_allocated_mib"] == round(peak / 2**20, 1)
    assert ev["memory_share"] == round(peak / capacity, 4) and ev["memory_share"] < 0.01
    assert ev["kernels_per_step"] == round(len(kernels) / len(steps), 1)
    assert ev["training"] is False and "reduce-overhead" in f.fix  # a forward pass only: CUDA graphs / batching


def test_resnet50_training_is_not_a_small_batch() -> None:
    ra = analyze_trace(load_trace(external(R50_NW4)))
    assert "BATCH001" not in {f.rule for f in ra.findings}
