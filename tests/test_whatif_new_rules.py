"""The replayed fixes of SHAPE001, DP001 and COMPILE001 on tiny traces whose replays are computed by hand,
and the rules that must never show a per-step speedup (STARTUP001, MEM001, BATCH001) on real recordings.

Every expected number is worked out in the comment above it from the event times written here; the
replay is never its own truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlprof.analysis import analyze_job, analyze_trace
from mlprof.trace.loader import load_job, load_trace
from mlprof.whatif.fixes import FIXES
from mlprof.whatif.predict import apply_fix
from mlprof.whatif.replay import RankReplay, replay_rank

from conftest import SAMPLES, X, external, kernel, opts, write_trace

US = 1000
MISALIGNED = "void cutlass::Kernel<cutlass_80_tensorop_s1688gemm_256x64_16x4_tn_align1>(Params)"
PARAM_RESNET = "facebookresearch__param/resnet_kineto.json.gz"
NEG_QUEUE = "hta/tests/data/negative_queue_length_values_check/rank0.json.gz"


def runtime(name: str, ts: float, dur: float, corr: int = 0) -> dict[str, Any]:
    return X("cuda_runtime", name, ts, dur, correlation=corr)


def replayed(path: Path) -> RankReplay:
    trace = load_trace(path)
    steps = trace.steps
    return replay_rank(trace, 0, steps["ts"].to_numpy(), steps["end"].to_numpy(), steps.iloc[:0])


def step_us(rr: RankReplay, graph: Any) -> float:
    return rr.mean_step_ns(graph) / US


# ---- SHAPE001: misaligned GEMMs scaled by the aligned/misaligned ratio -----------------------------


def shape_trace(tmp_path: Path) -> Path:
    """One 1000 us step: launch at 500 of a 200 us align1 GEMM (520-720), a stream sync from 530 that
    returns 10 us after it ends (730), then 270 us of Python. A second align1 GEMM after the step."""
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 1000),
        runtime("cudaLaunchKernel", 500, 10, corr=1),
        kernel(MISALIGNED, 520, 200, corr=1),
        runtime("cudaStreamSynchronize", 530, 200),
        runtime("cudaLaunchKernel", 1100, 10, corr=2),
        kernel(MISALIGNED, 1120, 200, corr=2),
    ]
    return write_trace(tmp_path / "shape.json", events)


def test_shape_alignment_scales_misaligned_gemms(tmp_path: Path) -> None:
    rr = replayed(shape_trace(tmp_path))
    assert step_us(rr, rr.graph) == 1000.0
    # Ratio 2: the GEMM takes 100 us (520-620), the sync returns at 630, 270 us of Python: 900.
    assert step_us(rr, apply_fix(rr, "SHAPE001", rr.graph, opts("SHAPE001", aligned_speedup=2.0), None, {})) == 900.0
    # The default 1.5: 200 / 1.5 = 133.333 us, the sync returns at 663.333: 933.333.
    fixed = apply_fix(rr, "SHAPE001", rr.graph, opts("SHAPE001"), None, {})
    assert step_us(rr, fixed) == pytest.approx(933.333, abs=1e-3)
    # The GEMM after the step is outside the analysed steps: untouched.
    assert sorted(fixed.g_dur.tolist()) == [133_333, 200_000]
    # A ratio measured in the trace (the rule's evidence) wins over the option; below 1 it is taken as 1.
    measured = {"aligned_speedup_measured": 4.0}
    assert (
        step_us(rr, apply_fix(rr, "SHAPE001", rr.graph, opts("SHAPE001", aligned_speedup=2.0), None, measured)) == 850.0
    )
    assert (
        step_us(rr, apply_fix(rr, "SHAPE001", rr.graph, opts("SHAPE001"), None, {"aligned_speedup_measured": 0.5}))
        == 1000.0
    )


def measured_shape_trace(tmp_path: Path) -> Path:
    """record_shapes: aten::mm 1024 x 1023 x 1024 launches a 400 us align1 GEMM (130-530) that a device
    sync from 150 waits for (returns at 540); aten::mm 1024 x 1024 x 1024 launches a 100 us align4 GEMM
    (630-730); Python to the step end at 1000."""
    aligned = MISALIGNED.replace("align1", "align4")

    def gemm(name: str, ts: float, dur: float, corr: int) -> dict[str, Any]:
        k = kernel(name, ts, dur, corr=corr)
        k["args"]["External id"] = corr
        return k

    events = [
        X("user_annotation", "ProfilerStep#1", 0, 1000),
        X("cpu_op", "aten::mm", 100, 20, **{"External id": 1, "Input Dims": [[1024, 1023], [1023, 1024]]}),
        runtime("cudaLaunchKernel", 110, 5, corr=1),
        gemm(MISALIGNED, 130, 400, corr=1),
        runtime("cudaDeviceSynchronize", 150, 390),
        X("cpu_op", "aten::mm", 600, 20, **{"External id": 2, "Input Dims": [[1024, 1024], [1024, 1024]]}),
        runtime("cudaLaunchKernel", 610, 5, corr=2),
        gemm(aligned, 630, 100, corr=2),
    ]
    return write_trace(tmp_path / "shapes.json", events)


def test_shape_alignment_ratio_measured_from_recorded_shapes(tmp_path: Path) -> None:
    ra = analyze_trace(load_trace(measured_shape_trace(tmp_path)))
    f = {x.rule: x for x in ra.findings}["SHAPE001"]
    # Aligned: 2 * 1024^3 FLOP in 100 us; misaligned: 2 * 1024 * 1023 * 1024 FLOP in 400 us.
    ratio = (2 * 1024**3 / 100) / (2 * 1024 * 1023 * 1024 / 400)
    assert f.evidence["aligned_speedup_measured"] == pytest.approx(ratio, abs=1e-4)
    assert f.confidence == "medium" and "aligned_speedup_assumed" not in f.evidence
    # Replayed: the align1 GEMM takes 400 / ratio us (130 -> 229.902), the sync returns 10 us later and
    # the rest of the step follows: 1000 - (400 - 400 / ratio) us.
    fixed_us = 1000 - (400 - 400 / ratio)
    assert f.speedup_source == "replay" and f.expected_speedup == pytest.approx(1000 / fixed_us, rel=1e-5)


# ---- DP001: replicate / scatter / gather gone under DDP ------------------------------------------


def dp_trace(tmp_path: Path) -> Path:
    """One 1000 us step of a DataParallel forward: replicate [100, 300) launches a 200 us broadcast copy at
    150 (170-370); parallel_apply [300, 700) launches a 200 us GEMM at 400 (420-620); gather [700, 800)
    launches a 50 us copy at 710 (730-780); Python to 1000. Launch calls take 10 us, kernels start 20 us
    after their launch."""
    frame = "torch/nn/parallel/{}"
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 1000),
        X("user_annotation", "DataParallel.forward", 50, 800),
        X("python_function", frame.format("replicate.py(118): replicate"), 100, 200),
        runtime("cudaLaunchKernel", 150, 10, corr=1),
        kernel("void at::native::copy_kernel", 170, 200, corr=1),
        X("python_function", frame.format("parallel_apply.py(31): parallel_apply"), 300, 400),
        runtime("cudaLaunchKernel", 400, 10, corr=2),
        kernel("ampere_sgemm_128x64_nn", 420, 200, corr=2),
        X("python_function", frame.format("scatter_gather.py(110): gather"), 700, 100),
        runtime("cudaLaunchKernel", 710, 10, corr=3),
        kernel("void at::native::copy_kernel", 730, 50, corr=3),
    ]
    return write_trace(tmp_path / "dp.json", events)


def test_data_parallel_removes_replicate_and_gather(tmp_path: Path) -> None:
    rr = replayed(dp_trace(tmp_path))
    assert step_us(rr, rr.graph) == 1000.0
    # 200 us (replicate) + 100 us (gather) of host time go, and so do the broadcast and gather copies.
    # The GEMM's launch moves from 400 to 200 (runs 220-420); the host reaches the step end at 700.
    fixed = apply_fix(rr, "DP001", rr.graph, opts("DP001"), None, {})
    assert step_us(rr, fixed) == 700.0
    # parallel_apply's GEMM keeps its 200 us; the two copies take none.
    assert sorted(fixed.g_dur.tolist()) == [0, 0, 200_000]


def test_data_parallel_found_on_the_dp_trace_is_replayed(tmp_path: Path) -> None:
    ra = analyze_trace(load_trace(dp_trace(tmp_path)))
    f = {x.rule: x for x in ra.findings}["DP001"]
    # The replay of the whole analysis agrees with the hand-computed 1000 -> 700 us.
    assert f.speedup_source == "replay" and f.expected_speedup == pytest.approx(1000 / 700, rel=1e-6)


# ---- COMPILE001: the eager code at a graph break compiled away -----------------------------------


def compile_trace(tmp_path: Path, *extra: dict[str, Any]) -> Path:
    """One 1000 us step in a compiled region [0, 900) whose graph (CompiledFunction [10, 100), one 100 us
    kernel launched at 20) is followed by eager code: aten::add [200, 300) launching a 120 us kernel at 250
    (270-390), aten::item [300, 400) whose stream sync from 320 returns 10 us after that kernel (400); then
    the resume region [500, 800), whose graph (CompiledFunction [510, 600)) launches a 100 us kernel at 520
    (540-640); Python to 1000."""
    events = [
        X("user_annotation", "ProfilerStep#1", 0, 1000),
        X("cpu_op", "Torch-Compiled Region: 0/0", 0, 900),
        X("cpu_op", "CompiledFunction", 10, 90),
        runtime("cudaLaunchKernel", 20, 10, corr=1),
        kernel("triton_poi_fused_add_0", 40, 100, corr=1),
        X("cpu_op", "aten::add", 200, 100),
        runtime("cudaLaunchKernel", 250, 10, corr=2),
        kernel("void at::native::vectorized_elementwise_kernel<add>", 270, 120, corr=2),
        X("cpu_op", "aten::item", 300, 100),
        runtime("cudaStreamSynchronize", 320, 80),
        X("cpu_op", "Torch-Compiled Region: 1/0", 500, 300),
        X("cpu_op", "CompiledFunction", 510, 90),
        runtime("cudaLaunchKernel", 520, 10, corr=3),
        kernel("triton_poi_fused_mul_1", 540, 100, corr=3),
        *extra,
    ]
    return write_trace(tmp_path / "compile.json", events)


def test_compile_break_collapses_the_eager_dispatch(tmp_path: Path) -> None:
    rr = replayed(compile_trace(tmp_path))
    assert step_us(rr, rr.graph) == 1000.0
    assert rr.graph.h_wait.tolist() == [-1, -1, 1, -1]  # the sync waits for the eager kernel
    # The break's stretch runs from the end of the outer graph's last compiled call (CompiledFunction, 100)
    # to the resume region's first one (510): 410 us of host, of which the one launch call's 10 us is kept,
    # so 400 us go, spread evenly over the stretch (400/410 per us). With the break on a tensor value the
    # sync stops waiting and costs nothing: its 80 us go whole, and the 78.049 us of the removal that fell
    # on it (a wait, not host time) are not counted twice. The host reaches the step end
    # 400 - 78.049 + 80 = 401.951 us early: 598.049.
    fixed = apply_fix(rr, "COMPILE001", rr.graph, opts("COMPILE001"), None, {"break_on_tensor_value": True})
    assert step_us(rr, fixed) == pytest.approx(598.049, abs=1e-3)
    # Not on a tensor value: the sync still waits. The add's launch: 220 us after the first call less
    # 150 us x 400/410 = 73.659 -> 103.659, its own 10 us less 9.756 -> ends 103.902; its kernel, ready at
    # 123.659, queues behind the graph's kernel (40-140) and runs 140-260. The sync: 60 us after the launch
    # less 58.537 -> starts 105.366, returns 10 us after the kernel, 270. The resume launch: 120 us after
    # the sync less 110 us x 400/410 -> 282.683, ends 292.683. Then the 470 us of Python after it: 762.683.
    assert step_us(rr, apply_fix(rr, "COMPILE001", rr.graph, opts("COMPILE001"), None, {})) == pytest.approx(
        762.683, abs=1e-3
    )
    # Recompilation in one analysed step is not edited (it may be one-off); a trace without breaks or
    # compilation has nothing to edit.
    plain = replayed(shape_trace(tmp_path))
    assert (
        apply_fix(plain, "COMPILE001", plain.graph, opts("COMPILE001"), None, {"steps_with_compilation": [1, 2]})
        is None
    )


def test_compile_break_keeps_one_off_compilation(tmp_path: Path) -> None:
    # Dynamo compiling the resume frame inside the break's stretch, [400, 480): a recompiling step, whose
    # stretch is not the break's steady cost. Seen in one step only, it is left as recorded.
    rr = replayed(compile_trace(tmp_path, X("cpu_op", "dynamo", 400, 80)))
    assert apply_fix(rr, "COMPILE001", rr.graph, opts("COMPILE001"), None, {"break_on_tensor_value": True}) is None
    # Recompiling in two analysed steps recurs: the compilation goes, and so does the rest of the stretch,
    # [100, 400) (the launch's 10 us kept: 290 us go, 290/300 per us) and [480, 510) (30 us). With the break
    # on a tensor value: 290 - 77.333 (the share that fell on the 80 us sync) + 80 (the sync) + 30 + 80.
    recurring = {"break_on_tensor_value": True, "steps_with_compilation": [1, 2]}
    expected = 1000 - (290 - 77.333 + 80 + 30 + 80)
    assert step_us(rr, apply_fix(rr, "COMPILE001", rr.graph, opts("COMPILE001"), None, recurring)) == pytest.approx(
        expected, abs=1e-3
    )


# ---- rules that never show a per-step speedup -----------------------------------------------------


def test_no_graph_edit_for_one_off_or_memory_or_batch_findings() -> None:
    assert not {"STARTUP001", "MEM001", "BATCH001"} & set(FIXES)


def test_startup_is_never_a_speedup() -> None:
    ra = analyze_trace(load_trace(external(PARAM_RESNET)))
    f = {x.rule: x for x in ra.findings}["STARTUP001"]
    assert f.expected_speedup == 1.0 and f.time_lost_ns_per_step == 0 and f.speedup_source == "attribution"
    assert ra.diagnosis is not None and "STARTUP001" not in {p.rule for p in ra.diagnosis.plan}


def test_memory_leak_is_never_a_speedup() -> None:
    analysis = analyze_job(load_job(SAMPLES / "scenarios" / "recorded" / "memory_leak" / "bad"), "leak")
    f = {x.rule: x for x in analysis.findings}["MEM001"]
    assert f.expected_speedup == 1.0 and f.time_lost_ns_per_step == 0 and f.speedup_source == "attribution"
    assert "MEM001" not in {p.rule for p in analysis.diagnosis.plan}


def test_small_batch_is_never_a_speedup() -> None:
    ra = analyze_trace(load_trace(external(NEG_QUEUE)))
    f = {x.rule: x for x in ra.findings}["BATCH001"]
    assert f.expected_speedup == 1.0 and f.time_lost_ns_per_step == 0
    assert ra.diagnosis is not None and "BATCH001" not in {p.rule for p in ra.diagnosis.plan}


# ---- COMPILE001 on a recorded pair: graph breaks vs one graph ----------------------------------------


def test_graph_break_pair_prediction_against_the_fullgraph_recording() -> None:
    """sample_traces/scenarios/recorded/graph_break: the same compiled MLP with two `if h.mean() > 0.1`
    breaks, then with torch.where and fullgraph=True. Truth: the medians of the ProfilerStep durations
    the manifest read from the trace JSON (not through mlprof), median against outliers of a loaded VM."""
    import json
    from statistics import median

    recorded = SAMPLES / "scenarios" / "recorded"
    entry = json.loads((recorded / "manifest.json").read_text())["scenarios"]["graph_break"]
    bad_ev, fixed_ev = entry["bad"]["evidence"], entry["fixed"]["evidence"]
    assert bad_ev["item_calls_per_step"] == 2 and bad_ev["compiled_regions_per_step"] > 1
    assert fixed_ev["item_calls_per_step"] == 0 and fixed_ev["compiled_regions_per_step"] == 1
    measured = median(entry["bad"]["ranks"][0]["step_ns"]) / median(entry["fixed"]["ranks"][0]["step_ns"])
    bad = analyze_job(load_job(recorded / "graph_break" / "bad"), "bad")
    f = {x.rule: x for x in bad.findings}["COMPILE001"]
    assert f.speedup_source == "replay" and f.evidence["break_on_tensor_value"]
    assert abs(f.expected_speedup / measured - 1) <= 0.20, (f.expected_speedup, measured)
    fixed = analyze_job(load_job(recorded / "graph_break" / "fixed"), "fixed")
    assert "COMPILE001" not in {x.rule for x in fixed.findings}
