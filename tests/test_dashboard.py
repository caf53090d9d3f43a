"""Every dashboard page through Streamlit's AppTest, on a store filled from real and sample traces."""

from __future__ import annotations

import base64
import csv
import gzip
import html
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from mlprof.analysis import analyze_job
from mlprof.analyzers.intervals import merge
from mlprof.compare import compare_analyses
from mlprof.dashboard import data, figures
from mlprof.dashboard.costs import headline
from mlprof.dashboard.timeline import bin_series, merge_bands
from mlprof.store import ingest
from mlprof.store.parquet_cache import run_dir
from mlprof.trace.loader import load_job
from mlprof.untrusted import md_text

from conftest import SAMPLES, external


def _top(source: Path) -> Any:
    """The first ranked finding of ``mlprof.analyze`` on the same input: what the dashboard must show first."""
    import mlprof

    return mlprof.analyze(source).findings.iloc[0]


APP = str(Path(__file__).resolve().parents[1] / "mlprof" / "dashboard" / "app.py")
RECORDED = SAMPLES / "scenarios" / "recorded"
SYNTHETIC = SAMPLES / "synthetic"
COUNTERS_CSV = Path(__file__).resolve().parent / "data" / "counters" / "nvidia_smi_units.csv"


@dataclass
class Store:
    """A run store built for the module: its URL, its Parquet cache, and the run id of each input by name."""

    url: str
    cache: str
    ids: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.ids[name]

    def __len__(self) -> int:
        return len(self.ids)


def _use(store: Store) -> None:
    """Point the dashboard (and ``ingest``) at ``store``: they read MLPROF_STORE / MLPROF_CACHE."""
    os.environ["MLPROF_STORE"] = store.url
    os.environ["MLPROF_CACHE"] = store.cache


@pytest.fixture(scope="module", autouse=True)
def _restore_environment() -> Iterator[None]:
    old = {k: os.environ.get(k) for k in ("MLPROF_STORE", "MLPROF_CACHE")}
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _new_store(root: Path, inputs: dict[str, tuple[Path, dict[str, str]]]) -> Store:
    store = Store(str(root / "team.db"), str(root / "cache"), {})
    _use(store)
    for name, (path, tags) in inputs.items():
        store.ids[name] = ingest(path, tags=tags or None).run_id
    return store


def _counters_run(folder: Path, counters: Path, tags: dict[str, str]) -> Path:
    """A run folder holding the healthy synthetic trace and a GPU counters file."""
    folder.mkdir()
    shutil.copy(SYNTHETIC / "healthy.json.gz", folder / "trace.rank0.json.gz")
    shutil.copy(counters, folder / f"counters.rank0{counters.suffix}")
    (folder / "meta.json").write_text(json.dumps({"run": "with counters", "tags": tags}))
    return folder


def _two_ranks(folder: Path) -> Path:
    """The synthetic comm trace as ranks 0 and 1 of a two-rank job (NCCL all-reduce on stream 20)."""
    folder.mkdir()
    doc = json.loads(gzip.decompress((SYNTHETIC / "comm_exposed.json.gz").read_bytes()))
    for rank in (0, 1):
        ranked = dict(doc, distributedInfo={"rank": rank, "world_size": 2})
        (folder / f"rank-{rank}.json.gz").write_bytes(gzip.compress(json.dumps(ranked).encode()))
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store of bundled traces only (a clean clone has them): synthetic GPU traces with known timings, a
    two-rank job, recorded run folders (bad/fixed data loader, a leak) and a run folder with nvidia-smi counters."""
    root = tmp_path_factory.mktemp("dash")
    return _new_store(
        root,
        {
            "starved": (SYNTHETIC / "data_starvation.json.gz", {"project": "synthetic", "kind": "starved"}),
            "job": (_two_ranks(root / "job"), {"project": "synthetic"}),
            "bad": (RECORDED / "data_starvation" / "bad", {"project": "loader"}),
            "fixed": (RECORDED / "data_starvation" / "fixed", {"project": "loader"}),
            "leak": (RECORDED / "memory_leak" / "bad", {}),
            "counters": (_counters_run(root / "counters_run", COUNTERS_CSV, {"project": "a100"}), {}),
            "healthy": (SYNTHETIC / "healthy.json.gz", {}),
        },
    )


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store of real third-party GPU traces (../shared) and a run folder with a real nvidia-smi log."""
    root = tmp_path_factory.mktemp("dash_real")
    counters = _counters_run(
        root / "counters_run", external("RCKola__Rectified-Point-Flow/gpu_usage.csv"), {"project": "pointflow"}
    )
    return _new_store(
        root,
        {
            "nw0": (external("pytorch__kineto/resnet50_num_workers_0"), {"project": "resnet", "workers": "0"}),
            "nw4": (external("pytorch__kineto/resnet50_num_workers_4"), {"project": "resnet", "workers": "4"}),
            "dlrm": (external("facebookresearch__param/dlrm_kineto"), {"project": "dlrm"}),
            "counters": (counters, {}),
        },
    )


