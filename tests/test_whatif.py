"""The what-if replay (mlprof.whatif): graph, simulator, fixes, and predictions against measurements.

Truth here never comes from the replay itself: hand-computed timelines of tiny traces, the
recorded traces (the replay must reproduce them), twins of synthetic traces generated with the
fix applied by ``sample_traces/generate_synthetic.py``'s own timing code, and real before/after
recordings (Kineto ResNet-50 num_workers 0 -> 4, the recorded scenario pairs).
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from mlprof.analysis import RankAnalysis, analyze_job, analyze_trace
from mlprof.rules.base import Finding
from mlprof.trace.loader import load_job, load_trace
from mlprof.whatif.graph import build_graph
from mlprof.whatif.measure import recorded_timeline, step_durations
from mlprof.whatif.predict import apply_fix
from mlprof.whatif.replay import RankReplay, replay_rank
from mlprof.whatif.simulate import simulate
from mlprof.whatif.transforms import detach_ops, drop_waits, merge_ops, remove_host_time, set_latency, set_op_durations

from conftest import EXTERNAL, SAMPLES, X, external, kernel, load_script, opts, write_trace

US = 1000
R50_NW0 = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"
R50_NW4 = "pytorch__kineto/resnet50_num_workers_4/worker0.1623213129365.pt.trace.json.gz"
DF_INDEX = "hta/tests/data/df_index_resolver/df_index_resolver.json.gz"
TRITON = "hta/tests/data/triton_example/triton_example.json.gz"
SIMPLE_ADD = "hta/tests/data/critical_path/simple_add/benchmark_result_493459_1694039959_trace.json.gz"
ALEXNET = "hta/tests/data/critical_path/alexnet/benchmark_result_2869224_1695835535_trace.json.gz"
TRACE_COMPARE_BASE = "hta/tests/data/trace_compare/base/base.json.gz"
TRACE_COMPARE_TEST = "hta/tests/data/trace_compare/test/test.json.gz"
DLRM = "facebookresearch__param/dlrm_kineto"
PARAM_RESNET = "facebookresearch__param/resnet_kineto.json.gz"
CLOVERLEAF = "hpcgroup__pipit/perlmutter-cloverleaf-cuda.sqlite"
DATALOADER = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"


def by_rule(findings: list[Finding]) -> dict[str, Finding]:
    return {f.rule: f for f in findings}


# ---- a tiny trace whose replays are computed by hand -------------------------------------------


def runtime(name: str, ts: float, dur: float, corr: int = 0) -> dict[str, Any]:
    return X("cuda_runtime", name, ts, dur, correlation=corr)


def tiny(tmp_path: Path, k2: str = "void at::native::elementwise_kernel<add>") -> Path:
    """One 1000 us step: launch K1 (300 us) at 100; DataLoader [200, 500); launch K2 (200 us) at 500;
    cudaStreamSynchronize from 530 until K2 ends (720) + 10 us; 270 us of Python to the step end.

    Both kernels start 20 us after their launch (an empty queue): the launch latency is 20 us."""
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 1000),
        runtime("cudaLaunchKernel", 100, 10, corr=1),
        kernel("void at::native::elementwise_kernel<relu>", 120, 300, corr=1),
        X("user_annotation", DATALOADER, 200, 300),
        runtime("cudaLaunchKernel", 500, 10, corr=2),
        kernel(k2, 520, 200, corr=2),
        runtime("cudaStreamSynchronize", 530, 200),
    ]
    return write_trace(tmp_path / "tiny.json", events, deviceProperties=[{"id": 0, "name": "Tesla V100-SXM2-32GB"}])


def replayed(path: Path) -> RankReplay:
    trace = load_trace(path)
    steps = trace.steps
    return replay_rank(trace, 0, steps["ts"].to_numpy(), steps["end"].to_numpy(), steps.iloc[:0])


def step_us(rr: RankReplay, graph: Any) -> float:
    return rr.mean_step_ns(graph) / US


def test_tiny_graph_has_the_recorded_edges_and_replays_exactly(tmp_path: Path) -> None:
    rr = replayed(tiny(tmp_path))
    g = rr.graph
    assert g.latency_ns == 20 * US
    assert g.n_host == 3 and g.n_gpu == 2
    assert g.h_wait.tolist() == [-1, -1, 1]  # the sync waits for K2
    assert g.h_tail[2] == 10 * US
    assert rr.recorded_ns == 1000 * US
    assert rr.error_pct == 0.0
    assert step_us(rr, g) == 1000.0


def test_remove_host_time_data_loader(tmp_path: Path) -> None:
    rr = replayed(tiny(tmp_path))
    # Without the 300 us of DataLoader: K2 launched at 200, ready 220 but queued behind K1 (ends 420),
    # runs 420-620; the sync starts 230 and returns at 630; 270 us of Python: the step ends at 900.
    fixed = remove_host_time(rr.graph, np.array([200 * US]), np.array([500 * US]), 0)
    assert step_us(rr, fixed) == 900.0
    # Keeping 50 us of the range: K2 is still queued behind K1, so the step still ends at 900.
    assert step_us(rr, remove_host_time(rr.graph, np.array([200 * US]), np.array([500 * US]), 50 * US)) == 900.0
    # Keeping 250 us (a batch that takes 250 us to hand over): K2 launched at 450 runs 470-670, the sync
    # returns at 680: 950. The DATA001 fix does the same with ready_batch_ms.
    assert step_us(rr, remove_host_time(rr.graph, np.array([200 * US]), np.array([500 * US]), 250 * US)) == 950.0
    assert step_us(rr, apply_fix(rr, "DATA001", rr.graph, opts("DATA001", ready_batch_ms=0.25), None, {})) == 950.0


def test_drop_waits_sync(tmp_path: Path) -> None:
    rr = replayed(tiny(tmp_path))
    # The sync no longer waits and costs nothing: Python resumes at 530, the step ends at 800 (K2 ends 720).
    assert step_us(rr, drop_waits(rr.graph, np.array([2]), 0)) == 800.0
    assert step_us(rr, apply_fix(rr, "SYNC001", rr.graph, opts("SYNC001"), None, {})) == 800.0


def test_amp_scales_fp32_matmuls_by_the_tensor_core_ratio(tmp_path: Path) -> None:
    from mlprof.analyzers.gpu_specs import lookup

    rr = replayed(tiny(tmp_path, k2="volta_sgemm_128x64_nn"))
    v100 = lookup("Tesla V100-SXM2-32GB")
    # V100: 125 / 15.7 tensor/FP32, capped at local_speedup 2: K2 takes 100 us, the sync returns at 630.
    assert step_us(rr, apply_fix(rr, "AMP001", rr.graph, opts("AMP001", local_speedup=2.0), v100, {})) == 900.0
    # A cap of 4: 50 us; the sync returns at 580.
    assert step_us(rr, apply_fix(rr, "AMP001", rr.graph, opts("AMP001", local_speedup=4.0), v100, {})) == 850.0


def test_detach_comm_kernel(tmp_path: Path) -> None:
    # A 400 us NCCL kernel at 120 on the compute stream; K2 launched at 200 waits behind it (520-720);
    # the host syncs at 210 on K2 and returns 10 us after it; the step ends 100 us later.
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 830),
        runtime("cudaLaunchKernel", 100, 10, corr=1),
        kernel("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 120, 400, corr=1),
        runtime("cudaLaunchKernel", 200, 10, corr=2),
        kernel("void at::native::elementwise_kernel<add>", 520, 200, corr=2),
        runtime("cudaStreamSynchronize", 210, 520),
    ]
    rr = replayed(write_trace(tmp_path / "comm.json", events))
    assert step_us(rr, rr.graph) == 830.0
    # Detached, K2 runs at 220-420 (launch + 20 us); the sync returns at 430, the step ends at 530 but the
    # NCCL kernel (launched in the step) ends at 520: bounded by its own time, 300 us saved.
    assert step_us(rr, detach_ops(rr.graph, np.array([0]))) == 530.0
    assert step_us(rr, apply_fix(rr, "COMM001", rr.graph, opts("COMM001"), None, {})) == 530.0


def launch_bound(tmp_path: Path, n: int = 4) -> Path:
    """Four 5 us kernels, each launched 30 us after the previous one (10 us calls, kernels 15 us after
    the call starts); step [0, 150)."""
    events = [X("user_annotation", "ProfilerStep#1", 0, 150)]
    for i in range(n):
        events.append(runtime("cudaLaunchKernel", 10 + 30 * i, 10, corr=i + 1))
        events.append(kernel("void at::native::vectorized_elementwise_kernel<mul>", 25 + 30 * i, 5, corr=i + 1))
    return write_trace(tmp_path / "lb.json", events)


def test_cuda_graph_collapses_dispatch(tmp_path: Path) -> None:
    rr = replayed(launch_bound(tmp_path))
    assert rr.graph.latency_ns == 15 * US
    # Captured: the host time from each launch to the next shrinks from 30 to 2 us: launches start at 10, 12,
    # 14 and 16; the last call keeps its 10 us and the 40 us after it: the host is done at 66. Kernels are
    # ready 2 us after their launch and cost 2 us each before they start: 14-19, 21-26, 28-33, 35-40.
    fixed = apply_fix(rr, "LAUNCH001", rr.graph, opts("LAUNCH001", graph_node_us=2.0), None, {})
    assert step_us(rr, fixed) == 66.0
    # The launches are 30 us apart: with max_dispatch_gap_us at 30 they are still dispatch; at 20 every
    # stretch is host work a graph would not capture, and the fix has nothing to collapse.
    assert (
        step_us(rr, apply_fix(rr, "LAUNCH001", rr.graph, opts("LAUNCH001", max_dispatch_gap_us=30.0), None, {})) == 66.0
    )
    assert apply_fix(rr, "LAUNCH001", rr.graph, opts("LAUNCH001", max_dispatch_gap_us=20.0), None, {}) is None
    # set_latency alone (no host change): kernels at launch + 2 us instead of + 15 us; the host paces: 150.
    assert step_us(rr, set_latency(rr.graph, np.arange(4), 2 * US, 0)) == 150.0


def test_fusion_merges_back_to_back_kernels_and_their_launches(tmp_path: Path) -> None:
    # Three memory-bound kernels back to back on the GPU (100, 50, 80 us) launched early by a host that
    # then waits for the last one: the fused kernel takes the longest (100 us) and launches once.
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 400),
        runtime("cudaLaunchKernel", 10, 10, corr=1),
        kernel("void at::native::vectorized_elementwise_kernel<add>", 30, 100, corr=1),
        runtime("cudaLaunchKernel", 20, 10, corr=2),
        kernel("void at::native::vectorized_elementwise_kernel<mul>", 131, 50, corr=2),
        runtime("cudaLaunchKernel", 30, 10, corr=3),
        kernel("void at::native::vectorized_elementwise_kernel<relu>", 182, 80, corr=3),
        runtime("cudaDeviceSynchronize", 40, 232),
    ]
    rr = replayed(write_trace(tmp_path / "fuse.json", events))
    # Fused: one 100 us kernel at 30-130; the other two launch calls cost nothing, so the sync starts at 20,
    # returns 10 us after 130 = 140; 128 us of host to the step end: 268.
    fixed = apply_fix(rr, "FUSE001", rr.graph, opts("FUSE001", max_gap_us=5.0, min_chain=2), None, {})
    assert step_us(rr, fixed) == 268.0
    assert step_us(rr, merge_ops(rr.graph, [np.array([0, 1, 2])], np.array([100 * US]))) == 268.0
    # Not back to back (a 20 us device gap allowed only with max_gap_us >= 1): nothing to fuse.
    assert (
        step_us(rr, apply_fix(rr, "FUSE001", rr.graph, opts("FUSE001", max_gap_us=0.5, min_chain=2), None, {})) == 400.0
    )


def test_allocator_calls_removed_in_steps_only(tmp_path: Path) -> None:
    events = [
        runtime("cudaMalloc", 0, 50),  # start-up, before the step: kept
        X("user_annotation", "ProfilerStep#1", 100, 300),
        runtime("cudaLaunchKernel", 110, 10, corr=1),
        kernel("void at::native::vectorized_elementwise_kernel<add>", 130, 20, corr=1),
        runtime("cudaFree", 150, 100),
        runtime("cudaLaunchKernel", 260, 10, corr=2),
        kernel("void at::native::vectorized_elementwise_kernel<add>", 280, 20, corr=2),
    ]
    rr = replayed(write_trace(tmp_path / "alloc.json", events))
    assert step_us(rr, rr.graph) == 300.0
    assert step_us(rr, apply_fix(rr, "ALLOC001", rr.graph, opts("ALLOC001"), None, {})) == 200.0


def test_pageable_copy_becomes_pinned_and_non_blocking(tmp_path: Path) -> None:
    # A pageable 4 MiB copy: the call [10, 110) returns when the copy (20-100) is done; a kernel follows.
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 300),
        runtime("cudaMemcpyAsync", 10, 100, corr=1),
        X("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 20, 80, pid=0, tid=7, device=0, stream=7, correlation=1),
        runtime("cudaLaunchKernel", 120, 10, corr=2),
        kernel("void at::native::vectorized_elementwise_kernel<add>", 140, 100, corr=2),
        runtime("cudaDeviceSynchronize", 140, 110),
    ]
    rr = replayed(write_trace(tmp_path / "h2d.json", events))
    assert rr.graph.h_wait[0] == 0  # the copy call waited for its own copy
    # Launch latency: the median of 10 and 20 us; an op launched onto an empty queue keeps its own delay up to
    # the 90th percentile (19 us): the kernel's last 1 us stays a residual.
    assert rr.graph.latency_ns == 15 * US and rr.graph.g_gap.tolist() == [0, 1 * US]
    # Pinned at 2x: the copy takes 40 us (20-60); the call costs a launch (10 us): the kernel launches at 30,
    # is ready at 49, starts after the copy + 1 us at 61, ends 161; the sync (from 50) returns at 171; the
    # step ends 50 us later: 221.
    assert (
        step_us(rr, apply_fix(rr, "DATA002", rr.graph, opts("DATA002"), None, {"bandwidth_ratio_used": 2.0})) == 221.0
    )


def test_pageable_copy_call_waits_for_its_stream_to_drain(tmp_path: Path) -> None:
    """A pageable cudaMemcpyAsync [10, 240) waits for kernel K [0, 200) to finish before its copy runs [200, 245):
    the call returns 5 us before the copy's recorded end (param resnet: up to 36 us, 70 ms of waiting in a
    90 ms call). The call waits for its copy (tail -5 us), so a faster K lets the host go on earlier."""
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 400),
        runtime("cudaLaunchKernel", 0, 5, corr=1),
        kernel("void gemm_k", 0, 200, corr=1),
        runtime("cudaMemcpyAsync", 10, 230, corr=2),
        X("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 200, 45, pid=0, tid=7, device=0, stream=7, correlation=2),
        runtime("cudaLaunchKernel", 250, 5, corr=3),
        kernel("void gemm_k2", 260, 40, corr=3),
    ]
    rr = replayed(write_trace(tmp_path / "drain.json", events))
    g = rr.graph
    assert g.h_wait.tolist() == [-1, 1, -1] and g.h_tail[1] == -5 * US
    assert step_us(rr, g) == 400.0 and rr.error_pct == 0.0
    # K halved: K [0, 100), the copy [100, 145), the call returns at 140; K2 launched at 150 (10 us of host
    # after the call, as recorded) starts 10 us later (9 us latency + 1 us residual) and ends at 200; the step
    # ends 145 us of host after that launch call: 150 + 5 + 145 = 300.
    faster = set_op_durations(g, np.array([0]), np.array([100 * US]))
    assert step_us(rr, faster) == 300.0


def test_async_copy_ending_after_its_call_did_not_wait(tmp_path: Path) -> None:
    """The same timeline with a device-to-device copy: cudaMemcpyAsync does not wait for the stream there, so
    a copy that starts during the call and ends 5 us after it is not waited for (B200: 19 such copies start
    11.8 us into 12 us calls). Only a pageable host-to-device copy or a synchronous cudaMemcpy counts."""
    for name, api, waited in (
        ("Memcpy DtoD (Device -> Device)", "cudaMemcpyAsync", False),
        ("Memcpy HtoD (Pinned -> Device)", "cudaMemcpyAsync", False),
        ("Memcpy HtoD (Pinned -> Device)", "cudaMemcpy", True),
    ):
        events = [
            X("user_annotation", "ProfilerStep#1", 0, 400),
            runtime("cudaLaunchKernel", 0, 5, corr=1),
            kernel("void gemm_k", 0, 200, corr=1),
            runtime(api, 10, 230, corr=2),
            X("gpu_memcpy", name, 200, 45, pid=0, tid=7, device=0, stream=7, correlation=2),
        ]
        g = replayed(write_trace(tmp_path / "async.json", events)).graph
        assert bool(g.h_wait[1] == 1) is waited, (name, api)


def test_optimizer_kernels_become_multi_tensor(tmp_path: Path) -> None:
    # Optimizer.step [100, 400): 10 per-parameter add kernels of 10 us, one launched every 30 us.
    events = [X("user_annotation", "ProfilerStep#1", 0, 500), X("user_annotation", "Optimizer.step#SGD.step", 100, 300)]
    for i in range(10):
        events.append(runtime("cudaLaunchKernel", 105 + 30 * i, 10, corr=i + 1))
        events.append(kernel("void at::native::vectorized_elementwise_kernel<add_>", 120 + 30 * i, 10, corr=i + 1))
    rr = replayed(write_trace(tmp_path / "opt.json", events))
    # One multi-tensor kernel of 100 - 9 * 2 = 82 us; the optimizer's host time 300 -> 30 us (one kernel):
    # the step ends 270 us earlier on the host (230); the fused kernel, launched at 105, ends at 202.
    params = opts("FUSE002", kernel_floor_us=2.0, foreach_launch_us=30.0)
    assert step_us(rr, apply_fix(rr, "FUSE002", rr.graph, params, None, {})) == 230.0


def test_host_gaps_bound(tmp_path: Path) -> None:
    rr = replayed(tiny(tmp_path))
    # Outside every recorded op and call: [0,100), [110,200), [510,530), [730,1000) = 480 us, all removed:
    # launch K1 at 0 (K1 20-320), DataLoader 10-310, launch K2 310 (K2 330-530), sync returns 540.
    assert step_us(rr, apply_fix(rr, "HOST001", rr.graph, opts("HOST001", removable_share=1.0), None, {})) == 540.0
    # Half of each gap (the default): launch K1 at 50 (K1 70-370), DataLoader 105-405, launch K2 at 405
    # (K2 425-625), the sync from 425 returns at 635, then 135 us of host: 770.
    assert step_us(rr, apply_fix(rr, "HOST001", rr.graph, opts("HOST001", removable_share=0.5), None, {})) == 770.0


# ---- replay of recorded traces ------------------------------------------------------------------

ABOVE_ONE_PCT = {
    # Why these replay above 1% (benchmarks/RESULTS.md has the table). They are multi-stream traces whose
    # ops lack launch correlations or whose cross-stream waits are not visible as an op ending just
    # before another starts; the replay falls back to the attribution estimate above 5%.
    "hta/tests/data/negative_queue_length_values_check/rank0.json.gz": "6 streams, 872 ops without a launch",
    "hta/tests/data/trace_compare/base/base.json.gz": "16 of 18 ops without a launch correlation",
    "hta/tests/data/trace_compare/test/test.json.gz": "16 of 17 ops without a launch correlation",
    "hta/tests/data/trace_diff/control/control.json.gz": "4 streams, waits between them not observed",
    "hta/tests/data/trace_diff/test/test.json.gz": "4 streams, 614 ops without a launch",
}


def real_traces() -> list[Path]:
    if not EXTERNAL.exists():
        return []
    return sorted(
        p
        for p in EXTERNAL.rglob("*.json*")
        if not p.name.endswith("_et.json.gz") and "sqlite" not in p.name and p.is_file()
    )


@pytest.mark.parametrize("path", real_traces() + sorted((SAMPLES / "synthetic").glob("*.json.gz")), ids=str)
def test_replay_reproduces_the_recording(path: Path) -> None:
    """The edge model (no residual delays) replays the analysed steps within 1% of the recording.

    The same analysis is the survey of every shared and bundled trace for issue 13's bounds: no
    finding above 10x (HOST001 was 131x and 100x on trace_compare base/test, whose replay error
    is too large to trust: the attribution estimate counted all unrecorded host time), and
    severity ``critical`` only with confidence high or medium."""
    trace = load_trace(path)
    ra = analyze_trace(trace)
    assert ra.diagnosis is not None and ra.diagnosis.whatif is not None
    rel = str(path.relative_to(EXTERNAL)) if EXTERNAL in path.parents else path.name
    for f in ra.findings:
        assert f.expected_speedup <= 10.0, (rel, f.rule, f.expected_speedup)
        assert f.severity != "critical" or f.confidence in ("high", "medium"), (rel, f.rule)
    rr = ra.diagnosis.whatif.ranks[0]
    if rel in ABOVE_ONE_PCT:
        return
    assert abs(rr.error_pct) <= 1.0, (rel, rr.error_pct)
    # And the full replay (residuals kept) is the recording itself.
    assert rr.mean_step_ns(rr.graph) == pytest.approx(rr.recorded_ns, rel=1e-9)


# ---- predictions against measurements -----------------------------------------------------------


@cache
def real(relative: str) -> RankAnalysis:
    return analyze_trace(load_trace(external(relative)))


def steady_median_ms(ra: RankAnalysis) -> float:
    """Median ProfilerStep time, first and last step set aside (warm-up, profiler stop)."""
    dur = ra.trace.steps["dur"].to_numpy(np.int64)[1:-1]
    return float(np.median(dur)) / 1e6


def test_resnet50_num_workers_prediction_matches_the_num_workers_4_run() -> None:
    nw0, nw4 = real(R50_NW0), real(R50_NW4)
    measured = steady_median_ms(nw0) / steady_median_ms(nw4)
    assert measured == pytest.approx(1.22, abs=0.02)
    data = by_rule(nw0.findings)["DATA001"]
    assert data.speedup_source == "replay"
    assert data.expected_speedup == pytest.approx(measured, rel=0.15)
    # The host paces this step: halving the FP32 matmuls alone gains nothing.
    amp = by_rule(nw0.findings)["AMP001"]
    assert amp.expected_speedup < 1.02 < amp.evidence["attribution_speedup"]


def test_df_index_resolver_exposed_comm_gains_nothing() -> None:
    comm = by_rule(real(DF_INDEX).findings)["COMM001"]
    assert comm.evidence["attribution_speedup"] > 1.2
    assert comm.expected_speedup < 1.02


def test_launch_bound_plan_is_bounded() -> None:
    ra = analyze_trace(load_trace(SAMPLES / "synthetic" / "launch_bound.json.gz"))
    plan = ra.diagnosis.plan  # type: ignore[union-attr]
    # 100 kernels of 5 us per 3.2 ms step: even with free dispatch the GPU needs 0.5 ms plus per-node costs.
    assert plan and plan[-1].cumulative_speedup < 5.0
    assert all(f.expected_speedup < 5.0 for f in ra.findings)


def test_param_resnet_pageable_copies_block_the_host_while_the_gpu_drains() -> None:
    """Param resnet: 56 pageable H2D copies in the steady steps; their cudaMemcpyAsync calls last up to 142 ms,
    most of it waiting for the previous step's kernels (the copy starts when the stream drains). The
    attribution claims only the exposed copy time (the GPU is busy during the wait): 1.03x; the replay,
    where the calls now wait for their copies, lets the host prepare the next batch meanwhile."""
    ra = real(PARAM_RESNET)
    h2d = by_rule(ra.findings)["DATA002"]
    # Independent truth: raw sums of the runtime calls that launched the pageable HtoD copies in the steps.
    with gzip.open(external(PARAM_RESNET)) as fh:
        raw = json.loads(fh.read())["traceEvents"]
    rr = ra.diagnosis.whatif.ranks[0]  # type: ignore[union-attr]
    starts, ends = rr.win_starts / 1e3, rr.win_ends / 1e3
    corr = {
        e["args"]["correlation"]
        for e in raw
        if e.get("cat") in ("gpu_memcpy", "Memcpy")
        and "Pageable -> Device" in e.get("name", "")
        and any(a <= e["ts"] < b for a, b in zip(starts, ends, strict=True))
    }
    calls = [
        e["dur"]
        for e in raw
        if e.get("cat") in ("cuda_runtime", "Runtime") and e.get("args", {}).get("correlation") in corr
    ]
    assert len(corr) == len(calls) == 56
    per_step_ms = sum(calls) / len(starts) / 1e3
    assert h2d.evidence["host_in_pageable_copy_calls_ms_per_step"] == pytest.approx(per_step_ms, abs=0.01)
    assert per_step_ms > 3 * h2d.evidence["exposed_copy_ms_per_step"]  # 67.6 ms vs 20.0 ms per step
    assert "the host waits" in h2d.title
    assert h2d.speedup_source == "replay" and h2d.evidence["attribution_speedup"] < 1.05
    assert 1.15 < h2d.expected_speedup < 1.4
    # B200's asynchronous device-to-device copies are not waited for: one blocking copy (inside its call).
    b200 = real("AMD-AGI__TraceLens/b200/eager_trace.json.gz").diagnosis.whatif.ranks[0].graph  # type: ignore[union-attr]
    assert int((b200.h_kind == 3).sum()) == 1


def test_no_finding_on_shared_traces_above_10x() -> None:
    triton = real(TRITON)
    host = by_rule(triton.findings).get("HOST001")
    assert host is None or host.expected_speedup <= 10.0
    # HOST001 is a bound, never "all unrecorded host time removed": on trace_compare (replay error -19%,
    # so the attribution estimate is used) it claimed 131x and 100x. Now at most removable_share (0.5)
    # of the idle time counts: speedup <= 1 / (1 - 0.5 * share of step) < 2x.
    for relative in (TRACE_COMPARE_BASE, TRACE_COMPARE_TEST):
        ra = real(relative)
        host = by_rule(ra.findings)["HOST001"]
        assert host.confidence == "low" and host.speedup_source == "attribution"
        share = host.evidence["share_of_step"]
        assert share > 0.98  # the step is all unrecorded host time
        assert host.expected_speedup == pytest.approx(1 / (1 - 0.5 * share), rel=1e-3)
        assert host.time_lost_ns_per_step / 1e6 == pytest.approx(
            0.5 * host.evidence["gpu_idle_outside_ops_ms_per_step"], abs=1e-3
        )
    job = analyze_job(load_job(external(DLRM)), "dlrm")
    assert all(f.expected_speedup <= 10.0 for f in job.findings)
    assert all(f.severity != "critical" or f.confidence in ("high", "medium") for f in job.findings)
    assert all(f.expected_speedup <= 10.0 for f in real(CLOVERLEAF).findings)
    for relative in (R50_NW0, R50_NW4, DF_INDEX):
        assert all(f.expected_speedup <= 10.0 for f in real(relative).findings)
    # HTA's critical-path micro-benchmarks: a harness's host work between launches is not dispatch a CUDA
    # graph removes (LAUNCH001 replayed 206x on simple_add and 144x on alexnet before max_dispatch_gap_us).
    for relative in (SIMPLE_ADD, ALEXNET):
        launch = by_rule(real(relative).findings).get("LAUNCH001")
        assert launch is None or launch.expected_speedup <= 10.0


def test_launch_bound_is_not_high_confidence_until_a_pair_measures_it() -> None:
    """LAUNCH001 ranks first on kineto nw0 (1.37x) but no recording has checked the CUDA-graph collapse."""
    launch = by_rule(real(R50_NW0).findings)["LAUNCH001"]
    assert launch.speedup_source == "replay" and launch.expected_speedup > 1.25
    assert launch.confidence == "medium" and launch.severity == "critical"
    assert "no recorded before/after pair has checked" in launch.confidence_reason


def test_severity_critical_needs_confidence() -> None:
    for relative in (R50_NW0, TRITON, DF_INDEX):
        for f in real(relative).findings:
            if f.severity == "critical":
                assert f.confidence in ("high", "medium")


RECORDED = SAMPLES / "scenarios" / "recorded"


@pytest.mark.parametrize(("scenario", "rule"), [("data_starvation", "DATA001"), ("unfused_optimizer", "FUSE002")])
def test_recorded_scenario_pairs_within_20_percent(scenario: str, rule: str) -> None:
    manifest = json.loads((RECORDED / "manifest.json").read_text())["scenarios"][scenario]
    measured = manifest["bad"]["trace_step_ns"]["mean"] / manifest["fixed"]["trace_step_ns"]["mean"]
    bad = analyze_job(load_job(RECORDED / scenario / "bad"), scenario)
    f = by_rule(bad.findings)[rule]
    assert f.speedup_source == "replay"
    assert f.expected_speedup == pytest.approx(measured, rel=0.20)


# ---- synthetic twins: the same generator, with the fix applied -------------------------------------


@cache
def generator() -> ModuleType:
    return load_script(SAMPLES / "generate_synthetic.py")


def twin_step_ms(builder: Any, tmp_path: Path, name: str) -> tuple[RankAnalysis, float]:
    path = tmp_path / name
    path.write_text(builder.document({"schemaVersion": 1, "deviceProperties": [generator().H100]}, name))
    ra = analyze_trace(load_trace(path))
    return ra, float(ra.trace.steps["dur"].mean()) / 1e6


def test_sync_pair_prediction_matches_the_twin_without_item(tmp_path: Path) -> None:
    gen = generator()
    us = gen.US

    def build(with_item: bool) -> Any:
        b = gen.TraceBuilder()
        t = gen.T0
        for n in range(2, 7):
            s = t
            b.annotation(gen.DATALOADER_NEXT, s, 150 * us)
            ext = b.op("aten::to", s + 150 * us, 50 * us)
            gen.launch_batch_copy(b, s + 155 * us, ext)
            h = s + 200 * us
            for (op_name, kern, _), kdur in zip(gen.FORWARD, (1000, 200, 1000, 300), strict=True):
                ext = b.op(op_name, h, 40 * us)
                b.launch(h + 5 * us, 10 * us, ext, name=kern, device_dur=kdur * us)
                h += 40 * us
            item = s + 400 * us
            if with_item:  # as scenario_sync_point: .item() blocks until the forward pass is done
                b.op("aten::item", item, 2400 * us)
                ext = b.op("aten::_local_scalar_dense", item + 5 * us, 2390 * us)
                b.launch(item + 10 * us, 10 * us, ext, name=gen.MEMCPY_DTOH, kind="memcpy", device_dur=5 * us)
                done = b.stream_sync(item + 25 * us, ext, return_after=15 * us)
            else:  # the value stays on the device: the host goes on at once
                done = item
            h = done + 1550 * us  # the same unprofiled Python after the value is (or is not) read
            for op_name, kern, kdur in gen.BACKWARD:
                ext = b.op(op_name, h, 40 * us)
                b.launch(h + 5 * us, 10 * us, ext, name=kern, device_dur=(kdur * 5 // 6) * us)
                h += 40 * us
            b.annotation("Optimizer.step#SGD.step", h, 40 * us)
            ext = b.op("aten::_foreach_add_", h, 40 * us)
            b.launch(h + 5 * us, 10 * us, ext, name=gen.FOREACH, device_dur=500 * us)
            t = max(b.stream_free[gen.COMPUTE_STREAM], h + 40 * us) + 175 * us
            b.annotation(f"ProfilerStep#{n}", s, t - s)
        return b

    bad, bad_ms = twin_step_ms(build(True), tmp_path, "sync_bad.json")
    _, fixed_ms = twin_step_ms(build(False), tmp_path, "sync_fixed.json")
    sync = by_rule(bad.findings)["SYNC001"]
    assert sync.speedup_source == "replay"
    assert sync.expected_speedup == pytest.approx(bad_ms / fixed_ms, rel=0.10)


def test_data_starvation_prediction_matches_the_twin_with_ready_batches(tmp_path: Path) -> None:
    gen = generator()

    def build(data_us: tuple[int, ...]) -> Any:
        b = gen.TraceBuilder()
        t = gen.T0
        for i, d in enumerate(data_us):
            t, _ = gen.training_step(b, t, number=i + 2, data=d * gen.US, scale=0.5, collate_op=True)
        return b

    bad, bad_ms = twin_step_ms(build(gen.DATA_US), tmp_path, "data_bad.json")
    _, fixed_ms = twin_step_ms(build((300,) * len(gen.DATA_US)), tmp_path, "data_fixed.json")
    data = by_rule(bad.findings)["DATA001"]
    assert data.expected_speedup == pytest.approx(bad_ms / fixed_ms, rel=0.05)


def test_measure_counts_device_work_that_outlives_the_host(tmp_path: Path) -> None:
    """A step is done when the host reached its end and the device finished what it launched."""
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 100),
        runtime("cudaLaunchKernel", 10, 10, corr=1),
        kernel("void at::native::vectorized_elementwise_kernel<add>", 30, 300, corr=1),
        X("user_annotation", "ProfilerStep#2", 100, 100),
        runtime("cudaLaunchKernel", 110, 10, corr=2),
        kernel("void at::native::vectorized_elementwise_kernel<add>", 330, 50, corr=2),
    ]
    path = write_trace(tmp_path / "spill.json", events)
    trace = load_trace(path)
    graph = build_graph(trace)
    starts, ends = trace.steps["ts"].to_numpy(), trace.steps["end"].to_numpy()
    rec = step_durations(graph, recorded_timeline(graph), starts, ends, recorded=True)
    assert (rec / US).tolist() == [330.0, 50.0]
    assert (step_durations(graph, simulate(graph), starts, ends) / US).tolist() == [330.0, 50.0]


def test_healthy_trace_is_paced_by_the_busy_gpu() -> None:
    """The synthetic healthy trace keeps its GPU busy ~95% of each step; the host probe gains 4.5% there only
    because the host's unrecorded wait for the device is host time in the graph: the device paces it."""
    ra = analyze_trace(load_trace(SAMPLES / "synthetic" / "healthy.json.gz"))
    w = ra.diagnosis.whatif  # type: ignore[union-attr]
    gpu = ra.trace.gpu
    for step, p in zip(ra.trace.steps.itertuples(), w.ranks[0].pacing, strict=True):
        inside = gpu[(gpu["ts"] >= step.ts) & (gpu["end"] <= step.end)]
        busy = float(inside["dur"].sum()) / step.dur  # one stream, ops back to back: the sum is the union
        assert p["device_busy_share"] == pytest.approx(busy, abs=1e-3)
        assert busy > 0.9
        assert (p["paced_by"], p["why"]) == ("GPU compute", "device busy")
    assert w.paces.startswith("GPU compute (6 of 6 steps: the device is busy")
    # kineto nw0 (GPU busy 55-68%): the host probe still names the host.
    assert by_rule(real(R50_NW0).findings) and real(R50_NW0).diagnosis.whatif.paces.startswith("host (5 of 6")  # type: ignore[union-attr]


