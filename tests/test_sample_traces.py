"""The project's sample traces load with the trace model exactly as their manifest says.

Covers ``sample_traces/`` only: the synthetic traces (counts, step windows, exact ns), the real
CPU recordings (structure), file sizes, and that the generator reproduces the committed files.
The attribution numbers in the manifest are checked for internal consistency only; comparing
the analyzer with them belongs to the analyzer's tests.
"""

from __future__ import annotations

import gzip
import itertools
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from mlprof.trace import Trace, load_trace

from conftest import load_script

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
SYNTHETIC = SAMPLES / "synthetic"
MANIFEST: dict[str, Any] = json.loads((SYNTHETIC / "manifest.json").read_text())
TRACES: dict[str, dict[str, Any]] = {t["scenario"]: t for t in MANIFEST["traces"]}
CATEGORIES = MANIFEST["categories"]
REAL_TRACES = ("cpu_tiny_training.pt.trace.json.gz", "cpu_slow_dataloader.pt.trace.json.gz")
DATALOADER = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"


@cache
def loaded(relative: str) -> Trace:
    return load_trace(SAMPLES / relative)


def synthetic(name: str) -> Trace:
    return loaded(f"synthetic/{TRACES[name]['file']}")


def gpu_count(trace: Trace, kind: str) -> int:
    return int((trace.gpu["kind"] == kind).sum()) if len(trace.gpu) else 0


# ---- synthetic traces ------------------------------------------------------------------------------
def test_manifest_lists_every_synthetic_file() -> None:
    on_disk = {p.name for p in SYNTHETIC.glob("*.json.gz")}
    assert on_disk == {t["file"] for t in MANIFEST["traces"]}
    assert set(TRACES) == {
        "healthy",
        "data_starvation",
        "sync_point",
        "launch_bound",
        "comm_exposed",
        "memory_leak",
        "no_profiler_step",
        "cpu_only",
    }


@pytest.mark.parametrize("name", sorted(TRACES))
def test_manifest_is_consistent(name: str) -> None:
    entry = TRACES[name]
    assert entry["counts"]["steps"] == len(entry["steps"]) >= 5
    for step in entry["steps"]:
        assert all(isinstance(step[c], int) and step[c] >= 0 for c in CATEGORIES)
        assert sum(step[c] for c in CATEGORIES) == step["dur_ns"]
    for a, b in zip(entry["steps"], entry["steps"][1:], strict=False):
        assert a["ts_ns"] + a["dur_ns"] <= b["ts_ns"]
    assert entry["totals"] == {c: sum(s[c] for s in entry["steps"]) for c in CATEGORIES}
    assert 0 <= entry["comm_overlapped_ns"] <= entry["comm_total_ns"]


@pytest.mark.parametrize("name", sorted(TRACES))
def test_counts_match_manifest(name: str) -> None:
    entry, trace = TRACES[name], synthetic(name)
    counts = entry["counts"]
    assert len(trace.steps) == counts["steps"]
    assert gpu_count(trace, "kernel") == counts["kernels"]
    assert gpu_count(trace, "memcpy") == counts["memcpy"]
    assert gpu_count(trace, "memset") == counts["memset"]
    assert gpu_count(trace, "sync") == counts["gpu_sync"]
    assert (int(trace.gpu["is_comm"].sum()) if len(trace.gpu) else 0) == counts["comm_kernels"]
    assert len(trace.runtime) == counts["runtime"]
    assert len(trace.host) == counts["host_ranges"]
    assert len(trace.memory) == counts["memory_events"]
    assert len(trace.flows) == counts["flows"]
    assert trace.meta.format == entry["format"]
    assert trace.meta.step_source.startswith(entry["step_source"])
    assert trace.meta.rank == entry["rank"]
    assert trace.meta.world_size == entry["world_size"]


@pytest.mark.parametrize("name", sorted(TRACES))
def test_step_windows_match_manifest(name: str) -> None:
    entry, trace = TRACES[name], synthetic(name)
    expected = entry["steps"]
    assert trace.steps["step"].tolist() == [s["step"] for s in expected]
    assert trace.steps["ts"].tolist() == [s["ts_ns"] for s in expected]
    if entry["step_source"] == "ProfilerStep":
        assert trace.steps["dur"].tolist() == [s["dur_ns"] for s in expected]
        assert trace.steps["name"].tolist() == [s["name"] for s in expected]
    else:  # marker fallback: every step but the last ends where the next begins
        assert trace.steps["dur"].tolist()[:-1] == [s["dur_ns"] for s in expected][:-1]


