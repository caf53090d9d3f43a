"""The JSON report's ``kernels`` and ``operators`` lists against sums computed from the raw trace JSON.

DLRM rank 0 (one ProfilerStep) and the 8-rank DLRM job: totals per name, self time of
ops, device time launched directly by an op, and the launching op of each kernel are
recomputed here by brute force from the JSON events (no mlprof code), as the run
store's rows are tested in tests/test_store.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from mlprof.api import analyze

from conftest import external

DLRM = "facebookresearch__param/dlrm_kineto"


def _raw(path: Path) -> dict[str, Any]:
    """Brute-force views of one rank's raw JSON: kernels and cpu_ops of the one ProfilerStep, in ns."""
    events = json.loads(path.read_text())["traceEvents"]
    (step,) = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    lo, hi = step["ts"], step["ts"] + step["dur"]
    ops = [e for e in events if e.get("cat") == "cpu_op" and e.get("ph") == "X"]
    runtime = {e["args"]["correlation"]: e for e in events if e.get("cat") == "cuda_runtime"}

    def ns(x: float) -> int:
        return round(x * 1000)

    order = {id(o): i for i, o in enumerate(ops)}

    def innermost(tid: Any, a: float, b: float, child: Any = None) -> Any:
        """The op on ``tid`` enclosing [a, b] that starts last, then is shortest; for a child op, an op with
        the same range encloses it only when recorded before it."""
        best = None
        for o in ops:
            if o is child or o["tid"] != tid or not (o["ts"] <= a and o["ts"] + o["dur"] >= b):
                continue
            if child is not None and (o["ts"], o["dur"]) == (a, b - a) and order[id(o)] > order[id(child)]:
                continue
            key = (o["ts"], -o["dur"], order[id(o)])
            if best is None or key > (best["ts"], -best["dur"], order[id(best)]):
                best = o
        return best

    kernels: dict[str, int] = defaultdict(int)
    launched: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    device: dict[int, int] = defaultdict(int)
    for e in events:
        if e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        rt = runtime.get(e["args"].get("correlation"))
        when = rt["ts"] if rt else e["ts"]
        if not lo <= when < hi:
            continue
        parent = innermost(rt["tid"], rt["ts"], rt["ts"] + rt["dur"]) if rt else None
        if parent is not None:
            device[id(parent)] += ns(e["dur"])
        if e["cat"] == "kernel":
            kernels[e["name"]] += ns(e["dur"])
            if parent is not None:
                launched[e["name"]][parent["name"]] += ns(e["dur"])
    total: dict[str, int] = defaultdict(int)
    self_: dict[str, int] = defaultdict(int)
    dev: dict[str, int] = defaultdict(int)
    children: dict[int, int] = defaultdict(int)
    for o in ops:
        parent = innermost(o["tid"], o["ts"], o["ts"] + o["dur"], child=o)
        if parent is not None:
            children[id(parent)] += ns(o["dur"])
    for o in ops:
        if str(o["name"]).startswith("ProfilerStep#") or not lo <= o["ts"] < hi:
            continue
        total[o["name"]] += ns(o["dur"])
        self_[o["name"]] += max(ns(o["dur"]) - children[id(o)], 0)
        dev[o["name"]] += device[id(o)]
    top_launcher = {k: max(v.items(), key=lambda kv: kv[1])[0] for k, v in launched.items()}
    return {"kernels": kernels, "launcher": top_launcher, "total": total, "self": self_, "device": dev}


@pytest.fixture(scope="module")
def rank0() -> tuple[dict[str, Any], dict[str, Any]]:
    path = next(external(DLRM).glob("worker0_*.json"))
    return analyze(path).to_dict(), _raw(path)


def test_kernels_equal_raw_sums(rank0: tuple[dict[str, Any], dict[str, Any]]) -> None:
    report, raw = rank0
    kernels = {k["name"]: k for k in report["kernels"]}
    assert report["schema_version"] == "1.5" and len(kernels) == len(raw["kernels"]) > 20
    all_ns = sum(raw["kernels"].values())
    for name, truth in raw["kernels"].items():
        k = kernels[name]
        assert round(k["total_ms"] * 1e6) == truth, name
        assert k["share_pct"] == pytest.approx(100 * truth / all_ns, abs=1e-3)
        assert k["mean_us"] == pytest.approx(truth / k["count"] / 1e3, abs=1e-3)
        assert k["launched_by"] == raw["launcher"].get(name), name
    totals = [k["total_ms"] for k in report["kernels"]]
    assert totals == sorted(totals, reverse=True)
    assert {k["tensor_cores"] for k in report["kernels"]} == {False}  # fp32 DLRM on V100: sgemm, no HMMA


def test_operators_equal_raw_sums(rank0: tuple[dict[str, Any], dict[str, Any]]) -> None:
    report, raw = rank0
    ops = {o["name"]: o for o in report["operators"]}
    assert len(ops) == len(raw["total"]) > 20
    for name in raw["total"]:
        o = ops[name]
        assert round(o["host_total_ms"] * 1e6) == raw["total"][name], name
        assert round(o["host_self_ms"] * 1e6) == raw["self"][name], name
        assert round(o["device_ms"] * 1e6) == raw["device"][name], name
    assert ops["aten::copy_"]["host_self_ms"] == ops["aten::copy_"]["host_total_ms"]  # a leaf op


def test_multi_rank_lists_are_the_mean_over_ranks_with_the_worst_rank() -> None:
    job = external(DLRM)
    report = analyze(job).to_dict()
    raws = {
        int(p.name.split("_")[0].removeprefix("worker")): _raw(p)["kernels"] for p in sorted(job.glob("worker*_*.json"))
    }
    assert len(raws) == 8
    for k in report["kernels"][:10]:
        per_rank = {r: raw.get(k["name"], 0) for r, raw in raws.items()}
        assert k["total_ms"] == pytest.approx(sum(per_rank.values()) / 8 / 1e6, abs=1e-6)
        worst = max(per_rank.values())
        assert k["worst_rank_total_ms"] == pytest.approx(worst / 1e6, abs=1e-6)
        assert per_rank[k["worst_rank"]] == worst


def test_operator_input_shapes_are_the_most_frequent_input_dims(rank0: tuple[dict[str, Any], dict[str, Any]]) -> None:
    from collections import Counter

    report, _raw_views = rank0
    path = next(external(DLRM).glob("worker0_*.json"))
    events = json.loads(path.read_text())["traceEvents"]
    (step,) = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    lo, hi = step["ts"], step["ts"] + step["dur"]
    dims: dict[str, Counter[str]] = {}
    for e in events:
        if e.get("cat") == "cpu_op" and lo <= e["ts"] < hi and (e.get("args") or {}).get("Input Dims"):
            dims.setdefault(e["name"], Counter())[json.dumps(e["args"]["Input Dims"])] += 1
    ops = {o["name"]: o for o in report["operators"]}
    checked = 0
    for name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
        if name in ops and name in dims:
            counts = dims[name].most_common()
            best = [json.loads(text) for text, n in counts if n == counts[0][1]]
            assert ops[name]["input_shapes"] in best, name
            checked += 1
    assert checked >= 2
    assert ops["aten::copy_"]["input_shapes"] is None  # not a shape op: the reader keeps no dims