def _steps_from_json(path: Path) -> list[dict[str, Any]]:
    """``ProfilerStep#N`` ranges read straight from the trace JSON (ns), not through mlprof."""
    doc = json.loads(gzip.decompress(path.read_bytes()))
    steps = [e for e in doc["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#")]
    return sorted(
        (
            {"step": int(e["name"].split("#")[1]), "ts": round(e["ts"] * 1000), "dur": round(e["dur"] * 1000)}
            for e in steps
        ),
        key=lambda e: e["ts"],
    )


def _app(store: Store, **params: str) -> AppTest:
    _use(store)
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _figures(at: AppTest) -> dict[str, dict[str, Any]]:
    """Plotly charts on the page by title, as the JSON spec sent to the browser."""
    out = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        out[spec["layout"]["title"]["text"]] = spec
    return out


def _arr(value: Any) -> list[Any]:
    """A plotly data array as a list (plotly >= 6 sends numpy arrays as base64 ``bdata``)."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            flat = flat.reshape([int(x) for x in str(shape).split(",")])
        return flat.tolist()
    return list(value)


def _table(at: AppTest, column: str, not_column: str = "") -> pd.DataFrame:
    """The first dataframe on the page with ``column`` (and without ``not_column``)."""
    return next(d.value for d in at.dataframe if column in d.value.columns and not_column not in d.value.columns)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# ---- bundled traces: what a clean clone runs --------------------------------------------------


def test_runs_page_table_filters_trend_and_open(store: Store) -> None:
    at = _app(store)
    table = at.dataframe[0].value
    assert len(table) == len(store)
    row = table[table["id"] == store["starved"]].iloc[0]
    durations = [s["dur"] for s in _steps_from_json(SYNTHETIC / "data_starvation.json.gz")]
    assert row["median step ms"] == pytest.approx(np.median(durations) / 1e6, abs=1e-3)  # 8.3 ms
    top = _top(SYNTHETIC / "data_starvation.json.gz")
    assert row["top finding"].startswith(top.rule) and row["top speedup"] == pytest.approx(
        top.expected_speedup, abs=0.005
    )
    assert row["tags"] == "kind=starved project=synthetic"
    trend = _figures(at)["Step time across runs"]
    lines = {t["name"]: t for t in trend["data"]}
    assert set(lines) - {"regression (> +10% vs previous run)"} == {"synthetic", "loader", "a100", "(untagged)"}
    # the recorded loader runs: medians of the steady steps, read from the manifest (trace JSON decimals)
    manifest = json.loads((RECORDED / "manifest.json").read_text())
    medians = [manifest["scenarios"]["data_starvation"][k]["trace_step_ns"]["median"] / 1e6 for k in ("bad", "fixed")]
    assert sorted(_arr(lines["loader"]["y"])) == pytest.approx(sorted(medians), abs=0.05)

    at.multiselect(key="f_tags").select("kind=starved").run()
    assert list(at.dataframe[0].value["name"]) == ["data_starvation"]
    at.multiselect(key="f_tags").unselect("kind=starved").run()
    at.text_input(key="f_gpu").input("H100").run()
    # the synthetic traces say H100 in deviceProperties; the recordings are CPU-only
    assert set(at.dataframe[0].value["id"]) == {store[k] for k in ("starved", "job", "counters", "healthy")}

    at.selectbox(key="open_pick").select(store["starved"]).run()
    at.button(key="open_run").click().run()
    assert not at.exception
    assert at.query_params["page"] == "run" and at.query_params["run"] == str(store["starved"])
    assert at.header[0].value == f"Run {store['starved']}: {md_text('data_starvation')}"


def test_trend_marks_regressions(store: Store) -> None:
    runs = data.read_runs(store.url)
    one_line = pd.Series(["all"] * len(runs))
    slow = figures.regressions(runs, one_line)
    ordered = runs.sort_values(["started_at", "id"])
    ratio = ordered["step_ms_median"] / ordered["step_ms_median"].shift(1) - 1
    expected = set(ordered.loc[ratio > 0.10, "id"])
    assert expected and set(slow["id"]) == expected
    names = [t["name"] for t in figures.step_trend(runs, one_line).to_plotly_json()["data"]]
    assert names == ["all", "regression (> +10% vs previous run)"]
    # one line per project: loader went 18.9 -> 7.9 ms: no regression
    by_project = runs["tags"].map(lambda t: t.get("project", "(untagged)"))
    assert "fixed" not in set(figures.regressions(runs, by_project)["name"])


def test_run_page_single_gpu(store: Store) -> None:
    at = _app(store, page="run", run=str(store["starved"]))
    metrics = _metrics(at)
    truth = next(
        t for t in json.loads((SYNTHETIC / "manifest.json").read_text())["traces"] if t["scenario"] == "data_starvation"
    )
    steps = truth["steps"]
    mean_ms = sum(s["dur_ns"] for s in steps) / len(steps) / 1e6
    busy = (
        100
        * sum(s["compute"] + s["memcpy_exposed"] + s["comm_exposed"] for s in steps)
        / sum(s["dur_ns"] for s in steps)
    )
    assert metrics["Mean step"] == f"{mean_ms:.2f} ms" == "8.30 ms"
    assert metrics["GPU busy"] == f"{busy:.1f} %"
    assert metrics["MFU"] == "-"  # no --flops-per-step given
    top = _top(SYNTHETIC / "data_starvation.json.gz")
    assert at.expander[0].label.startswith(f"1. {top.rule} {top.expected_speedup:.2f}x [{top.severity}]")
    data001 = next(e for e in at.expander if " DATA001 " in e.label)
    assert "num_workers=8" in data001.code[0].value
    figs = _figures(at)
    plan_rules = _arr(figs["Cumulative effect of the ranked fixes (ms per step)"]["data"][0]["x"])
    assert plan_rules[0] == "step now" and "DATA001" in plan_rules and plan_rules[-1] == "after all fixes"
    breakdown = figs["Where each step's time goes"]["data"]
    assert [t["name"] for t in breakdown][:2] == ["compute", "comm_exposed"] and len(_arr(breakdown[0]["x"])) == 6
    longest = max(steps, key=lambda s: s["dur_ns"])["step"]
    timeline = figs[f"Timeline of step {longest} (shaded: the step)"]
    lanes = {y for t in timeline["data"] for y in _arr(t["y"]) if y}
    assert "GPU 0 stream 7" in lanes and any(lane.startswith("CPU thread") for lane in lanes)
    # money follows the price: per 1,000 steps = mean step x 1000 x 1 GPU / 3600 s
    per_k = mean_ms / 3600
    assert metrics["Per 1,000 steps"] == f"{per_k:,.3f} GPU-h"
    at.number_input(key="price").set_value(4.0).run()
    plan = float(_metrics(at)["All fixes"].rstrip("x"))
    assert _metrics(at)["Saved per 1,000 steps"] == f"${per_k * (1 - 1 / plan) * 4:,.2f}"


def test_mfu_from_the_models_flops(store: Store) -> None:
    run = data.read_run(store.url, store["starved"])
    assert run is not None and run["model_flops_per_step"] is None
    run["model_flops_per_step"] = 2.0e12  # what --flops-per-step records
    figures_ = headline(run, 2.0)
    # H100 SXM: 989 TFLOP/s dense FP16/BF16 tensor peak (NVIDIA datasheet); mean step 8.3 ms on 1 GPU
    assert figures_["mfu_pct"] == pytest.approx(100 * 2.0e12 / (0.0083 * 989e12), rel=1e-6)
    assert figures_["per_1k_steps_gpu_hours"] == pytest.approx(8.3 / 3600, rel=1e-6)


def test_run_page_multi_rank_heatmap(store: Store) -> None:
    at = _app(store, page="run", run=str(store["job"]))
    heat = _figures(at)["Per rank: dur (ms)"]["data"][0]
    assert _arr(heat["y"]) == ["rank 0", "rank 1"]  # the same trace twice: no straggler marked
    run = data.read_run(store.url, store["job"])
    assert run is not None
    for rank in (0, 1):
        mine = run["steps"][run["steps"]["rank"] == rank].sort_values("step")
        assert _arr(heat["z"])[rank] == pytest.approx(list(mine["dur_ns"] / 1e6))
    # the stored steps are the trace's ProfilerStep ranges (float us with ns decimals in the JSON)
    json_ms = [s["dur"] / 1e6 for s in _steps_from_json(SYNTHETIC / "comm_exposed.json.gz")]
    assert _arr(heat["z"])[0] == pytest.approx(json_ms, abs=1e-3)
    assert heat["texttemplate"] == "%{z:.2f}"
    assert at.selectbox(key="timeline_rank").options == ["0", "1"]
    at.selectbox(key="heat_value").select("comm_exposed").run()
    assert "Per rank: comm_exposed (ms)" in _figures(at)


def test_run_page_memory_curve_with_leak_trend(store: Store) -> None:
    at = _app(store, page="run", run=str(store["leak"]))
    assert at.expander[0].label.startswith("1. MEM001")
    memory = _figures(at)["Memory: allocated over time, level at each step start and its trend"]
    names = [t["name"] for t in memory["data"]]
    trend = [n for n in names if " trend " in n]
    assert trend and trend[0].startswith("cpu:") and "+0.50 MiB/step" in trend[0]


def _nvidia_smi_truth(path: Path) -> tuple[float, float]:
    """Device 0's mean utilization.gpu (%) and largest memory.used (MiB), read from the CSV itself."""
    with path.open() as fh:
        rows = [r for r in csv.DictReader(fh, skipinitialspace=True) if r["index"].strip() == "0"]
    util = [float(r["utilization.gpu [%]"].split()[0]) for r in rows if r["utilization.gpu [%]"][:1].isdigit()]
    mem = [float(r["memory.used [MiB]"].split()[0]) for r in rows if r["memory.used [MiB]"][:1].isdigit()]
    return sum(util) / len(util), max(mem)


