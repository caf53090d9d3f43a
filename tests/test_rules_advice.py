"""Advice that fits the job: precision by GPU architecture (AMP001), optimizer advice by optimizer (FUSE002)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlprof.analysis import analyze_trace
from mlprof.trace.loader import load_trace

from conftest import X, external, kernel, write_trace

PARAM_RESNET = "facebookresearch__param/resnet_kineto.json.gz"  # RTX 2080 Ti, sm75
DF_INDEX = "hta/tests/data/df_index_resolver/df_index_resolver.json.gz"  # SGD, per-parameter kernels


def _finding(path: Path, rule: str):  # type: ignore[no-untyped-def]
    return {f.rule: f for f in analyze_trace(load_trace(path)).findings}[rule]


def test_turing_gets_fp16_with_grad_scaler_not_bf16_or_tf32() -> None:
    f = _finding(external(PARAM_RESNET), "AMP001")
    assert "GradScaler" in f.fix and "float16" in f.fix
    assert "bfloat16" not in f.fix and "tf32" not in f.fix.lower()
    assert f.evidence["architecture"].startswith("sm75")
    # The ratio the estimate is set against: 2080 Ti FP16 tensor 53.8 vs FP32 13.4 TFLOPS (spec table).
    assert f.evidence["peak_tensor_core_to_fp32_ratio"] == 4.0 and f.evidence["assumed_speedup_on_fp32_matmuls"] == 2.0
    assert "4.0x" in f.confidence_reason


def _sgemm_trace(tmp_path: Path, name: str, major: int, minor: int) -> Path:
    """4 steps of 10 FP32 SIMT matmul kernels of 200 us (GPU busy with FP32 GEMMs)."""
    events = []
    corr = 1
    for step in range(4):
        t0 = 1_000.0 + step * 3_000.0
        events.append(X("user_annotation", f"ProfilerStep#{step}", t0, 2_500.0))
        for i in range(10):
            ts = t0 + 20 + i * 240
            events.append(X("cpu_op", "aten::mm", ts, 15.0))
            events.append(X("cuda_runtime", "cudaLaunchKernel", ts + 5, 5.0, correlation=corr))
            events.append(kernel("volta_sgemm_128x64_nn", ts + 12, 200.0, corr=corr))
            corr += 1
    props = [{"id": 0, "name": name, "totalGlobalMem": 40 << 30, "computeMajor": major, "computeMinor": minor}]
    return write_trace(tmp_path / f"sgemm_{major}{minor}.json", events, deviceProperties=props)


@pytest.mark.parametrize(
    ("gpu", "major", "minor", "ampere"),
    [("NVIDIA A100-SXM4-40GB", 8, 0, True), ("Tesla V100-SXM2-16GB", 7, 0, False), ("Tesla T4", 7, 5, False)],
)
def test_precision_advice_follows_the_architecture(
    tmp_path: Path, gpu: str, major: int, minor: int, ampere: bool
) -> None:
    f = _finding(_sgemm_trace(tmp_path, gpu, major, minor), "AMP001")
    assert f.evidence["architecture"].startswith(f"sm{major}{minor}")
    if ampere:
        assert "bfloat16" in f.fix and "allow_tf32" in f.fix and "GradScaler" not in f.fix
        assert "BF16" in f.title
    else:
        assert "GradScaler" in f.fix and "float16" in f.fix and "bfloat16" not in f.fix and "tf32" not in f.fix
        assert "FP16" in f.title


def test_sgd_user_is_told_about_sgd_not_adamw() -> None:
    f = _finding(external(DF_INDEX), "FUSE002")
    assert f.evidence["optimizer"] == ["SGD"] and f.evidence["diagnosis"] == "per_parameter_update"
    assert f.fix.startswith("torch.optim.SGD(") and "AdamW" not in f.fix


def _optimizer_trace(tmp_path: Path, optimizer: str, multi_tensor: bool, amp_check: bool = False) -> Path:
    """4 steps: 2 ms of forward kernels, then Optimizer.step#<optimizer>.step launching 30 per-parameter
    elementwise kernels (and, with ``multi_tensor``, one multi_tensor_apply update first; with ``amp_check``,
    GradScaler's multi-tensor inf check before the optimizer, outside it)."""
    events = []
    corr = 1

    def launch(ts: float, name: str, dur: float) -> None:
        nonlocal corr
        events.append(X("cuda_runtime", "cudaLaunchKernel", ts, 6.0, correlation=corr))
        events.append(kernel(name, ts + 8, dur, corr=corr))
        corr += 1

    for step in range(4):
        t0 = 1_000.0 + step * 4_000.0
        events.append(X("user_annotation", f"ProfilerStep#{step}", t0, 3_800.0))
        events.append(X("cpu_op", "aten::mm", t0 + 10, 20.0))
        launch(t0 + 12, "ampere_sgemm_128x64_nn", 1_900.0)
        if amp_check:
            launch(t0 + 30, "void at::native::multi_tensor_apply_kernel<_amp_foreach_non_finite_check>", 30.0)
        opt0 = t0 + 2_000
        events.append(X("user_annotation", f"Optimizer.step#{optimizer}.step", opt0, 1_700.0))
        if multi_tensor:
            launch(opt0 + 5, "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<adam>", 40.0)
        for i in range(30):
            ts = opt0 + 60 + i * 50
            events.append(X("cpu_op", "aten::lerp_", ts, 30.0))
            launch(ts + 10, "void at::native::vectorized_elementwise_kernel<4, lerp_kernel>", 4.0)
    props = [{"id": 0, "name": "NVIDIA A100-SXM4-40GB", "totalGlobalMem": 40 << 30, "computeMajor": 8}]
    return write_trace(tmp_path / f"opt_{optimizer}.json", events, deviceProperties=props)


def test_fused_optimizer_user_is_not_told_to_switch(tmp_path: Path) -> None:
    f = _finding(_optimizer_trace(tmp_path, "FusedAdam", multi_tensor=True), "FUSE002")
    assert f.evidence["diagnosis"] == "per_tensor_work_beside_fused_update"
    assert f.evidence["multi_tensor_kernels_in_optimizer_per_step"] == 1.0
    assert "fused=True" not in f.fix and "foreach=True" not in f.fix and "keep the fused" in f.fix
    assert "already multi-tensor" in f.title


def test_plain_adam_with_a_multi_tensor_kernel_elsewhere_is_not_taken_for_fused(tmp_path: Path) -> None:
    f = _finding(_optimizer_trace(tmp_path, "Adam", multi_tensor=False, amp_check=True), "FUSE002")
    assert f.evidence["multi_tensor_kernels_per_step"] == 1.0  # GradScaler's check, outside the optimizer
    assert f.evidence["multi_tensor_kernels_in_optimizer_per_step"] == 0.0
    assert f.evidence["diagnosis"] == "per_parameter_update" and "fused=True" in f.fix


@pytest.mark.parametrize(
    ("optimizer", "kind", "words"), [("EMA", "ema", "_foreach_lerp_"), ("Shampoo", "shampoo", "precondition")]
)
def test_other_optimizers_are_named_for_what_they_are(tmp_path: Path, optimizer: str, kind: str, words: str) -> None:
    f = _finding(_optimizer_trace(tmp_path, optimizer, multi_tensor=False), "FUSE002")
    assert f.evidence["diagnosis"] == kind and words in f.fix
    assert "fused=True" not in f.fix


CLOVERLEAF = "hpcgroup__pipit/perlmutter-cloverleaf-cuda.sqlite"  # a CUDA/Fortran app's Nsight export


def test_no_pytorch_advice_for_a_cuda_application() -> None:
    ra = analyze_trace(load_trace(external(CLOVERLEAF)))
    found = {f.rule: f for f in ra.findings}
    assert {"SYNC001", "DATA002"} <= set(found)
    pytorch_words = ("DataLoader", ".item()", "torch.", "non_blocking", "pin_memory")
    for f in ra.findings:
        assert not any(w in f.fix for w in pytorch_words), (f.rule, f.fix)
    assert "cudaDeviceSynchronize" in found["SYNC001"].title and "cudaMemcpyAsync" in found["SYNC001"].fix
    assert "cudaMallocHost" in found["DATA002"].fix
    assert not any("with_stack" in n for n in ra.diagnosis.record_next)  # type: ignore[union-attr]


def test_pytorch_trace_keeps_pytorch_advice() -> None:
    found = {f.rule: f for f in analyze_trace(load_trace(external(PARAM_RESNET))).findings}
    assert "pin_memory=True" in found["DATA002"].fix