def test_verdict_reads_the_replays_paces_only() -> None:
    from mlprof.report.verdict import verdict

    breakdown = {"categories": {"compute": {"ms_per_step": 9.0, "pct": 90.0, "meaning": "kernels"}}}
    assert verdict({"whatif": {"paces": "GPU compute (6 of 6 steps)"}, "breakdown": breakdown})["paces"] == (
        "GPU compute (6 of 6 steps)"
    )
    # A replay without an answer (no steps) is not guessed from other keys or from the attribution.
    assert verdict({"whatif": {"paces": None, "paced_by": "host"}, "breakdown": breakdown})["paces"] is None
    # No replay at all (--low-memory): the attribution category with the most time.
    assert verdict({"whatif": None, "breakdown": breakdown})["paces"].startswith("compute takes the most")


def brute_force_ends(g: Any) -> list[int]:
    """Device ends of a graph by plain loops: host then device (in stream order) until nothing moves.

    An independent reading of the recurrences in :mod:`mlprof.whatif.simulate`'s docstring, with no
    chunks, scans or dependency ordering."""
    none = -(1 << 48)
    ends = (g.g_ts + g.g_dur).tolist()
    for _ in range(10_000):
        front, h_start = 0, []
        for i in range(g.n_host):
            h_start.append(front + int(g.h_gap[i]))
            w = ends[g.h_wait[i]] + int(g.h_tail[i]) if g.h_wait[i] >= 0 else none
            front = max(front + max(int(g.h_gap[i] + g.h_base[i]), 0), w)
        new = list(ends)
        for j in range(g.n_gpu):
            ready = h_start[g.g_launch[j]] + int(g.g_lat[j]) if g.g_launch[j] >= 0 else int(g.g_anchor[j])
            if g.g_dep[j] >= 0:
                ready = max(ready, new[g.g_dep[j]] + int(g.g_dep_delay[j]))
            if j > 0 and g.g_stream[j - 1] == g.g_stream[j]:
                ready = max(ready, new[j - 1])
            new[j] = ready + int(g.g_gap[j] + g.g_dur[j])
        if new == ends:
            return ends
        ends = new
    raise AssertionError("no fixed point")


