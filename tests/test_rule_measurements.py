"""The measurements rules stand on: kernel classes, enclosing ops, chains, memory trend, cross-rank waits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlprof.analysis import analyze_trace
from mlprof.analyzers.enclosing import innermost_enclosing, source_lines
from mlprof.analyzers.gpu_specs import lookup
from mlprof.analyzers.kernels import chain_savings, classify_name
from mlprof.analyzers.rank_skew import rank_skew
from mlprof.trace.loader import load_trace

from conftest import X, kernel, write_trace

MIB = 1 << 20


@pytest.mark.parametrize(
    ("name", "klass"),
    [
        ("volta_sgemm_128x64_nn", "gemm_fp32"),
        ("void implicit_convolve_sgemm<float, float, 1024, 6, 7, 3, 3, 5, 1, false, true, true>(int)", "gemm_fp32"),
        ("volta_scudnn_winograd_128x128_ldg1_ldg4_relu_tile148t_nt_v1", "gemm_fp32"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm_tensor"),
        ("volta_h884gemm_64x128_ldg8_nn", "gemm_tensor"),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NNT", "gemm_tensor"),
        ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)", "comm"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "memory_bound"),
        ("void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float>>", "memory_bound"),
        ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, 512, true, 1>", "memory_bound"),
        ("void (anonymous namespace)::softmax_warp_forward<float, float, float, 10, true, false>", "memory_bound"),
        ("triton_poi_fused_add_mul_0", "compiled"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128>>", "attention"),
        ("void clover::par_ranged1d_kernel<update_halo_kernel(int)::[lambda(int) (instance 5)]>", "other"),
    ],
)
def test_kernel_classes_on_real_names(name: str, klass: str) -> None:
    assert classify_name(name, name.startswith("nccl")) == klass


def test_gpu_spec_lookup_by_kineto_device_name() -> None:
    v100 = lookup("Tesla V100-SXM2-32GB")
    assert v100 is not None and v100.bandwidth_gbs == 900 and v100.memory_bytes == 32 * 10**9
    assert lookup("NVIDIA H100 80GB HBM3").name == "H100 SXM"  # type: ignore[union-attr]
    assert lookup("NVIDIA A100-SXM4-80GB").name == "A100 80GB SXM"  # type: ignore[union-attr]
    assert lookup("AMD Instinct MI300X").name == "MI300X"  # type: ignore[union-attr]
    assert lookup("Some Future GPU") is None and lookup(None) is None


def test_chain_saving_is_chain_minus_its_longest_kernel() -> None:
    # stream 1: A(mem 10) B(mem 30) C(gemm 100) D(mem 20) E(mem 20) F(mem 5); stream 2: G(mem 50) alone
    ts = np.array([0, 10, 40, 140, 160, 180, 0])
    dur = np.array([10, 30, 100, 20, 20, 5, 50])
    stream = np.array([1, 1, 1, 1, 1, 1, 2])
    member = np.array([True, True, False, True, True, True, True])
    saving, chain = chain_savings(ts, dur, stream, member)
    assert saving.sum() == pytest.approx((40 - 30) + (45 - 20))
    assert chain[2] == -1 and chain[6] == -1  # a gemm, a lone kernel
    assert chain[0] == chain[1] != chain[3]
    # A gap longer than the limit cuts the chain.
    saving, _ = chain_savings(ts, dur, stream, member, max_gap_ns=-1)
    assert saving.sum() == 0


def test_innermost_enclosing_picks_the_deepest_range() -> None:
    ranges = pd.DataFrame(
        {
            "ts": [0, 10, 20, 60, 0],
            "end": [100, 50, 30, 90, 100],
            "tid": [1, 1, 1, 1, 2],
        }
    )
    q_ts = np.array([25, 40, 70, 95, 25, 200])
    q_end = np.array([26, 45, 80, 96, 26, 201])
    q_tid = np.array([1, 1, 1, 1, 2, 1])
    assert innermost_enclosing(q_ts, q_end, q_tid, ranges).tolist() == [2, 1, 3, 0, 4, -1]


def _sync_trace(tmp_path: Path) -> Path:
    events = [X("user_annotation", f"ProfilerStep#{i}", 1000 * i, 1000) for i in range(4)]
    for i in range(4):
        base = 1000 * i
        events += [
            X("python_function", "train.py(57): train_step", base + 10, 900),
            X("python_function", "torch/_tensor.py(100): item", base + 300, 300),
            X("cpu_op", "aten::item", base + 310, 280),
            X("cpu_op", "aten::_local_scalar_dense", base + 320, 260),
            X("cuda_runtime", "cudaMemcpyAsync", base + 330, 20, correlation=10 + i),
            X("cuda_runtime", "cudaStreamSynchronize", base + 350, 200),
            X("cuda_runtime", "cudaLaunchKernel", base + 20, 10, correlation=100 + i),
            X("cuda_runtime", "cudaLaunchKernel", base + 700, 10, correlation=200 + i),
            kernel("volta_sgemm_128x64_nn", base + 40, 500, corr=100 + i),
            X(
                "gpu_memcpy",
                "Memcpy DtoH (Device -> Pageable)",
                base + 545,
                4,
                pid=0,
                tid=7,
                device=0,
                stream=7,
                correlation=10 + i,
                bytes=4,
            ),
            kernel("volta_sgemm_128x64_nn", base + 720, 250, corr=200 + i),
        ]
    return write_trace(tmp_path / "sync.json", events)


def test_sync_finding_names_the_op_and_the_python_line(tmp_path: Path) -> None:
    ra = analyze_trace(load_trace(_sync_trace(tmp_path)))
    sync = next(f for f in ra.findings if f.rule == "SYNC001")
    site = sync.evidence["sites"][0]
    assert site["op"] == "aten::_local_scalar_dense"
    assert site["call"] == "cudaStreamSynchronize"
    assert site["source"] == "train.py(57): train_step"
    assert site["per_step"] == 1.0
    # GPU idle from the end of the first kernel (540) to the next kernel (720), minus the 4 us copy:
    # the sync (until 550) and the drained queue until the launch at 700 are idle_sync; 700-720 is launch.
    assert sum(sync.claimed.values()) == pytest.approx((550 - 549 + 150) * 1000, abs=5000)


def test_source_lines_skip_library_frames(tmp_path: Path) -> None:
    trace = load_trace(_sync_trace(tmp_path))
    lines = source_lines(trace.host, np.array([360_000]), np.array([370_000]), np.array([1]))
    assert lines == ["train.py(57): train_step"]


def _memory_trace(tmp_path: Path, totals: list[list[int]], name: str) -> Path:
    """One step per entry; each step allocates/frees so that Total Allocated passes through the given levels."""
    events: list[dict[str, object]] = []
    for i, levels in enumerate(totals):
        base = 10_000 * i
        events.append(X("user_annotation", f"ProfilerStep#{i}", base, 10_000))
        events.append(X("cpu_op", "aten::empty", base + 1, 9_000))
        prev = totals[i - 1][-1] if i else 0
        for j, level in enumerate(levels):
            events.append(
                {
                    "ph": "i",
                    "cat": "cpu_instant_event",
                    "name": "[memory]",
                    "pid": 1,
                    "tid": 1,
                    "ts": base + 10 + 100 * j,
                    "s": "t",
                    "args": {
                        "Device Type": 1,
                        "Device Id": 0,
                        "Addr": 1_000_000 + 1000 * (len(events)),
                        "Bytes": level - prev,
                        "Total Allocated": level,
                        "Total Reserved": 1 << 34,
                    },
                }
            )
            prev = level
    return write_trace(
        tmp_path / name,
        events,
        deviceProperties=[{"id": 0, "name": "NVIDIA A100-SXM4-80GB", "totalGlobalMem": 80 * 10**9}],
    )


def test_leak_is_found_warmup_and_sawtooth_are_not(tmp_path: Path) -> None:
    base = 1000 * MIB
    leak = [[base + 50 * MIB * i + 300 * MIB, base + 50 * MIB * i + 10 * MIB] for i in range(8)]
    warm = [[base + min(i, 2) * 200 * MIB + 300 * MIB, base + min(i, 2) * 200 * MIB] for i in range(8)]
    saw = [[base + 400 * MIB, base] for _ in range(8)]
    found = analyze_trace(load_trace(_memory_trace(tmp_path, leak, "leak.json")))
    mem = next(f for f in found.findings if f.rule == "MEM001")
    assert mem.evidence["growth_mib_per_step"] == pytest.approx(50.0)
    assert mem.evidence["device_capacity_mib"] == pytest.approx(80 * 10**9 / MIB, abs=0.1)
    peak = max(mem.evidence["peak_in_step_mib"])
    assert mem.evidence["steps_until_full"] == int((80 * 10**9 - peak * MIB) / (50 * MIB))
    for levels, name, word in ((warm, "warm.json", "warm-up"), (saw, "saw.json", "no leak")):
        ra = analyze_trace(load_trace(_memory_trace(tmp_path, levels, name)))
        assert "MEM001" not in {f.rule for f in ra.findings}
        assert word in ra.diagnosis.verdicts["MEM001"]  # type: ignore[union-attr]


def test_rank_skew_matches_collectives_without_clock_alignment(tmp_path: Path) -> None:
    traces = []
    for rank, (offset, arrive) in enumerate([(0, 100), (5_000_000, 400), (123, 250)]):
        events = [X("user_annotation", "ProfilerStep#1", offset, 2000)]
        # Each rank computes until `arrive`, then an all-reduce that ends at 500 (relative) on every rank.
        events.append(kernel("volta_sgemm_128x64_nn", offset + 10, arrive - 10))
        events.append(kernel("ncclKernel_AllReduce_RING_LL_Sum_float", offset + arrive, 500 - arrive + 100, stream=20))
        path = write_trace(tmp_path / f"r{rank}.json", events, distributedInfo={"rank": rank, "world_size": 3})
        traces.append(load_trace(path))
    skew = rank_skew(traces)
    assert skew is not None and skew.matched == 1
    per = skew.per_rank.set_index("rank")
    assert per.loc[1, "last_arrivals"] == 1  # rank 1 arrived last (at 400)
    assert per.loc[0, "wait_ns"] == 300_000 and per.loc[2, "wait_ns"] == 150_000 and per.loc[1, "wait_ns"] == 0
    assert per.loc[1, "caused_wait_ns"] == 450_000
