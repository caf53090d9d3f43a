"""Every dashboard page through Streamlit's AppTest, on a store filled from real and sample traces."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from mlprof.analyzers.intervals import merge
from mlprof.dashboard import data, figures
from mlprof.dashboard.costs import headline
from mlprof.dashboard.timeline import bin_series, merge_bands
from mlprof.store import ingest
from mlprof.store.parquet_cache import run_dir
from mlprof.trace.loader import load_job

from conftest import SAMPLES, external

APP = str(Path(__file__).resolve().parents[1] / "mlprof" / "dashboard" / "app.py")
RECORDED = SAMPLES / "scenarios" / "recorded"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A store with real GPU traces, recorded run folders and a run folder with nvidia-smi counters."""
    root = tmp_path_factory.mktemp("dash")
    counters_run = root / "counters_run"
    counters_run.mkdir()
    shutil.copy(SAMPLES / "synthetic" / "healthy.json.gz", counters_run / "trace.rank0.json.gz")
    shutil.copy(
        external("RCKola__Rectified-Point-Flow/gpu_usage.csv"),
        counters_run / "counters.rank0.csv",
    )
    (counters_run / "meta.json").write_text(json.dumps({"run": "with counters", "tags": {"project": "pointflow"}}))
    old = {k: os.environ.get(k) for k in ("MLPROF_STORE", "MLPROF_CACHE")}
    os.environ["MLPROF_STORE"] = str(root / "team.db")
    os.environ["MLPROF_CACHE"] = str(root / "cache")
    ids = {
        "nw0": ingest(external("pytorch__kineto/resnet50_num_workers_0"), tags={"project": "resnet", "workers": "0"}),
        "nw4": ingest(external("pytorch__kineto/resnet50_num_workers_4"), tags={"project": "resnet", "workers": "4"}),
        "dlrm": ingest(external("facebookresearch__param/dlrm_kineto"), tags={"project": "dlrm"}),
        "bad": ingest(RECORDED / "data_starvation" / "bad", tags={"project": "loader"}),
        "fixed": ingest(RECORDED / "data_starvation" / "fixed", tags={"project": "loader"}),
        "leak": ingest(RECORDED / "memory_leak" / "bad"),
        "counters": ingest(counters_run),
        "healthy": ingest(SAMPLES / "synthetic" / "healthy.json.gz"),
    }
    yield {name: r.run_id for name, r in ids.items()}
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _app(**params: str) -> AppTest:
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


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_runs_page_table_filters_trend_and_open(store: dict[str, int]) -> None:
    at = _app()
    table = at.dataframe[0].value
    assert len(table) == len(store)
    row = table[table["id"] == store["nw0"]].iloc[0]
    assert row["median step ms"] == pytest.approx(152.469, abs=1e-3)
    assert row["top finding"].startswith("DATA001") and row["top speedup"] == pytest.approx(1.30)
    assert row["tags"] == "project=resnet workers=0"
    trend = _figures(at)["Step time across runs"]
    lines = {t["name"]: t for t in trend["data"]}
    assert set(lines) == {"resnet", "dlrm", "loader", "pointflow", "(untagged)"}
    assert sorted(_arr(lines["resnet"]["y"])) == pytest.approx([125.087, 152.469], abs=1e-3)

    at.multiselect(key="f_tags").select("workers=4").run()
    assert list(at.dataframe[0].value["name"]) == ["resnet50_num_workers_4"]
    at.multiselect(key="f_tags").unselect("workers=4").run()
    at.text_input(key="f_gpu").input("V100").run()
    assert set(at.dataframe[0].value["id"]) == {store["nw0"], store["nw4"], store["dlrm"]}

    at.selectbox(key="open_pick").select(store["nw0"]).run()
    at.button(key="open_run").click().run()
    assert not at.exception
    assert at.query_params["page"] == "run" and at.query_params["run"] == str(store["nw0"])
    assert at.header[0].value == f"Run {store['nw0']}: resnet50_num_workers_0"


