"""The scenario scripts, run for real under mlprof.profile on CPU torch, and their committed recordings.

Each scenario runs in this process (its ``main(argv)``) with few steps, and the run
folder is read back with mlprof's own loader and analysis: the pathology must show in
the numbers, and be gone (or much smaller) with ``--fixed``. The committed recordings
are checked against their manifest, whose step times were read from the trace JSON
independently of mlprof (exact decimals).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlprof.analysis import analyze_trace  # noqa: E402
from mlprof.trace.loader import load_job  # noqa: E402
from mlprof.trace.model import Trace  # noqa: E402

SCENARIOS = Path(__file__).resolve().parents[1] / "sample_traces" / "scenarios"
RECORDED = SCENARIOS / "recorded"
STEPS = 3
ARGS = ["--steps", str(STEPS), "--wall-steps", "2", "--no-summary"]
FIRST_STEP = 2 + 2 + 1  # start-up + wall-clock steps + warm-up


def _scenario(name: str) -> ModuleType:
    if str(SCENARIOS) not in sys.path:
        sys.path.insert(0, str(SCENARIOS))
    return importlib.import_module(name)


def _run(name: str, tmp_path: Path, fixed: bool) -> tuple[Trace, dict]:
    variant = "fixed" if fixed else "bad"
    _scenario(name).main([*ARGS, "--out", str(tmp_path), "--name", variant] + (["--fixed"] if fixed else []))
    folder = tmp_path / variant
    (trace,) = load_job(folder)  # the whole run folder, as `mlprof analyze` reads it
    return trace, json.loads((folder / "meta.json").read_text())


def _per_step(trace: Trace, pred: Callable[[object], object]) -> list[int]:
    """How many host events matching ``pred`` start inside each recorded step."""
    host = trace.host
    chosen = host[pred(host)]
    return [int(((chosen["ts"] >= s.ts) & (chosen["ts"] < s.end)).sum()) for s in trace.steps.itertuples()]


def test_data_starvation_share_high_when_bad_low_when_fixed(tmp_path: Path) -> None:
    # No wall-clock threshold (the run is live and the machine shared): the bad loader reads a
    # whole batch in the training process each step, so its DataLoader wait is at least the
    # batch's sleeps however loaded the machine is; with two workers reading ahead it is smaller.
    module = _scenario("data_starvation")
    batch_sleep_ns = module.BATCH * module.SLEEP_PER_SAMPLE_S * 1e9
    shares, per_step = {}, {}
    for fixed in (False, True):
        trace, meta = _run("data_starvation", tmp_path, fixed)
        assert trace.meta.step_source == "ProfilerStep"
        assert trace.steps["step"].tolist() == list(range(FIRST_STEP, FIRST_STEP + STEPS))
        ra = analyze_trace(trace)
        totals = ra.category_totals()
        shares[fixed] = totals["idle_data"] / sum(totals.values())
        per_step[fixed] = totals["idle_data"] / len(ra.steps)
        user = meta["user"]["scenario"]
        assert user["variant"] == ("fixed" if fixed else "bad") and len(user["wall_step_ns"]) == FIRST_STEP + STEPS
        assert meta["tags"] == {"scenario": "data_starvation", "variant": user["variant"]}
        assert meta["steps_taken"] == FIRST_STEP + STEPS and meta["errors"] == []
    assert per_step[False] >= batch_sleep_ns, (per_step, batch_sleep_ns)  # measured ~1.1x the sleeps
    assert shares[True] < shares[False], shares  # measured ~0.09-0.12 against ~0.53-0.63


def test_sync_item_calls_per_step(tmp_path: Path) -> None:
    counts = {
        fixed: _per_step(_run("sync_item", tmp_path, fixed)[0], lambda h: h["name"] == "aten::item")
        for fixed in (False, True)
    }
    assert counts[False] == [73] * STEPS  # loss + 6 statistics x 12 parameters
    assert counts[True] == [0] * STEPS


def test_unfused_elementwise_op_counts(tmp_path: Path) -> None:
    ops = {
        "aten::mul",
        "aten::add",
        "aten::tanh",
        "aten::pow",
        "aten::gelu",
        "aten::gelu_backward",
        "aten::tanh_backward",
    }
    counts = {}
    for fixed in (False, True):
        trace, _ = _run("unfused_elementwise", tmp_path, fixed)
        counts[fixed] = _per_step(trace, lambda h: h["name"].isin(ops))
    assert counts[True] == [counts[True][0]] * STEPS and counts[False] == [counts[False][0]] * STEPS
    assert counts[False][0] - counts[True][0] >= 15, counts
    assert _per_step(trace, lambda h: h["name"] == "aten::gelu") == [1] * STEPS


def test_memory_leak_grows_only_when_bad(tmp_path: Path) -> None:
    growth = {}
    for fixed in (False, True):
        trace, _ = _run("memory_leak", tmp_path, fixed)
        mem = trace.memory.sort_values("ts")
        ends = []
        for s in trace.steps.itertuples():
            before = mem[mem["ts"] < s.end]
            ends.append(int(before["total_allocated"].iloc[-1]))
        growth[fixed] = np.diff(ends)
    assert (growth[False] > 400_000).all(), growth  # ~0.5 MB of saved activations per step
    assert (np.abs(growth[True]) < 16_384).all(), growth


def test_unfused_optimizer_dispatches_fewer_ops_when_fixed(tmp_path: Path) -> None:
    counts = {}
    for fixed in (False, True):
        trace, _ = _run("unfused_optimizer", tmp_path, fixed)
        host = trace.host
        opt = host[host["name"].astype(str).str.startswith("Optimizer.step#")]
        ops = host[host["cat"] == "cpu_op"]
        inside = [int(((ops["ts"] >= r.ts) & (ops["end"] <= r.end)).sum()) for r in opt.itertuples()]
        counts[fixed] = int(np.median(inside))
    assert counts[False] > 2 * counts[True], counts


def test_comm_no_overlap_two_ranks(tmp_path: Path) -> None:
    """Two processes over gloo write one run folder; both ranks load as one job."""
    script = SCENARIOS / "comm_no_overlap.py"
    subprocess.run(
        [sys.executable, str(script), *ARGS, "--out", str(tmp_path), "--name", "bad"], check=True, timeout=120
    )
    traces = load_job(tmp_path / "bad")
    assert [t.meta.rank for t in traces] == [0, 1]
    assert all(t.meta.world_size == 2 and t.meta.backend == "gloo" for t in traces)
    for trace in traces:
        assert trace.steps["step"].tolist() == list(range(FIRST_STEP, FIRST_STEP + STEPS))
        assert _per_step(trace, lambda h: h["name"] == "c10d::allreduce_") == [16] * STEPS
    meta = json.loads((tmp_path / "bad" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["distributed"]["source"] == "torch.distributed"


# -- the committed recordings ---------------------------------------------------------------


def _manifest() -> dict:
    return json.loads((RECORDED / "manifest.json").read_text())


GPU_ONLY = {"precision", "compile_fusion", "launch_bound", "pinned_h2d"}
"""Scenarios recorded by sample_traces/scenarios/gpu/run_all.py only: their fix needs a GPU (CUDA graphs,
pinned memory) or shows nothing on a CPU (tensor cores, Inductor's GPU kernels)."""


def test_manifest_covers_every_scenario_script() -> None:
    scripts = {p.stem for p in SCENARIOS.glob("*.py") if not p.stem.startswith("_") and p.stem != "record_all"}
    assert set(_manifest()["scenarios"]) | GPU_ONLY == scripts
    assert not set(_manifest()["scenarios"]) & GPU_ONLY


@pytest.mark.parametrize("scenario", sorted(_manifest()["scenarios"]) if (RECORDED / "manifest.json").exists() else [])
def test_recording_matches_its_manifest(scenario: str) -> None:
    entry = _manifest()["scenarios"][scenario]
    means = {}
    for variant in ("bad", "fixed"):
        info = entry[variant]
        folder = RECORDED / info["dir"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(info["files"])
        traces = load_job(folder)
        assert len(traces) == entry["world_size"]
        for trace, rank in zip(traces, info["ranks"], strict=True):
            assert Path(trace.meta.path).stat().st_size == rank["bytes"] < 300_000
            # mlprof's reader and the manifest's exact-decimal reading agree to the nanosecond
            assert trace.steps["step"].tolist() == rank["profiler_steps"]
            assert trace.steps["dur"].tolist() == rank["step_ns"]
        all_steps = [d for r in info["ranks"] for d in r["step_ns"]]
        assert info["trace_step_ns"]["mean"] == round(sum(all_steps) / len(all_steps))
        means[variant] = info["trace_step_ns"]["mean"]
    assert entry["speedup"]["recorded_trace_mean"] == round(means["bad"] / means["fixed"], 3)
    # a leak costs memory, not (much) time; DataParallel on CPU has no devices to split across
    if scenario not in ("memory_leak", "data_parallel"):
        assert entry["speedup"]["wall_mean"] > 1.3 and entry["speedup"]["trace_mean"] > 1.3


def test_recorded_evidence_shows_each_pathology() -> None:
    s = _manifest()["scenarios"]
    assert s["data_starvation"]["bad"]["evidence"]["dataloader_share"] >= 0.4
    assert s["data_starvation"]["fixed"]["evidence"]["dataloader_share"] < 0.2
    assert s["sync_item"]["bad"]["evidence"]["item_calls_per_step"] == 73
    assert s["sync_item"]["fixed"]["evidence"]["item_calls_per_step"] == 0
    assert s["memory_leak"]["bad"]["evidence"]["allocated_growth_bytes_per_step"] > 400_000
    assert abs(s["memory_leak"]["fixed"]["evidence"]["allocated_growth_bytes_per_step"]) < 16_384
    assert s["comm_no_overlap"]["bad"]["evidence"]["allreduce_calls_per_step"] == 16
