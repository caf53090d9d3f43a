"""Steady state: warm-up, outlier and partial steps set aside from per-step costs.

Truth comes from the raw JSON (``ProfilerStep#N`` and runtime events read with
``json``), with the median and MAD computed here by :mod:`statistics`, not by the
module under test.
"""

from __future__ import annotations

import gzip
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlprof.analysis import analyze_trace
from mlprof.analyzers.steady_state import classify_durations, steady_state
from mlprof.cli import main
from mlprof.trace import load_trace

from conftest import X, external, kernel, write_trace

NW0 = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"
NW4 = "pytorch__kineto/resnet50_num_workers_4/worker0.1623213129365.pt.trace.json.gz"
PARAM_RESNET = "facebookresearch__param/resnet_kineto.json.gz"
SIDNB13 = (
    "sidnb13__torch-profiling-tutorial/dc3b0e7228dd_851.1752215573993169006.pt.trace.json",
    "sidnb13__torch-profiling-tutorial/dc3b0e7228dd_851.1752215574025896717.pt.trace.json",
    "sidnb13__torch-profiling-tutorial/dcb0aa1a78e7_4399.1752181589589738346.pt.trace.json",
    "sidnb13__torch-profiling-tutorial/dcb0aa1a78e7_4399.1752181589621105859.pt.trace.json",
)