def test_run_page_counters(store: Store) -> None:
    at = _app(store, page="run", run=str(store["counters"]))
    table = _table(at, "util_mean_pct")
    util, mem = _nvidia_smi_truth(COUNTERS_CSV)
    assert table["util_mean_pct"].iloc[0] == pytest.approx(util, abs=0.01)
    assert table["mem_used_max_mib"].iloc[0] == pytest.approx(mem)
    counters = _figures(at)["GPU counters (bytes shown as MiB)"]
    titles = [a["text"] for a in counters["layout"]["annotations"]]
    assert {"gpu_util_pct", "mem_used_bytes"} <= set(titles)


def test_compare_page_achieved_vs_predicted(store: Store) -> None:
    at = _app(store, page="compare", a=str(store["bad"]), b=str(store["fixed"]))
    metrics = _metrics(at)
    # The same comparison as `mlprof compare` of the two folders (its figures come from the same code).
    cli = compare_analyses(*(analyze_job(load_job(RECORDED / "data_starvation" / k), k) for k in ("bad", "fixed")))
    assert metrics["A median steady step"] == f"{cli.step.base_ms:,.2f} ms" == "18.89 ms"
    assert metrics["B median steady step"] == f"{cli.step.new_ms:,.2f} ms" == "7.88 ms"
    assert metrics["Achieved speedup"] == f"{cli.step.speedup:.2f}x" == "2.40x"
    assert metrics["Predicted by A's findings"] == "2.69x"  # DATA001's (replayed) prediction on the bad run
    categories = at.dataframe[0].value.set_index("category")
    change = categories["change ms (mean steady step)"].sum()
    assert change == pytest.approx(cli.step.new.mean_ms - cli.step.base.mean_ms, abs=0.002)  # explained exactly
    findings = at.dataframe[1].value.set_index("rule")
    assert bool(findings.loc["DATA001", "acted on"])
    cli_data = next(p for p in cli.predicted if p.rule == "DATA001")
    assert findings.loc["DATA001", "A lost ms/step"] == pytest.approx(cli_data.base_lost_ms, abs=5e-4)
    assert findings.loc["DATA001", "achieved (whole steady step)"] == pytest.approx(cli.step.speedup, abs=1e-3)
    ops = _figures(at)["Kernels and ops that changed most"]["data"][0]
    assert len(_arr(ops["y"])) > 0