NEGATIVE_QUEUE = "hta/tests/data/negative_queue_length_values_check/rank0.json.gz"


def test_simulation_of_chained_cross_stream_waits_matches_brute_force() -> None:
    """HTA's negative_queue_length rank 0: 6 streams whose ops wait for each other in long chains (the
    replay once needed 100+ alternations to settle them). With the FP32 matmuls halved (every chain moves),
    the simulator equals plain loops (a few seconds: one graph only)."""
    rr = real(NEGATIVE_QUEUE).diagnosis.whatif.ranks[0]  # type: ignore[union-attr]
    g = rr.graph
    assert (g.g_dep >= 0).sum() > 100
    fixed = apply_fix(rr, "AMP001", g, opts("AMP001"), None, {})
    assert fixed is not None
    tl = simulate(fixed)
    assert tl.g_end.tolist() == brute_force_ends(fixed)
    assert not np.array_equal(tl.g_end, g.g_ts + g.g_dur)
    assert tl.rounds == 1  # the chunked pass resolves the chains; the global pass only confirms


def test_dep_keys_shortcut_equals_the_general_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-number-per-stream pass of the waiting ops' keys (taken when no waiting op passed before a
    predecessor sits after it on its stream) against the general pass (the per-stream position lists), call by
    call on every chunk of HTA's negative_queue_length rank 0 with its FP32 matmuls halved (6 streams, long
    chains), and the whole replay with the general pass only against plain loops."""
    import importlib

    sim = importlib.import_module("mlprof.whatif.simulate")
    rr = real(NEGATIVE_QUEUE).diagnosis.whatif.ranks[0]  # type: ignore[union-attr]
    fixed = apply_fix(rr, "AMP001", rr.graph, opts("AMP001"), None, {})
    assert fixed is not None
    calls: list[tuple[Any, ...]] = []
    dep_keys, check = sim._dep_keys, sim._targets_after_waiters

    def recording(*args: Any) -> np.ndarray:
        calls.append(tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args))
        return dep_keys(*args)

    monkeypatch.setattr(sim, "_dep_keys", recording)
    shortcut = simulate(fixed).g_end
    assert len(calls) > 50
    taken = 0
    for args in calls:
        monkeypatch.setattr(sim, "_targets_after_waiters", check)
        fast = dep_keys(*args)
        taken += check(*_check_args(*args))
        monkeypatch.setattr(sim, "_targets_after_waiters", lambda *a: False)
        assert fast.tolist() == dep_keys(*args).tolist()
    assert taken > 50
    monkeypatch.setattr(sim, "_dep_keys", dep_keys)
    general = simulate(fixed).g_end  # the check still answers False
    assert general.tolist() == shortcut.tolist() == brute_force_ends(fixed)


def _check_args(g: Any, ops: np.ndarray, dl: np.ndarray, *rest: Any) -> tuple[np.ndarray, ...]:
    """``_targets_after_waiters``' arguments for a ``_dep_keys`` call (as ``_dep_keys`` computes them)."""
    streams = rest[4]
    dep = g.g_dep[ops[dl]]
    local = np.clip(np.searchsorted(ops, dep), 0, len(ops) - 1)
    return ops[local] == dep, streams[local], local, streams[dl], dl


