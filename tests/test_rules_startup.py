"""STARTUP001 on the real param ResNet trace (RTX 2080 Ti): a 4.45 s first step explained by cuDNN's first
calls, the DataLoader starting and allocations, each checked against the raw JSON; on Kineto ResNet-50
num_workers=4 the warm-up step 16 the report sets aside; quiet where the first step is like the others.
The warm-up steps are the steady-state verdict's, so the finding and the report's set-aside list agree."""

from __future__ import annotations

import gzip
import json
import re
from statistics import median

import pytest

from mlprof.analysis import analyze_trace
from mlprof.trace.loader import load_trace

from conftest import external

PARAM_RESNET = "facebookresearch__param/resnet_kineto.json.gz"
R50_NW0 = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"
R50_NW4 = "pytorch__kineto/resnet50_num_workers_4/worker0.1623213129365.pt.trace.json.gz"


def test_param_resnet_first_step_one_off_costs() -> None:
    path = external(PARAM_RESNET)
    with gzip.open(path, "rt") as fh:
        events = [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]
    # This trace has no ProfilerStep: its steps run from one DataLoader __next__ to the next (the step
    # table is the loader's, tested elsewhere); the one-off work inside them is summed here from raw JSON.
    table = load_trace(path).steps
    steps = [(a / 1000, (a + d) / 1000) for a, d in zip(table["ts"], table["dur"], strict=True)]
    durs = [b - a for a, b in steps]

    def in_step(pred, i):  # type: ignore[no-untyped-def]
        a, b = steps[i]
        return sum(e["dur"] for e in events if pred(e) and a <= e["ts"] < b)

    cudnn = re.compile(r"^aten::cudnn_(convolution|batch_norm|convolution_backward|batch_norm_backward)$")
    is_cudnn = lambda e: bool(cudnn.match(e["name"]))  # noqa: E731
    is_loader = lambda e: "DataLoader" in e["name"] and "__next__" in e["name"]  # noqa: E731
    ra = analyze_trace(load_trace(path))
    f = {x.rule: x for x in ra.findings}["STARTUP001"]
    assert f.category == "startup" and f.severity == "info" and f.time_lost_ns_per_step == 0
    # The 4.45 s first iteration is the warm-up step the report sets aside, and it is the finding's.
    assert ra.steady is not None and [(s.step, s.reason) for s in ra.steady.set_aside] == [(0, "warm-up")]
    assert f.evidence["warm_up_steps"] == f.steps == [0] and 0 not in ra.steps["step"].tolist()
    assert durs[0] / 1000 == pytest.approx(4450.612, abs=1e-3)
    ev = f.evidence
    assert ev["first_step_ms"] == pytest.approx(durs[0] / 1000, abs=1e-3)
    assert ev["median_step_ms"] == pytest.approx(median(durs[1:]) / 1000, abs=1e-3)
    kinds = ev["by_kind"]
    others = [in_step(is_cudnn, i) for i in range(1, len(steps))]
    assert kinds["cudnn_first_calls"]["one_off_ms"] == pytest.approx(
        (in_step(is_cudnn, 0) - median(others)) / 1000, abs=1e-3
    )
    loader_others = [in_step(is_loader, i) for i in range(1, len(steps))]
    assert kinds["dataloader_start"]["one_off_ms"] == pytest.approx(
        (in_step(is_loader, 0) - median(loader_others)) / 1000, abs=1e-3
    )
    assert kinds["cudnn_first_calls"]["one_off_ms"] > 2000 and kinds["dataloader_start"]["one_off_ms"] > 1900
    is_alloc = lambda e: e["name"] in ("cudaMalloc", "cudaFree", "cudaHostAlloc")  # noqa: E731
    alloc_others = [in_step(is_alloc, i) for i in range(1, len(steps))]
    assert kinds["allocations"]["one_off_ms"] == pytest.approx(
        (in_step(is_alloc, 0) - median(alloc_others)) / 1000, abs=1e-3
    )
    # Slow first kernel launches (module loaded inside the launch): launch calls over max(1 ms, 50x the median
    # launch), their time beyond a median launch; none in the later steps.
    launches = [e for e in events if re.search(r"LaunchKernel", e["name"])]
    typical = median(e["dur"] for e in launches)
    slow = [e for e in launches if e["dur"] > max(1000, 50 * typical)]
    a, b = steps[0]
    lazy = sum(e["dur"] - typical for e in slow if a <= e["ts"] < b)
    assert lazy > 0 and all(a <= e["ts"] < b for e in slow)
    assert kinds["lazy_launches"]["one_off_ms"] == pytest.approx(lazy / 1000, abs=1e-3)
    assert "set aside" in f.title and "persistent_workers" in f.fix


def test_first_step_like_the_others_is_quiet() -> None:
    ra = analyze_trace(load_trace(external(R50_NW0)))
    assert "STARTUP001" not in {f.rule for f in ra.findings}


def test_warm_up_step_set_aside_by_the_report_is_the_finding_on_kineto_nw4() -> None:
    path = external(R50_NW4)
    with gzip.open(path, "rt") as fh:
        events = [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]
    steps = sorted(
        (e["ts"], e["dur"], int(e["name"].split("#")[1])) for e in events if e["name"].startswith("ProfilerStep#")
    )
    # Truth from the raw JSON: step 16 comes first and is over 20% above the median of all the steps.
    durs = [d for _, d, _ in steps]
    assert steps[0][2] == 16 and durs[0] > 1.2 * median(durs)
    ra = analyze_trace(load_trace(path))
    assert ra.steady is not None
    warm = [s.step for s in ra.steady.set_aside if s.reason == "warm-up"]
    f = {x.rule: x for x in ra.findings}["STARTUP001"]
    assert warm == f.evidence["warm_up_steps"] == [16]
    assert 16 not in ra.steps["step"].tolist()
    steady = [d for _, d, n in steps if n in set(ra.steady.steady)]
    assert f.evidence["one_off_ms"] == pytest.approx((durs[0] - median(steady)) / 1000, abs=1e-3)
    # None of the known one-off kinds explains this one: it is reported, with low confidence, never a speedup.
    assert f.confidence == "low" and f.expected_speedup == 1.0 and f.severity == "info"