def test_compare_page_runs_without_findings(store: Store) -> None:
    at = _app(store, page="compare", a=str(store["healthy"]), b=str(store["counters"]))
    metrics = _metrics(at)
    assert metrics["Achieved speedup"] == "1.00x"  # the same trace, with and without counters
    assert metrics["Predicted by A's findings"] == "-"
    assert at.markdown[-1].value == "Neither run has findings."


def test_url_parameters_are_ids_only(store: Store) -> None:
    at = _app(store, page="run", run="../../etc/passwd")
    assert at.info[0].value == "Choose a run on the Runs page."
    at = _app(store, page="run", run="999999")
    assert at.warning[0].value == "There is no run 999999 in this store."
    at = _app(store, page="/etc/passwd")
    assert at.header[0].value == "Runs"
    with pytest.raises(ValueError, match="not a run key"):
        run_dir(Path("/tmp"), "../../etc")


def _bands_cover_the_events(trace: Any, pixels: int = 1500) -> None:
    gpu = trace.gpu[trace.gpu["kind"].astype(str) != "sync"]
    events = pd.DataFrame(
        {"lane": "stream " + gpu["stream"].astype(str), "ts": gpu["ts"], "end": gpu["end"], "name": gpu["name"]}
    )
    exact = merge_bands(events, 0)
    assert exact["events"].sum() == len(events)
    for lane, part in events.groupby("lane"):
        s, e = merge(part["ts"].to_numpy(np.int64), part["end"].to_numpy(np.int64))
        bands = exact[exact["lane"] == lane]
        # bands that touch are merged by the union too; compare covered time and extent
        assert int((bands["end"] - bands["ts"]).sum()) == int((e - s).sum())
        assert bands["ts"].min() == s.min() and bands["end"].max() == e.max()
    span = int(events["end"].max() - events["ts"].min())
    coarse = merge_bands(events, span // pixels)
    assert len(coarse) < len(exact) / 5 and coarse["events"].sum() == len(events)
    longest = events.loc[(events["end"] - events["ts"]).idxmax()]
    assert str(longest["name"]) in set(coarse["top_name"])


def test_timeline_bands_cover_exactly_the_events_at_zero_resolution() -> None:
    # 500 kernels of 5 us, 30 us apart, on one stream over 16 ms: at 100 bands across, they merge
    _bands_cover_the_events(load_job(SYNTHETIC / "launch_bound.json.gz")[0], pixels=100)


def test_bin_series_keeps_peaks() -> None:
    trace = load_job(RECORDED / "memory_leak" / "bad")[0]
    mem = trace.memory[trace.memory["total_allocated"] >= 0]
    ts, val = bin_series(mem["ts"].to_numpy(np.int64), mem["total_allocated"].to_numpy(np.int64), 50)
    assert len(ts) <= 50 and val.max() == mem["total_allocated"].max()


def _shapes(spec: dict[str, Any], color: str = figures.FINDING_COLOR) -> list[dict[str, Any]]:
    return [s for s in spec["layout"].get("shapes", []) if s.get("fillcolor") == color]


def _finding_ranges_drawn(store: Store, name: str, pick: int, rule: str) -> None:
    """Any step can be picked on the timeline; the bands drawn are exactly the findings' stored time ranges
    that cross the drawn window (the step and a tenth of it either side)."""
    run = data.read_run(store.url, store[name])
    assert run is not None
    at = _app(store, page="run", run=str(store[name]))
    steps = data.rank_steps(run["steps"], 0)
    picker = at.selectbox(key="timeline_step")
    longest = max(steps, key=lambda s: s["end"] - s["ts"])["step"]
    assert picker.value == longest and pick != longest  # the longest step is drawn first, and says so
    label = next(o for o in picker.options if o.startswith(f"step {longest} · "))
    assert "longest" in label and rule in label
    picker.select(pick).run()
    spec = _figures(at)[f"Timeline of step {pick} (shaded: the step)"]
    step = next(s for s in steps if s["step"] == pick)
    lo = step["ts"] - (step["end"] - step["ts"]) // 10
    hi = step["end"] + (step["end"] - step["ts"]) // 10
    found = next(f for f in run["findings"] if f["rule"] == rule)
    inside = [(a, b) for a, b in found["detail"]["time_ranges_ns"] if a < step["end"] and b > step["ts"]]
    assert len(inside) == 1
    expected = {
        (f["rule"], max(a, lo), min(b, hi))
        for f in run["findings"]
        for a, b in f["detail"]["time_ranges_ns"]
        if a < hi and b > lo
    }
    bands = _shapes(spec)
    assert len(bands) == len(expected)
    drawn = {(b["name"].removeprefix("finding "), b["x0"], b["x1"]) for b in bands}
    assert drawn == {(r, (a - lo) / 1e6, (b - lo) / 1e6) for r, a, b in expected}
    band = next(b for b in bands if b["name"] == f"finding {rule}")
    assert band["x0"] == pytest.approx((inside[0][0] - lo) / 1e6)
    assert band["x1"] == pytest.approx((inside[0][1] - lo) / 1e6)
    labels = [a["text"] for a in spec["layout"]["annotations"]]
    assert sorted(labels) == sorted({r for r, _, _ in expected})
    # compute, memcpy/memset, host ops and runtime calls each in their own colour
    colors = {t["name"]: t["line"]["color"] for t in spec["data"] if t.get("mode") == "lines"}
    assert {"compute", "cpu op", "cuda runtime"} <= set(colors) and len(set(colors.values())) == len(colors)


def test_timeline_draws_the_findings_ranges_in_any_step(store: Store) -> None:
    # DataLoader waits open every synthetic step (3.0, 3.4, 2.8, 3.6, ... ms); the finding keeps its 5 longest
    # ranges, so step 4's is not drawn; step 3 has one and is not the longest step (step 5, 8.7 ms)
    _finding_ranges_drawn(store, "starved", 3, "DATA001")


def _nccl_in_window(store: Store, name: str, trace_path: Path) -> None:
    at = _app(store, page="run", run=str(store[name]))
    run = data.read_run(store.url, store[name])
    assert run is not None
    step = data.worst_step(run["steps"], 0)  # the timeline opens on the longest step
    assert step is not None
    spec = next(v for k, v in _figures(at).items() if k.startswith(f"Timeline of step {step['step']} on rank 0"))
    comm = next(t for t in spec["data"] if t["name"] == "communication")
    assert comm["line"]["color"] == figures.KIND_COLORS["communication"] != figures.KIND_COLORS["compute"]
    # hover text is HTML: a kernel's own "<" arrives escaped and shows literally
    hovered = {html.unescape(str(t).split("<br>")[0]) for t in _arr(comm["text"]) if t}
    # truth from the trace: the NCCL kernels of rank 0 in the drawn window
    margin = (step["end"] - step["ts"]) // 10
    gpu = load_job(trace_path)[0].gpu
    window = gpu[(gpu["ts"] < step["end"] + margin) & (gpu["end"] > step["ts"] - margin)]
    nccl = {str(n) for n in window["name"].astype(str) if "nccl" in n.lower()}
    assert nccl and hovered and hovered <= nccl


def test_timeline_names_communication_kernels_in_their_own_colour(store: Store) -> None:
    _nccl_in_window(store, "job", SYNTHETIC / "comm_exposed.json.gz")


def _kernel_and_op_tabs(store: Store, name: str, kernel_search: str, op_search: str) -> AppTest:
    run = data.read_run(store.url, store[name])
    assert run is not None
    rows = run["ops"][run["ops"]["kind"] == "kernel"]
    at = _app(store, page="run", run=str(store[name]))
    table = _table(at, "% of kernel time")
    assert len(table) == len(rows)
    top = rows.iloc[0]
    first = table.iloc[0]
    assert first["name"] == top["name"] and first["count"] == top["count"]
    assert first["total ms"] == pytest.approx(top["total_ns"] / 1e6, abs=1e-3)
    assert first["mean µs"] == pytest.approx(top["total_ns"] / top["count"] / 1e3, abs=1e-3)
    assert first["% of kernel time"] == pytest.approx(100 * top["total_ns"] / rows["total_ns"].sum(), abs=1e-3)
    assert table["% of kernel time"].sum() == pytest.approx(100.0, abs=0.05)
    assert list(table["total ms"]) == sorted(table["total ms"], reverse=True)
    at.text_input(key="k_search").input(kernel_search).run()
    found = _table(at, "% of kernel time")
    expected = rows[rows["name"].str.lower().str.contains(kernel_search.lower(), regex=False)]
    assert len(found) == len(expected) > 0 and all(kernel_search.lower() in n.lower() for n in found["name"])
    at.selectbox(key="k_sort").select("count").run()
    counts = list(_table(at, "% of kernel time")["count"])
    assert counts == sorted(counts, reverse=True)
    ops = _table(at, "mean µs", not_column="% of kernel time")
    op_rows = run["ops"][run["ops"]["kind"] == "op"]
    assert len(ops) == len(op_rows) and ops.iloc[0]["name"] == op_rows.iloc[0]["name"]
    at.text_input(key="o_search").input(op_search).run()
    shown = _table(at, "mean µs", not_column="% of kernel time")["name"]
    assert len(shown) > 0 and all(op_search in n for n in shown)
    return at


def test_kernel_and_operator_tabs_search_and_sort(store: Store) -> None:
    # the synthetic trace's kernels: cuBLAS xmma GEMMs, elementwise, reduce and multi-tensor kernels
    at = _kernel_and_op_tabs(store, "starved", "gemm", "aten::")
    # a finding with time ranges links its step as a Perfetto trace (the bytes are tested below)
    assert any(
        b.label.startswith("Download step ") and "with this finding" in b.label for b in at.get("download_button")
    )


def _perfetto_window(store: Store, name: str, pick: int, rule: str, trace_path: Path) -> None:
    run = data.read_run(store.url, store[name])
    assert run is not None
    step = next(s for s in data.rank_steps(run["steps"], 0) if s["step"] == pick)
    found = data.finding_bands(run["findings"], 0, step["ts"], step["end"])
    doc = json.loads(data.read_window_trace(store.url, run["run_key"], 0, step["ts"], step["end"], found) or b"")
    events = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    marks = [e for e in events if e["cat"] == "mlprof"]
    assert [e["name"].split(":")[0] for e in marks] == list(found["rule"]) and rule in found["rule"].tolist()
    trace = load_job(trace_path)[0]
    gpu = trace.gpu[trace.gpu["kind"].astype(str) != "sync"]
    in_window = gpu[(gpu["ts"] < step["end"]) & (gpu["end"] > step["ts"])]
    assert sum(1 for e in events if e["cat"] == "gpu") == len(in_window) > 0
    assert sum(e["dur"] for e in events if e["cat"] == "gpu") == pytest.approx(in_window["dur"].sum() / 1e3)


def test_perfetto_window_and_allocating_ops_against_the_trace(store: Store) -> None:
    _perfetto_window(store, "starved", 3, "DATA001", SYNTHETIC / "data_starvation.json.gz")
    leak = data.read_run(store.url, store["leak"])
    assert leak is not None
    lstep = data.rank_steps(leak["steps"], 0)[3]
    ops = data.read_allocating_ops(store.url, leak["run_key"], 0, lstep["ts"], lstep["end"], top=1000)
    assert ops is not None
    mem = load_job(RECORDED / "memory_leak" / "bad")[0].memory
    allocs = mem[(mem["ts"] >= lstep["ts"]) & (mem["ts"] < lstep["end"]) & (mem["bytes"] > 0)]
    assert ops["allocations"].sum() == len(allocs)
    assert ops["MiB allocated"].sum() == pytest.approx(allocs["bytes"].sum() / (1 << 20), abs=0.01)
    window = data.read_memory_window(store.url, leak["run_key"], 0, lstep["ts"], lstep["end"])
    assert window is not None
    allocated = window[window["series"] == "allocated"]
    live = mem[(mem["ts"] >= lstep["ts"]) & (mem["ts"] < lstep["end"]) & (mem["total_allocated"] >= 0)]
    assert allocated["bytes"].max() == live["total_allocated"].max()


def test_runs_page_filters_live_in_the_url(store: Store) -> None:
    at = _app(store, page="runs", tags="project=loader", sort="step_time")
    assert set(at.dataframe[0].value["id"]) == {store["bad"], store["fixed"]}
    assert at.multiselect(key="f_tags").value == ["project=loader"]
    at.text_input(key="f_name").input("fix").run()
    assert list(at.dataframe[0].value["name"]) == ["fixed"]
    assert at.query_params["name"] == "fix" and at.query_params["tags"] == "project=loader"
    assert at.query_params["sort"] == "step_time"
    # the columns a user scans first lead the table
    assert list(at.dataframe[0].value.columns[:6]) == [
        "name",
        "started",
        "median step ms",
        "top finding",
        "top speedup",
        "all fixes",
    ]


def test_compare_with_another_run(store: Store) -> None:
    at = _app(store, page="run", run=str(store["fixed"]))
    picker = at.selectbox(key="compare_with")
    assert store["fixed"] not in picker.options and str(store["fixed"]) not in picker.options
    picker.select(store["bad"]).run()
    at.button(key="to_compare").click().run()
    assert at.query_params["page"] == "compare"
    assert at.query_params["a"] == str(store["bad"]) and at.query_params["b"] == str(store["fixed"])
    assert _metrics(at)["Achieved speedup"] == "2.40x"  # median steady step 18.89 -> 7.88 ms


def _stored_compare_equals_the_cli(store: Store, a_name: str, b_name: str, folders: list[Path]) -> Any:
    """The Compare page compares stored reports with `mlprof compare`'s code: same achieved step, same spread,
    same set-aside steps, same categories and predictions as comparing the trace folders themselves."""
    from mlprof.dashboard.run_diff import diff_runs
    from mlprof.report.compare_report import comparison_json

    stored = diff_runs(data.read_run(store.url, store[a_name]), data.read_run(store.url, store[b_name])).comparison
    cli = compare_analyses(*(analyze_job(load_job(p), str(p)) for p in folders))
    a, b = comparison_json(stored), comparison_json(cli)
    assert a["step_time_ms"] == b["step_time_ms"]
    assert a["new"]["set_aside"] == b["new"]["set_aside"]
    assert a["categories"] == b["categories"] and a["where_time_went"] == b["where_time_went"]
    assert a["findings"] == b["findings"]
    assert a["predicted_vs_achieved"] == b["predicted_vs_achieved"]
    # Kernels by name: the store keeps the top 200 kernels per run (no copies); those it keeps match exactly.
    cli_kernels = cli.names.of("kernel").set_index("name")
    stored_kernels = stored.names.of("kernel").set_index("name")
    both = cli_kernels.loc[stored_kernels.index]
    np.testing.assert_allclose(stored_kernels["base_ns"], both["base_ns"], rtol=1e-9)
    np.testing.assert_allclose(stored_kernels["new_ns"], both["new_ns"], rtol=1e-9)
    np.testing.assert_allclose(stored_kernels["new_count"], both["new_count"], rtol=1e-9)
    return a, stored_kernels


def test_compare_from_stored_runs_equals_the_cli(store: Store) -> None:
    a, _ = _stored_compare_equals_the_cli(
        store, "bad", "fixed", [RECORDED / "data_starvation" / k for k in ("bad", "fixed")]
    )
    manifest = json.loads((RECORDED / "manifest.json").read_text())["scenarios"]["data_starvation"]
    ratio = manifest["bad"]["trace_step_ns"]["median"] / manifest["fixed"]["trace_step_ns"]["median"]
    assert a["step_time_ms"]["speedup"] == pytest.approx(ratio, abs=0.01)


# ---- real third-party GPU traces (../shared): marked external ----------------------------------


def test_real_runs_page_row_and_gpu_filter(real_store: Store) -> None:
    at = _app(real_store)
    table = at.dataframe[0].value
    assert len(table) == len(real_store)
    row = table[table["id"] == real_store["nw0"]].iloc[0]
    assert row["median step ms"] == pytest.approx(152.469, abs=1e-3)
    top = _top(external("pytorch__kineto/resnet50_num_workers_0"))
    assert row["top finding"].startswith(top.rule) and row["top speedup"] == pytest.approx(
        top.expected_speedup, abs=0.005
    )
    assert row["tags"] == "project=resnet workers=0"
    lines = {t["name"]: t for t in _figures(at)["Step time across runs"]["data"]}
    # Medians of the steady steps: nw4 sets aside its warm-up step 16 and its 206.5 ms outlier step 21.
    assert sorted(_arr(lines["resnet"]["y"])) == pytest.approx([122.525, 152.469], abs=1e-3)
    at.text_input(key="f_gpu").input("V100").run()
    assert set(at.dataframe[0].value["id"]) == {real_store["nw0"], real_store["nw4"], real_store["dlrm"]}


def test_real_run_page_single_gpu(real_store: Store) -> None:
    at = _app(real_store, page="run", run=str(real_store["nw0"]))
    metrics = _metrics(at)
    assert metrics["Mean step"] == "152.96 ms" and metrics["GPU busy"] == "64.4 %"
    top = _top(external("pytorch__kineto/resnet50_num_workers_0"))
    assert at.expander[0].label.startswith(f"1. {top.rule} {top.expected_speedup:.2f}x [{top.severity}]")
    assert "Timeline of step 16 (shaded: the step)" in _figures(at)  # step 16 is the longest
    assert metrics["Per 1,000 steps"] == f"{152.955167 / 3600:,.3f} GPU-h"
    # the trace spans ~1 s on one GPU: shown in GPU-seconds
    assert re.fullmatch(r"\d\.\d\d GPU-s", metrics["GPU time recorded"]), metrics["GPU time recorded"]
    run = data.read_run(real_store.url, real_store["nw0"])
    assert run is not None
    run["model_flops_per_step"] = 2.0e12
    # V100: 125 TFLOP/s dense FP16 tensor peak; mean step 152.955 ms on 1 GPU
    assert headline(run, 2.0)["mfu_pct"] == pytest.approx(100 * 2.0e12 / (0.152955167 * 125e12), rel=1e-6)


def test_real_run_page_multi_rank_heatmap(real_store: Store) -> None:
    at = _app(real_store, page="run", run=str(real_store["dlrm"]))
    top = _top(external("facebookresearch__param/dlrm_kineto"))
    assert at.expander[0].label.startswith(f"1. {top.rule} ")
    assert any(" COMM002 " in e.label for e in at.expander)
    heat = _figures(at)["Per rank: dur (ms)"]["data"][0]
    # STRAG001 names rank 7 on DLRM; its row is marked, every cell carries its number
    assert _arr(heat["y"]) == [f"rank {r}" for r in range(7)] + ["rank 7 ◀ straggler"]
    run = data.read_run(real_store.url, real_store["dlrm"])
    assert run is not None
    mine = run["steps"][(run["steps"]["rank"] == 3)]
    assert _arr(heat["z"])[3][0] == pytest.approx(mine["dur_ns"].iloc[0] / 1e6)


def test_real_run_page_counters(real_store: Store) -> None:
    at = _app(real_store, page="run", run=str(real_store["counters"]))
    table = _table(at, "util_mean_pct")
    assert table["util_mean_pct"].iloc[0] == pytest.approx(57.68, abs=0.01)
    assert table["mem_used_max_mib"].iloc[0] == pytest.approx(10904.0)
    titles = [a["text"] for a in _figures(at)["GPU counters (bytes shown as MiB)"]["layout"]["annotations"]]
    assert titles == ["gpu_util_pct", "mem_used_bytes"]


def test_real_timeline_bands() -> None:
    _bands_cover_the_events(load_job(external("pytorch__kineto/resnet50_num_workers_0"))[0])


def test_real_timeline_findings_and_nccl(real_store: Store) -> None:
    # nw0: step 19 has a DATA001 range and no FUSE001 range; DLRM: NCCL kernels in their own colour
    _finding_ranges_drawn(real_store, "nw0", 19, "DATA001")
    _nccl_in_window(real_store, "dlrm", external("facebookresearch__param/dlrm_kineto"))


def test_real_kernel_tabs_and_perfetto(real_store: Store) -> None:
    _kernel_and_op_tabs(real_store, "nw0", "SGEMM", "aten::conv")
    _perfetto_window(real_store, "nw0", 19, "DATA001", external("pytorch__kineto/resnet50_num_workers_0"))


def test_real_compare_from_stored_runs_equals_the_cli(real_store: Store) -> None:
    folders = [external(f"pytorch__kineto/resnet50_num_workers_{w}") for w in (0, 4)]
    a, kernels = _stored_compare_equals_the_cli(real_store, "nw0", "nw4", folders)
    assert a["step_time_ms"]["speedup"] == pytest.approx(1.2443, abs=1e-4)  # steady medians 152.47 -> 122.53 ms
    assert [s["step"] for s in a["new"]["set_aside"]] == [16, 21]
    assert len(kernels) > 50


def test_compare_page_error_names_the_run_path_literally(tmp_path: Path) -> None:
    # An empty run cannot be compared; the warning quotes its path, which st.warning renders as markdown.
    folder = tmp_path / "**b** [l](http:x)"
    folder.mkdir()
    (folder / "e.json").write_text('{"traceEvents": []}')
    store = _new_store(tmp_path, {"empty": (folder / "e.json", {}), "healthy": (SYNTHETIC / "healthy.json.gz", {})})
    at = _app(store, page="compare", a=str(store["empty"]), b=str(store["healthy"]))
    warning = at.warning[-1].value
    assert "no recorded activity to compare" in warning
    assert r"\*\*b\*\* \[l\](http\:x)" in warning  # every markdown character escaped: the path reads as written
