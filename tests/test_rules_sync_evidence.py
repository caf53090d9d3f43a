"""SYNC001's evidence stays inside the analysed steps: a profiling harness's synchronize outside the
ProfilerStep ranges is never a site, a time range or a wait the replayed fix removes; and a sync's source
line is the innermost user frame of the recorded stack. Truth is read from the raw JSON."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import numpy as np

from mlprof.analysis import analyze_trace
from mlprof.analyzers.enclosing import source_lines
from mlprof.rules.config import parse_config
from mlprof.trace.loader import load_trace
from mlprof.whatif.predict import apply_fix
from mlprof.whatif.replay import replay_rank

from conftest import external, opts

DLRM_RANK0 = "facebookresearch__param/dlrm_kineto/worker0_step_12.1694128201545.pt.trace.json"
MI300 = "AMD-AGI__TraceLens/mi300/resnet_act_checkpoint.json.gz"
B200 = "AMD-AGI__TraceLens/b200/eager_trace.json.gz"
SYNC = re.compile(r"^(cuda|hip)(Device|Stream|Event)Synchronize$")
ANY_SYNC = parse_config({"rules": {"SYNC001": {"min_share": 0.0}}}, "test")


def raw(relative: str) -> list[dict[str, Any]]:
    path = external(relative)
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as fh:
        return [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]


def step_ranges_ns(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [
        (round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000))
        for e in events
        if e["name"].startswith("ProfilerStep#")
    ]


def inside(t_ns: int, steps: list[tuple[int, int]]) -> bool:
    return any(a <= t_ns < b for a, b in steps)


def test_dlrm_harness_synchronize_is_not_evidence() -> None:
    events = raw(DLRM_RANK0)
    steps = step_ranges_ns(events)
    syncs = [e for e in events if SYNC.match(e["name"])]
    outside = [e for e in syncs if not inside(round(e["ts"] * 1000), steps)]
    # The raw trace: one ProfilerStep, and the harness's cudaDeviceSynchronize outside it.
    assert len(steps) == 1 and [e["name"] for e in outside] == ["cudaDeviceSynchronize"]
    in_step = {e["name"] for e in syncs if e not in outside}
    assert "cudaDeviceSynchronize" not in in_step
    ra = analyze_trace(load_trace(external(DLRM_RANK0)), config=ANY_SYNC)
    f = {x.rule: x for x in ra.findings}["SYNC001"]
    assert f.evidence["sites"] and {s["call"] for s in f.evidence["sites"]} <= in_step
    # Every time range the finding points at lies inside the step (1 us: the raw JSON's float rounding).
    a, b = steps[0]
    assert f.time_ranges_ns and all(a - 1000 <= s and e <= b + 1000 for s, e in f.time_ranges_ns)
    assert sum(s["per_step"] for s in f.evidence["sites"]) <= len(syncs) - len(outside)


def test_mi300_harness_synchronize_is_neither_a_finding_nor_a_replayed_wait() -> None:
    events = raw(MI300)
    steps = step_ranges_ns(events)
    syncs = [e for e in events if SYNC.match(e["name"])]
    # The only sync of the trace: a 37.9 ms hipDeviceSynchronize after the last ProfilerStep.
    assert len(syncs) == 1 and syncs[0]["name"] == "hipDeviceSynchronize" and syncs[0]["dur"] > 37_000
    assert not inside(round(syncs[0]["ts"] * 1000), steps)
    trace = load_trace(external(MI300))
    ra = analyze_trace(trace, config=ANY_SYNC)
    assert "SYNC001" not in {x.rule for x in ra.findings}  # even with min_share 0
    # In the replay graph the harness's sync does wait for the device, but the SYNC001 fix (waits removed
    # in the analysed steps only) has nothing to remove.
    st = ra.steps
    rr = replay_rank(trace, 0, st["ts"].to_numpy(), (st["ts"] + st["dur"]).to_numpy(), st.iloc[:0])
    names = trace.runtime["name"].astype(str).to_numpy()[rr.graph.h_row]
    harness = np.flatnonzero(names == "hipDeviceSynchronize")
    assert len(harness) == 1 and rr.graph.h_wait[harness[0]] >= 0
    assert apply_fix(rr, "SYNC001", rr.graph, opts("SYNC001"), None, {}) is None


def test_source_line_is_the_innermost_user_frame_of_the_stack() -> None:
    """B200 (vLLM, with_stack): the Python line of each aten::item is the innermost enclosing frame of the
    recorded stack outside torch and the standard library, found here by brute force over the raw JSON."""
    events = raw(B200)
    frames = [e for e in events if e.get("cat") == "python_function"]
    items = [e for e in events if e["name"] == "aten::item"]
    assert len(items) == 4

    def user(name: str) -> bool:
        return bool(re.match(r"^[^<(][^(]*\.py\(\d+\): ", name)) and not name.startswith("torch/")

    expected = []
    for it in items:
        around = [
            p
            for p in frames
            if p["tid"] == it["tid"] and p["ts"] <= it["ts"] and p["ts"] + p["dur"] >= it["ts"] + it["dur"]
        ]
        around = [p for p in around if user(p["name"])]
        expected.append(max(around, key=lambda p: p["ts"])["name"] if around else None)
    assert all(expected) and "vllm/v1/attention/backends/utils.py(879): split_decodes_and_prefills" in expected
    host = load_trace(external(B200)).host
    rows = host[host["name"] == "aten::item"].sort_values("ts")
    got = source_lines(
        host, rows["ts"].to_numpy(np.int64), rows["end"].to_numpy(np.int64), rows["tid"].to_numpy(np.int64)
    )
    assert got == expected