def test_trend_marks_regressions(store: dict[str, int]) -> None:
    runs = data.read_runs(os.environ["MLPROF_STORE"])
    one_line = pd.Series(["all"] * len(runs))
    slow = figures.regressions(runs, one_line)
    ordered = runs.sort_values(["started_at", "id"])
    ratio = ordered["step_ms_median"] / ordered["step_ms_median"].shift(1) - 1
    expected = set(ordered.loc[ratio > 0.10, "id"])
    assert expected and set(slow["id"]) == expected
    names = [t["name"] for t in figures.step_trend(runs, one_line).to_plotly_json()["data"]]
    assert names == ["all", "regression (> +10% vs previous run)"]
    # one line per project: resnet went 152.5 -> 125.1 ms, loader 18.9 -> 7.9 ms: no regression
    by_project = runs["tags"].map(lambda t: t.get("project", "(untagged)"))
    assert not set(figures.regressions(runs, by_project)["name"]) & {"resnet50_num_workers_4", "fixed"}


def test_run_page_single_gpu(store: dict[str, int]) -> None:
    at = _app(page="run", run=str(store["nw0"]))
    metrics = _metrics(at)
    assert metrics["Mean step"] == "152.96 ms" and metrics["GPU busy"] == "64.4 %"
    assert metrics["MFU"] == "-"  # no --flops-per-step given
    first = at.expander[0]
    assert first.label.startswith("1. DATA001 1.30x [critical]")
    assert "num_workers=0" in first.label or "num_workers" in first.code[0].value
    assert "num_workers=8" in first.code[0].value
    figs = _figures(at)
    plan_rules = _arr(figs["Cumulative effect of the ranked fixes (ms per step)"]["data"][0]["x"])
    assert plan_rules[0] == "step now" and plan_rules[1] == "DATA001" and plan_rules[-1] == "after all fixes"
    breakdown = figs["Where each step's time goes"]["data"]
    assert [t["name"] for t in breakdown][:2] == ["compute", "comm_exposed"] and len(_arr(breakdown[0]["x"])) == 6
    timeline = figs["Timeline around the worst step (shaded)"]
    lanes = {y for t in timeline["data"] for y in _arr(t["y"]) if y}
    assert "GPU 0 stream 7" in lanes and any(lane.startswith("CPU thread") for lane in lanes)

    # money follows the price: per 1,000 steps = mean step x 1000 x 1 GPU / 3600 s
    per_k = 152.955167 / 3600
    assert metrics["Per 1,000 steps"] == f"{per_k:,.3f} GPU-h"
    # the trace spans ~1 s on one GPU: shown in GPU-seconds
    assert re.fullmatch(r"\d\.\d\d GPU-s", metrics["GPU time recorded"]), metrics["GPU time recorded"]
    at.number_input(key="price").set_value(4.0).run()
    plan = float(_metrics(at)["All fixes"].rstrip("x"))
    assert _metrics(at)["Saved per 1,000 steps"] == f"${per_k * (1 - 1 / plan) * 4:,.2f}"


def test_mfu_from_the_models_flops(store: dict[str, int]) -> None:
    run = data.read_run(os.environ["MLPROF_STORE"], store["nw0"])
    assert run is not None and run["model_flops_per_step"] is None
    run["model_flops_per_step"] = 2.0e12  # what --flops-per-step records
    figures_ = headline(run, 2.0)
    # V100: 125 TFLOP/s dense FP16 tensor peak; mean step 152.955 ms on 1 GPU
    assert figures_["mfu_pct"] == pytest.approx(100 * 2.0e12 / (0.152955167 * 125e12), rel=1e-6)
    assert figures_["per_1k_steps_gpu_hours"] == pytest.approx(152.955167 / 3600, rel=1e-6)


def test_run_page_multi_rank_heatmap(store: dict[str, int]) -> None:
    at = _app(page="run", run=str(store["dlrm"]))
    assert at.expander[0].label.startswith("1. COMM002")
    heat = _figures(at)["Per rank: dur (ms)"]["data"][0]
    assert _arr(heat["y"]) == [f"rank {r}" for r in range(8)] and len(_arr(heat["z"])) == 8
    assert at.selectbox(key="timeline_rank").options == [str(r) for r in range(8)]
    at.selectbox(key="heat_value").select("comm_exposed").run()
    assert "Per rank: comm_exposed (ms)" in _figures(at)