def test_targets_after_waiters_against_a_loop() -> None:
    """The shortcut's condition, vectorised, against its definition walked op by op, on random passes."""
    from mlprof.whatif.simulate import _targets_after_waiters

    rng = np.random.default_rng(7)
    answers = set()
    for _ in range(400):
        n = int(rng.integers(0, 12))
        d_pos = np.sort(rng.choice(40, size=n, replace=False)).astype(np.int64)
        rng.shuffle(d_pos)
        d_stream = rng.integers(0, 3, size=n)
        t_pos = rng.integers(0, 40, size=n)
        t_stream = rng.integers(0, 3, size=n)
        inside = rng.random(n) < 0.8
        expected = True
        for i in range(n):
            passed = [int(d_pos[j]) for j in range(i) if d_stream[j] == t_stream[i]]
            if inside[i] and passed and max(passed) > t_pos[i]:
                expected = False
        got = _targets_after_waiters(inside, t_stream, t_pos, d_stream, d_pos)
        assert got == expected
        answers.add(got)
    assert answers == {True, False}


def test_merge_ops_equals_merging_group_by_group() -> None:
    """``merge_ops`` against its definition applied one group at a time with plain loops: on the FUSE001 runs of
    the 8-rank DLRM's rank 0 (disjoint: merged all at once) and on overlapping groups (merged in turn)."""
    rr = real(f"{DLRM}/worker0_step_12.1694128201545.pt.trace.json").diagnosis.whatif.ranks[0]  # type: ignore[union-attr]
    g = rr.graph
    member = np.flatnonzero(g.g_klass == "memory_bound")
    runs = [run for run in np.split(member, np.flatnonzero(np.diff(member) != 1) + 1) if len(run) >= 2]
    assert len(runs) > 20
    rng = np.random.default_rng(3)
    overlapping = [np.sort(rng.choice(g.n_gpu, size=int(rng.integers(1, 6)), replace=False)) for _ in range(60)]
    overlapping += [runs[0][1:], runs[0]]  # an op first of one group and merged away by another
    for groups in (runs, overlapping):
        durations = rng.uniform(0, 20_000, size=len(groups))
        durations[0] = 2.5  # rounds half to even, as Python's round()
        got = merge_ops(g, groups, durations)
        dur, gap, base = g.g_dur.tolist(), g.g_gap.tolist(), g.h_base.tolist()
        for members, d in zip(groups, durations, strict=True):
            dur[int(members[0])] = max(round(float(d)), 0)
            for op in members[1:].tolist():
                dur[op], gap[op] = 0, 0
                call = int(g.g_launch[op])
                if call >= 0 and g.h_wait[call] < 0:
                    base[call] = 0
        assert got.g_dur.tolist() == dur and got.g_gap.tolist() == gap and got.h_base.tolist() == base
        assert got.g_dur.tolist() != g.g_dur.tolist()