def test_fallback_last_step_lasts_exactly_the_median_step() -> None:
    entry, trace = TRACES["no_profiler_step"], synthetic("no_profiler_step")
    durs = [s["dur_ns"] for s in entry["steps"]]
    assert durs[-1] == sorted(durs[:-1])[len(durs[:-1]) // 2]
    assert int(trace.steps["dur"].iloc[-1]) == durs[-1]


@pytest.mark.parametrize("name", sorted(TRACES))
def test_probe_events_exact(name: str) -> None:
    trace = synthetic(name)
    for probe in TRACES[name]["probes"]:
        rows = trace.gpu[trace.gpu["name"] == probe["name"]]
        assert int(rows["ts"].iloc[0]) == probe["ts_ns"]
        assert int(rows["dur"].iloc[0]) == probe["dur_ns"]


def test_float_microseconds_keep_exact_ns() -> None:
    entry = TRACES["comm_exposed"]
    assert entry["time_format"] == "float_us"
    text = gzip.decompress((SYNTHETIC / entry["file"]).read_bytes()).decode()
    trace = synthetic("comm_exposed")
    first = entry["probes"][0]
    assert first["ts_text"] == "1712195495505768.648"
    assert first["ts_ns"] == 1_712_195_495_505_768_648
    assert f'"ts": {first["ts_text"]}' in text  # written as a bare JSON number
    assert round(float(first["ts_text"]) * 1000) != first["ts_ns"]  # a float64 parse would be off
    kernels = trace.gpu[trace.gpu["kind"] == "kernel"]
    assert int(kernels["ts"].iloc[0]) == 1_712_195_495_505_768_648
    assert int(kernels["dur"].iloc[0]) == 1_200_123
    assert int(trace.steps["ts"].iloc[0]) == 1_712_195_495_505_582_988
    assert (trace.gpu["ts"] % 1000 != 0).any()
    comm = trace.gpu[trace.gpu["is_comm"]]
    assert set(comm["stream"]) == {20}
    assert comm["dur"].tolist() == [3_500_321] * 6
    assert entry["comm_total_ns"] == 6 * 3_500_321
    assert entry["comm_overlapped_ns"] == 6 * (600_222 + 2_000_333)


def test_2021_schema_trace() -> None:
    trace = synthetic("launch_bound")
    assert trace.meta.format == "kineto-2021"
    assert set(trace.host["cat"].astype(str)) == {"Operator"}
    assert set(trace.gpu["stream"]) == {7}
    assert (trace.runtime["external_id"] > 0).all()
    assert (trace.gpu["external_id"] > 0).all()
    memory = trace.memory
    assert (memory["total_allocated"] == -1).all()  # 2021 events carry only "Bytes"
    assert memory["bytes"].tolist()[:4] == [4 << 20, 4 << 20, -(4 << 20), -(4 << 20)]


def test_memory_leak_totals() -> None:
    info = TRACES["memory_leak"]["memory"]
    trace = synthetic("memory_leak")
    cuda = trace.memory[trace.memory["device_type"] == 1]
    ends = []
    for _, step in trace.steps.iterrows():
        inside = cuda[(cuda["ts"] >= step["ts"]) & (cuda["ts"] < step["end"])]
        ends.append(int(inside["total_allocated"].iloc[-1]))
        assert int(inside["total_allocated"].max()) == info["peak_allocated_per_step_bytes"][len(ends) - 1]
    assert ends == info["allocated_at_step_end_bytes"]
    assert [b - a for a, b in itertools.pairwise(ends)] == [info["growth_per_step_bytes"]] * 5
    cpu = trace.memory[trace.memory["device_type"] == 0]
    assert len(cpu) == info["cpu_events_per_step"] * len(trace.steps)
    assert int(cpu["bytes"].sum()) == 0


def test_cpu_only_has_no_device_activity() -> None:
    trace = synthetic("cpu_only")
    assert len(trace.gpu) == 0 and len(trace.runtime) == 0
    assert not trace.has_device_activity
    assert trace.meta.devices == []


def test_generator_reproduces_committed_files() -> None:
    module = load_script(SAMPLES / "generate_synthetic.py")
    files = module.render()
    # The nsys export beside them has its own generator (generate_nsys.py --check, tests/test_nsys.py).
    assert set(files) == {p.name for p in SYNTHETIC.iterdir() if p.suffix != ".sqlite"}
    for name, data in files.items():
        assert (SYNTHETIC / name).read_bytes() == data, f"{name} is stale: run sample_traces/generate_synthetic.py"


# ---- real CPU recordings ---------------------------------------------------------------------------
@pytest.mark.parametrize("file", REAL_TRACES)
def test_real_cpu_recording_structure(file: str) -> None:
    trace = loaded(file)
    assert trace.meta.format == "kineto"
    assert trace.meta.step_source == "ProfilerStep"
    assert trace.steps["step"].tolist() == [2, 3, 4, 5, 6, 7]
    assert len(trace.gpu) == 0 and len(trace.runtime) == 0
    cats = set(trace.host["cat"].astype(str))
    assert {"cpu_op", "user_annotation", "python_function"} <= cats
    names = set(trace.host["name"].astype(str))
    assert {"aten::linear", "aten::relu", "aten::mse_loss"} <= names
    assert any(n.startswith("Optimizer.step#SGD.step") for n in names)
    assert len(trace.memory) > 0 and set(trace.memory["device_type"]) == {0}
    loader = trace.host[trace.host["name"] == DATALOADER]
    assert len(loader) == 6
    for _, step in trace.steps.iterrows():
        assert ((loader["ts"] >= step["ts"]) & (loader["end"] <= step["end"])).sum() == 1


def test_slow_dataloader_dominates_its_steps() -> None:
    fast, slow = loaded(REAL_TRACES[0]), loaded(REAL_TRACES[1])
    fast_loader = fast.host[fast.host["name"] == DATALOADER]["dur"]
    slow_loader = slow.host[slow.host["name"] == DATALOADER]["dur"]
    assert (slow_loader >= 16 * 2_000_000).all()  # 16 samples x 2 ms sleep
    assert slow_loader.sum() > 0.6 * slow.steps["dur"].sum()
    assert slow_loader.min() > 5 * fast_loader.max()


# ---- sizes -------------------------------------------------------------------------------------------
def test_sample_traces_stay_small() -> None:
    files = [p for p in SAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for p in files:
        if p.name.endswith(".json.gz"):
            assert p.stat().st_size < 1_500_000, p
    assert sum(p.stat().st_size for p in files) < 5_000_000
