"""COMPILE001 (graph breaks, recompiles) on a recording made through mlprof.profile, quiet on the B200
torch.compile trace and on eager traces; LAUNCH001 does not advise CUDA graphs where they are in use.

Truths are read from the raw JSON (region ranges, compile ranges, step ranges), not through mlprof.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
from functools import cache
from pathlib import Path

import pytest

from mlprof.analysis import Analysis, analyze_job, analyze_trace
from mlprof.analyzers.compiled import compile_facts
from mlprof.trace.loader import load_job, load_trace

from conftest import SAMPLES, X, external, kernel, write_trace

RECORDING = SAMPLES / "compile_graph_break"
B200 = "AMD-AGI__TraceLens/b200/eager_trace.json.gz"
R50_NW4 = "pytorch__kineto/resnet50_num_workers_4/worker0.1623213129365.pt.trace.json.gz"


@cache
def recorded() -> Analysis:
    return analyze_job(load_job(RECORDING), "compile")


def _raw() -> list[dict]:  # type: ignore[type-arg]
    with gzip.open(RECORDING / "trace.rank0.json.gz", "rt") as fh:
        return [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]


def test_graph_break_and_recompile_found_in_the_recording() -> None:
    events = _raw()
    steps = sorted(
        (e["ts"], e["ts"] + e["dur"], int(e["name"].split("#")[1]))
        for e in events
        if e["name"].startswith("ProfilerStep#")
    )
    regions = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e["name"].startswith("Torch-Compiled Region"))
    # Truth: a region that starts before the previous one ends is a resume frame (graph break).
    nested = sum(1 for a, b in itertools.pairwise(regions) if b[0] < a[1])
    compiling = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["name"] == "dynamo"]
    compile_steps = sorted({n for s, t, n in steps for c, _ in compiling if s <= c < t})
    compile_ms = sum(b - a for a, b in compiling if any(s <= a < t for s, t, _ in steps)) / 1000

    finding = {f.rule: f for f in recorded().findings}["COMPILE001"]
    assert finding.category == "compile"
    ev = finding.evidence
    assert ev["graph_breaks_per_step"] == nested / len(steps) == 1.0
    assert ev["break_on_tensor_value"] and "aten::item" in ev["value_reading_ops_at_breaks"]
    assert ev["steps_with_compilation"] == compile_steps == [6]
    assert ev["compilation_ms_per_step"] * len(steps) == pytest.approx(compile_ms, rel=0.01)
    # One recompilation: reported, not claimed per step.
    assert finding.confidence == "low" and finding.claimed["launch.compile"] == 0 and finding.severity == "warning"
    # The replayed fix (each break's stretch compiled away) saves at most the time from each outer region's
    # start to its resume region's end, in the steps without compilation (a recompiling step's stretch is kept).
    outer = [(a, b) for a, b in itertools.pairwise(regions) if b[0] < a[1]]
    bound = sum(b[1] - a[0] for a, b in outer if not any(a[0] <= c < b[1] for c, _ in compiling))
    assert finding.speedup_source == "replay"
    assert 0 < finding.time_lost_ns_per_step <= bound * 1000 / len(steps)
    assert "mark_dynamic" in finding.fix and "fullgraph=True" in finding.fix


def test_recompile_in_two_steps_is_claimed(tmp_path: Path) -> None:
    """The same compile ranges counted twice: with a recompilation in 2 of 4 steps the time is claimed."""
    events = _raw()
    steps = [e for e in events if e["name"].startswith("ProfilerStep#")]
    first = min(steps, key=lambda e: e["ts"])
    # A copy of the first 'dynamo' range (10 ms) inside the first step, which has none.
    extra = X("cpu_op", "dynamo", first["ts"] + 1, 10_000.0, pid=events[0]["pid"], tid=first["tid"])
    first["dur"] += 10_001
    with gzip.open(RECORDING / "trace.rank0.json.gz", "rt") as fh:
        doc = json.load(fh)
    doc["traceEvents"] = [e for e in doc["traceEvents"] if not (e.get("ph") == "X" and e["name"] == first["name"])]
    doc["traceEvents"] += [first, extra]
    path = write_trace(tmp_path / "two.json", doc["traceEvents"])
    finding = {f.rule: f for f in analyze_trace(load_trace(path)).findings}["COMPILE001"]
    assert finding.confidence == "medium" and finding.time_lost_ns_per_step > 0
    assert len(finding.evidence["steps_with_compilation"]) == 2


def test_b200_compiled_region_without_breaks_or_recompiles_is_quiet() -> None:
    ra = analyze_trace(load_trace(external(B200)))
    facts = compile_facts(ra.trace)
    assert facts.regions["compile_id"].tolist() == ["0/1"] and not facts.regions["nested"].any()
    assert len(facts.compiling[0]) == 0
    assert "COMPILE001" not in {f.rule for f in ra.findings}


def test_eager_trace_is_quiet() -> None:
    ra = analyze_trace(load_trace(external(R50_NW4)))
    assert len(compile_facts(ra.trace).regions) == 0
    assert "COMPILE001" not in {f.rule for f in ra.findings}


def _launch_bound(tmp_path: Path, graphs: bool) -> Path:
    """4 steps of 40 ops of 30 us, each launching a 5 us kernel; optionally one cudaGraphLaunch per step."""
    events = []
    corr = 1
    for step in range(4):
        t0 = 10_000.0 + step * 2_000.0
        events.append(X("user_annotation", f"ProfilerStep#{step}", t0, 1_900.0))
        for i in range(40):
            ts = t0 + 10 + i * 45
            events.append(X("cpu_op", "aten::add", ts, 30.0))
            events.append(X("cuda_runtime", "cudaLaunchKernel", ts + 20, 8.0, correlation=corr))
            events.append(kernel("elementwise_kernel", ts + 30, 5.0, corr=corr))
            corr += 1
        if graphs:
            events.append(X("cuda_runtime", "cudaGraphLaunch", t0 + 1_850, 10.0, correlation=corr))
            events.append(kernel("graph_kernel", t0 + 1_862, 5.0, corr=corr))
            corr += 1
    return write_trace(tmp_path / f"lb{int(graphs)}.json", events)


@pytest.mark.parametrize("graphs", [False, True])
def test_launch_bound_advice_knows_cuda_graphs_are_in_use(tmp_path: Path, graphs: bool) -> None:
    ra = analyze_trace(load_trace(_launch_bound(tmp_path, graphs)))
    finding = {f.rule: f for f in ra.findings}["LAUNCH001"]
    assert finding.evidence["cuda_graph_launches_per_step"] == (1.0 if graphs else 0.0)
    advises_graphs = bool(re.search(r"reduce-overhead|CUDA graphs\)", finding.fix))
    assert advises_graphs is not graphs
    if graphs:
        assert "already in use" in finding.title
        assert "cudaGraphLaunch" in ra.diagnosis.verdicts["COMPILE001"]  # type: ignore[union-attr]