def test_cross_stream_chain_by_hand(tmp_path: Path) -> None:
    """Two streams, each op waiting for the other stream's previous op (no launches: the ops keep their order).

    Recorded: A1 [0, 100) on s7, B0 [0, 1) then B1 [110, 210) on s8 after A1, A2 [220, 320) on s7 after B1,
    B2 [330, 430) on s8 after A2 (10 us cross-stream delay each); a device synchronize at 440 gives the graph a
    host. Halving every duration: B0 ends at 0.5, A1 at 50, B1 [60, 110), A2 [120, 170), B2 [180, 230)."""
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 500),
        kernel("void gemm_a", 0, 100, stream=7),
        kernel("void gemm_b0", 0, 1, stream=8),
        kernel("void gemm_b", 110, 100, stream=8),
        kernel("void gemm_c", 220, 100, stream=7),
        kernel("void gemm_d", 330, 100, stream=8),
        runtime("cudaDeviceSynchronize", 440, 5),
    ]
    rr = replayed(write_trace(tmp_path / "chain.json", events))
    g = rr.graph
    assert g.n_host == 1 and (g.g_dep >= 0).sum() == 3
    assert step_us(rr, g) == 500.0
    half = set_op_durations(g, np.arange(g.n_gpu), g.g_dur / 2)
    tl = simulate(half)
    assert sorted((tl.g_end / US).tolist()) == [0.5, 50.0, 110.0, 170.0, 230.0]
    assert tl.g_end.tolist() == brute_force_ends(half)


