"""SHAPE001 (misaligned tensor-core GEMMs) on real A100 traces, counted against the raw JSON; quiet where
the tensor-core kernels are aligned (H100 TF32 align4) or there are no tensor-core GEMMs (2080 Ti FP32)."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from mlprof.analysis import analyze_trace
from mlprof.trace.loader import load_trace

from conftest import external

NEG_QUEUE = "hta/tests/data/negative_queue_length_values_check/rank0.json.gz"
SIDNB13 = "sidnb13__torch-profiling-tutorial/dc3b0e7228dd_851.1752215573993169006.pt.trace.json"
PARAM_RESNET = "facebookresearch__param/resnet_kineto.json.gz"


def test_align1_tensor_core_gemms_on_a100_are_counted_like_the_raw_json() -> None:
    path = external(NEG_QUEUE)
    with gzip.open(path, "rt") as fh:
        events = [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]
    steps = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["name"].startswith("ProfilerStep#")]
    inside = [e for e in events if e.get("cat") == "kernel" and any(a <= e["ts"] < b for a, b in steps)]
    bad = [e for e in inside if "tensorop" in e["name"] and re.search(r"_align[12]\b", e["name"])]
    gemm = [e for e in inside if "gemm" in e["name"]]
    finding = {f.rule: f for f in analyze_trace(load_trace(path)).findings}["SHAPE001"]
    assert finding.category == "shape_alignment" and finding.time_lost_ns_per_step == 0
    ev = finding.evidence
    assert ev["misaligned_kernels_per_step"] == round(len(bad) / len(steps), 1)
    assert ev["misaligned_gemm_ms_per_step"] == pytest.approx(sum(e["dur"] for e in bad) / len(steps) / 1000, abs=1e-3)
    # mlprof's GEMM class also holds cuBLAS helpers (splitKreduce) that have no "gemm" in their name
    assert ev["share_of_gemm_time"] == pytest.approx(sum(e["dur"] for e in bad) / sum(e["dur"] for e in gemm), abs=5e-3)
    assert all("align1" in k["kernel"] for k in ev["top_kernels"])
    assert "multiple of 8" in finding.fix


@pytest.mark.parametrize("relative", [SIDNB13, PARAM_RESNET])
def test_aligned_or_fp32_gemms_are_quiet(relative: str) -> None:
    assert "SHAPE001" not in {f.rule for f in analyze_trace(load_trace(external(relative))).findings}
