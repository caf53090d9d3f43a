"""DP001 (nn.DataParallel): the CPU recording through mlprof.profile, a generated 4-GPU DataParallel trace
following the real range and frame names, and quiet on DDP and single-process traces."""

from __future__ import annotations

import json
from pathlib import Path

from mlprof.analysis import analyze_job, analyze_trace
from mlprof.trace.loader import load_job, load_trace

from conftest import SAMPLES, X, external, kernel, write_trace

RECORDED = SAMPLES / "scenarios" / "recorded"
MANIFEST = json.loads((RECORDED / "manifest.json").read_text())["scenarios"]["data_parallel"]
DLRM_RANK0 = "facebookresearch__param/dlrm_kineto/worker0_step_12.1694128201545.pt.trace.json"
R50_NW4 = "pytorch__kineto/resnet50_num_workers_4/worker0.1623213129365.pt.trace.json.gz"


def test_recorded_data_parallel_is_found_and_the_bare_module_is_not() -> None:
    bad = {f.rule: f for f in analyze_job(load_job(RECORDED / "data_parallel" / "bad"), "dp").findings}
    f = bad["DP001"]
    assert f.category == "data_parallel" and f.severity == "info"  # CPU: no devices to replicate to
    assert f.evidence["dp_forward_per_step"] == MANIFEST["bad"]["evidence"]["dp_forward_calls_per_step"] == 1.0
    assert f.evidence["gpus_driven_by_this_process"] == [] and "DistributedDataParallel" in f.fix
    fixed = analyze_job(load_job(RECORDED / "data_parallel" / "fixed"), "dp")
    assert MANIFEST["fixed"]["evidence"]["dp_forward_calls_per_step"] == 0
    assert "DP001" not in {x.rule for x in fixed.findings}


def test_generated_four_gpu_data_parallel(tmp_path: Path) -> None:
    """Names as torch 2.x records them: DataParallel.forward and the torch/nn/parallel frames."""
    events = []
    corr = 1
    phases = {"replicate.py(118): replicate": 300.0, "scatter_gather.py(90): scatter_kwargs": 120.0}
    for step in range(3):
        t0 = 1_000.0 + step * 10_000.0
        events.append(X("user_annotation", f"ProfilerStep#{step}", t0, 9_000.0))
        events.append(X("user_annotation", "DataParallel.forward", t0 + 10, 5_000.0))
        at = t0 + 20
        for frame, dur in phases.items():
            events.append(X("python_function", f"torch/nn/parallel/{frame}", at, dur))
            at += dur + 5
        events.append(X("python_function", "torch/nn/parallel/parallel_apply.py(31): parallel_apply", at, 3_000.0))
        for device in range(4):
            tid = 100 + device  # one Python thread per replica
            events.append(X("cpu_op", "aten::addmm", at + 10 + device, 50.0, tid=tid))
            events.append(X("cuda_runtime", "cudaLaunchKernel", at + 20 + device, 5.0, tid=tid, correlation=corr))
            k = kernel("ampere_sgemm_128x64_nn", at + 30 + device, 2_000.0, corr=corr)
            k["pid"], k["args"]["device"] = device, device
            events.append(k)
            corr += 1
        events.append(X("python_function", "torch/nn/parallel/scatter_gather.py(110): gather", at + 3_010, 200.0))
    ra = analyze_trace(load_trace(write_trace(tmp_path / "dp4.json", events)))
    f = {x.rule: x for x in ra.findings}["DP001"]
    assert f.evidence["gpus_driven_by_this_process"] == [0, 1, 2, 3] and f.severity == "warning"
    assert f.evidence["dp_forward_ms_per_step"] == 5.0
    assert f.evidence["ms_per_step_by_phase"] == {
        "gather": 0.2,
        "parallel_apply": 3.0,
        "replicate": 0.3,
        "scatter_kwargs": 0.12,
    }
    assert "4 GPUs from one process" in f.title


def test_ddp_rank_and_single_gpu_training_are_quiet() -> None:
    for relative in (DLRM_RANK0, R50_NW4):
        ra = analyze_trace(load_trace(external(relative)))
        assert "DP001" not in {f.rule for f in ra.findings}, relative