def test_run_page_memory_curve_with_leak_trend(store: dict[str, int]) -> None:
    at = _app(page="run", run=str(store["leak"]))
    assert at.expander[0].label.startswith("1. MEM001")
    memory = _figures(at)["Memory: allocated over time, level at each step start and its trend"]
    names = [t["name"] for t in memory["data"]]
    trend = [n for n in names if " trend " in n]
    assert trend and trend[0].startswith("cpu:") and "+0.50 MiB/step" in trend[0]


def test_run_page_counters(store: dict[str, int]) -> None:
    at = _app(page="run", run=str(store["counters"]))
    table = at.dataframe[0].value
    assert table["util_mean_pct"].iloc[0] == pytest.approx(57.68, abs=0.01)
    assert table["mem_used_max_mib"].iloc[0] == pytest.approx(10904.0)
    counters = _figures(at)["GPU counters (bytes shown as MiB)"]
    titles = [a["text"] for a in counters["layout"]["annotations"]]
    assert titles == ["gpu_util_pct", "mem_used_bytes"]


def test_compare_page_achieved_vs_predicted(store: dict[str, int]) -> None:
    at = _app(page="compare", a=str(store["bad"]), b=str(store["fixed"]))
    metrics = _metrics(at)
    assert metrics["A mean step"] == "18.97 ms" and metrics["B mean step"] == "8.08 ms"
    assert metrics["Achieved speedup"] == "2.35x"  # RESULTS.md: measured 2.35x on these recordings
    assert metrics["Predicted by A's findings"] == "2.81x"  # DATA001's prediction on the bad run
    categories = at.dataframe[0].value.set_index("category")
    change = categories["change ms"].sum()
    assert change == pytest.approx(8.08 - 18.97, abs=0.02)  # the categories explain the whole change
    findings = at.dataframe[1].value.set_index("rule")
    assert bool(findings.loc["DATA001", "acted on"])
    assert findings.loc["DATA001", "A predicted saving ms/step"] == pytest.approx(12.21, abs=0.01)
    ops = _figures(at)["Kernels and ops that changed most"]["data"][0]
    assert len(_arr(ops["y"])) > 0


def test_compare_page_runs_without_findings(store: dict[str, int]) -> None:
    at = _app(page="compare", a=str(store["healthy"]), b=str(store["counters"]))
    metrics = _metrics(at)
    assert metrics["Achieved speedup"] == "1.00x"  # the same trace, with and without counters
    assert metrics["Predicted by A's findings"] == "1.00x"
    assert at.markdown[-1].value == "Neither run has findings."


def test_url_parameters_are_ids_only(store: dict[str, int]) -> None:
    at = _app(page="run", run="../../etc/passwd")
    assert at.info[0].value == "Choose a run on the Runs page."
    at = _app(page="run", run="999999")
    assert at.warning[0].value == "There is no run 999999 in this store."
    at = _app(page="/etc/passwd")
    assert at.header[0].value == "Runs"
    with pytest.raises(ValueError, match="not a run key"):
        run_dir(Path("/tmp"), "../../etc")


def test_timeline_bands_cover_exactly_the_events_at_zero_resolution() -> None:
    trace = load_job(external("pytorch__kineto/resnet50_num_workers_0"))[0]
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
    coarse = merge_bands(events, span // 1500)
    assert len(coarse) < len(exact) / 5 and coarse["events"].sum() == len(events)
    longest = events.loc[(events["end"] - events["ts"]).idxmax()]
    assert str(longest["name"]) in set(coarse["top_name"])


def test_bin_series_keeps_peaks() -> None:
    trace = load_job(RECORDED / "memory_leak" / "bad")[0]
    mem = trace.memory[trace.memory["total_allocated"] >= 0]
    ts, val = bin_series(mem["ts"].to_numpy(np.int64), mem["total_allocated"].to_numpy(np.int64), 50)
    assert len(ts) <= 50 and val.max() == mem["total_allocated"].max()