def raw_events(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        events: list[dict[str, Any]] = json.load(fh)["traceEvents"]
    return events


def raw_steps(path: Path) -> dict[int, tuple[int, int]]:
    """step -> (start, duration) in ns, each step cut at the next step's start, from the raw JSON."""
    found: dict[int, tuple[float, float]] = {}
    for e in raw_events(path):
        name = str(e.get("name", ""))
        if name.startswith("ProfilerStep#") and e.get("ph") == "X":
            found.setdefault(int(name.split("#")[1]), (float(e["ts"]), float(e["dur"])))
    order = sorted(found, key=lambda k: found[k][0])
    out = {}
    for i, k in enumerate(order):
        ts, dur = found[k]
        end = ts + dur
        if i + 1 < len(order):
            end = min(end, found[order[i + 1]][0])
        out[k] = (round(ts * 1000), round((end - ts) * 1000))
    return out


def robust(durations: list[int]) -> tuple[float, float]:
    median = statistics.median(durations)
    return median, 1.4826 * statistics.median([abs(d - median) for d in durations])


def test_nw4_warmup_first_step_and_outlier_last_step() -> None:
    path = external(NW4)
    raw = raw_steps(path)
    durations = [d for _, d in raw.values()]
    median, spread = robust(durations)
    # Raw truth: step 21 is 206.5 ms, far above the median of 125.1 ms; step 16 starts the recording at 160 ms.
    assert raw[21][1] > median + max(5 * spread, 0.25 * median)
    assert raw[16][1] > median + max(2 * spread, 0.20 * median)
    ra = analyze_trace(load_trace(path))
    assert ra.steady is not None
    assert {s.step: s.reason for s in ra.steady.set_aside} == {16: "warm-up", 21: "outlier"}
    steady = [k for k in raw if k not in (16, 21)]
    assert ra.steps["step"].tolist() == steady
    # Every per-step cost the rules read is over the steady steps: the step time findings are
    # relative to is the raw mean of steps 17-20, and the categories add up to their raw sum.
    mean_ns = statistics.mean(raw[k][1] for k in steady)
    assert ra.findings, "nw4 has findings"
    for f in ra.findings:
        assert f.step_ns == pytest.approx(mean_ns, abs=1.0)
    assert sum(ra.category_totals().values()) == sum(raw[k][1] for k in steady)
    assert ra.causes is not None and len(ra.causes) == len(steady)


def test_nw0_keeps_every_step() -> None:
    """nw0's steps are 148.7-159.4 ms around a 152.5 ms median: nothing is far from it."""
    path = external(NW0)
    raw = raw_steps(path)
    median, spread = robust([d for _, d in raw.values()])
    assert max(d for _, d in raw.values()) < median + max(2 * spread, 0.2 * median)
    ra = analyze_trace(load_trace(path))
    assert ra.steady is not None and ra.steady.set_aside == ()
    assert ra.steps["step"].tolist() == sorted(raw)


def test_steps_option_overrides() -> None:
    ra = analyze_trace(load_trace(external(NW4)), "16-21")
    assert ra.steady is not None and ra.steady.overridden and ra.steady.set_aside == ()
    assert ra.steps["step"].tolist() == [16, 17, 18, 19, 20, 21]


def test_param_resnet_startup_iteration_with_allocator_work() -> None:
    """The 4.45 s first iteration (cudaFree/cudaMalloc at start-up) among ~230 ms ones is set aside."""
    path = external(PARAM_RESNET)
    events = raw_events(path)
    loader = sorted(
        float(e["ts"]) for e in events if str(e.get("name", "")).startswith("enumerate(DataLoader)") and "dur" in e
    )
    first_end = loader[1]
    alloc_us = sum(
        float(e["dur"])
        for e in events
        if e.get("name") in ("cudaMalloc", "cudaFree", "cudaHostAlloc") and loader[0] <= float(e["ts"]) < first_end
    )
    assert alloc_us > 1_000_000  # > 1 s of start-up allocator calls in the first iteration
    steps = [(b - a) * 1000 for a, b in itertools.pairwise(loader)]
    assert steps[0] > 15 * statistics.median(steps)
    trace = load_trace(path)
    state = steady_state(trace.steps, trace)
    warm = [s for s in state.set_aside if s.reason == "warm-up"]
    assert [s.step for s in warm] == [0]
    assert f"{alloc_us / 1000:.2f} ms allocator" in warm[0].detail
    # The data stalls (up to 829 ms, a third of the steps above 345 ms) are the workload, not outliers.
    assert all(s.reason != "outlier" for s in state.set_aside)


@pytest.mark.parametrize("relative", SIDNB13)
def test_sidnb13_first_step_is_warmup(relative: str) -> None:
    path = external(relative)
    raw = raw_steps(path)
    first = min(raw, key=lambda k: raw[k][0])
    median, _ = robust([d for _, d in raw.values()])
    assert raw[first][1] > 1.3 * median  # 1.17-1.28 ms against 0.80-0.87 ms
    state = steady_state(load_trace(path).steps)
    assert [(s.step, s.reason) for s in state.set_aside] == [(first, "warm-up")]
    assert list(state.steady) == sorted(k for k in raw if k != first)


def test_rule_on_durations() -> None:
    ms = 1_000_000
    # A 4.5 s warm-up iteration among 150 ms ones, a 400 ms stall mid-run, a last step cut short.
    dur = np.array([4500, 152, 149, 151, 400, 150, 148, 153, 150, 40]) * ms
    assert classify_durations(dur) == ["warm-up", None, None, None, "outlier", None, None, None, None, "partial"]
    # Frequent slow steps (3 of 10) are the workload: kept.
    bimodal = np.array([150, 400, 150, 151, 410, 149, 150, 405, 152, 150]) * ms
    assert classify_durations(bimodal) == [None] * 10
    # Fewer than three steps: nothing to stand on.
    assert classify_durations(np.array([4500, 150]) * ms) == [None, None]
    # Never more than half of the steps: of four leading steps with start-up work, only the first three go.
    flat = np.array([150, 151, 149, 150, 152, 150]) * ms
    alloc = {"allocator": np.array([50, 50, 50, 50, 0, 0]) * ms}
    assert classify_durations(flat, alloc) == ["warm-up"] * 3 + [None] * 3
    # A long warm-up does not hide the rest: outliers are judged against the steps after it.
    assert classify_durations(np.array([900, 850, 150, 151, 149, 150, 152, 260]) * ms) == (
        ["warm-up", "warm-up", None, None, None, None, None, "outlier"]
    )


def test_one_off_startup_work_sets_aside_a_step_that_is_not_slow(tmp_path: Path) -> None:
    """A first step as long as the others but with 2 ms of cudaMalloc (10% of the step) is warm-up."""
    events = []
    for i in range(5):
        t0 = 1000 + i * 20_000
        events.append(X("user_annotation", f"ProfilerStep#{i}", t0, 20_000))
        events.append(X("cuda_runtime", "cudaLaunchKernel", t0 + 10, 5, correlation=i + 1))
        events.append(kernel("k", t0 + 20, 15_000, corr=i + 1))
        if i == 0:
            events.append(X("cuda_runtime", "cudaMalloc", t0 + 100, 2_000))
    trace = load_trace(write_trace(tmp_path / "t.json", events))
    state = steady_state(trace.steps, trace)
    assert [(s.step, s.reason) for s in state.set_aside] == [(0, "warm-up")]
    assert "2.00 ms allocator" in state.set_aside[0].detail
    assert steady_state(trace.steps).set_aside == ()  # durations alone: nothing stands out


def test_cli_reports_set_aside_steps(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(external(NW4))
    assert main(["analyze", path, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ss = data["steady_state"]
    assert ss["set_aside_steps"] == [16, 21]
    reasons = {s["step"]: s["reason"] for s in ss["ranks"][0]["set_aside"]}
    assert reasons == {16: "warm-up", 21: "outlier"}
    assert [s["step"] for s in data["steps"]] == [17, 18, 19, 20]
    assert main(["analyze", path]) == 0
    assert "set aside: step 21 (outlier)" in " ".join(capsys.readouterr().out.split())


def test_low_memory_sets_aside_the_same_steps(tmp_path: Path) -> None:
    """--low-memory judges by step times alone: on nw4 it sets aside the same warm-up and outlier steps."""
    from mlprof.engine.windows import analyze_low_memory

    analysis = analyze_low_memory(external(NW4), jobs=1, spill_dir=tmp_path)
    ra = analysis.ranks[0]
    assert ra.steady is not None
    assert {s.step: s.reason for s in ra.steady.set_aside} == {16: "warm-up", 21: "outlier"}
    assert ra.steps["step"].tolist() == [17, 18, 19, 20]