def test_a_rule_cannot_make_a_low_confidence_finding_critical() -> None:
    f = Finding(
        rule="MEM001",
        name="memory-leak",
        category="memory",
        title="t",
        time_lost_ns_per_step=0.0,
        step_ns=1.0,
        confidence="low",
        confidence_reason="few steps",
        evidence={},
        fix="",
        severity_override="critical",
    )
    assert f.severity == "warning"
    f.confidence = "medium"
    assert f.severity == "critical"


@pytest.mark.parametrize("negative_gaps", [False, True])
@pytest.mark.parametrize("chunk", [64, 2048])
def test_chunked_first_pass_is_the_replay(negative_gaps: bool, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked pass's device ends (its inputs gathered once per replay, sliced per chunk, its running sums
    taken at once) are the replay's own on HTA's negative_queue_length rank 0 with its FP32 matmuls halved, in
    chunks of 64 and 2,048 calls; also with some ops' start delays negative (each chunk then sums its own)."""
    import dataclasses
    import importlib

    sim = importlib.import_module("mlprof.whatif.simulate")
    monkeypatch.setattr(sim, "CHUNK", chunk)
    rr = real(NEGATIVE_QUEUE).diagnosis.whatif.ranks[0]  # type: ignore[union-attr]
    fixed = apply_fix(rr, "AMP001", rr.graph, opts("AMP001"), None, {})
    assert fixed is not None
    if negative_gaps:
        fixed = dataclasses.replace(fixed, g_gap=fixed.g_gap.copy())
        fixed.g_gap[::7] -= 3 * fixed.g_dur[::7] + 1000
        assert ((fixed.g_gap + fixed.g_dur) < 0).any()
    c = (fixed.g_gap + fixed.g_dur).astype(np.int64)
    first = sim._chunked(fixed, (fixed.g_ts + fixed.g_dur).astype(np.int64), c)
    assert first.tolist() == simulate(fixed).g_end.tolist() == brute_force_ends(fixed)
