"""Run page: headline figures, ranked fixes, waterfall, per-step breakdown, timeline, memory, counters, ranks."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from mlprof.dashboard import data, figures
from mlprof.dashboard.costs import default_price, headline
from mlprof.dashboard.views.nav import go


def _gpu_time(hours: float | None) -> str:
    """GPU-hours, or GPU-seconds below 0.01 h (a trace is often a few seconds of the job)."""
    if hours is None or pd.isna(hours):
        return "-"
    return f"{hours:,.2f} GPU-h" if hours >= 0.01 or hours == 0 else f"{hours * 3600:,.2f} GPU-s"


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None or pd.isna(value) else pattern.format(value)


def render(url: str, run_id: int | None) -> None:
    if run_id is None:
        st.info("Choose a run on the Runs page.")
        return
    run = data.cached_run(url, run_id)
    if run is None:
        st.warning(f"There is no run {run_id} in this store.")
        return
    st.header(f"Run {run['id']}: {run['name']}")
    tags = " ".join(f"`{k}={v}`" for k, v in run["tags"].items())
    st.caption(
        f"{run['gpu']} · {run['ranks']} rank(s) of world size {run['world_size']} · started "
        f"{run['started_at']} ({run['extra'].get('started_at_source', '')}) · {run['steps_analysed']} steps from "
        f"{run['step_source']} · {run['source_kind']} {run['source_path']}"
        + (f" · git {str(run['git_commit'])[:10]}" if run.get("git_commit") else "")
        + (f" · {tags}" if tags else "")
    )
    with st.sidebar:
        price = st.number_input("$ per GPU-hour", min_value=0.0, value=default_price(), step=0.5, key="price")
        if st.button("Compare with another run", key="to_compare"):
            go("compare", a=int(run["id"]))
    h = headline(run, float(price))
    cols = st.columns(5)
    cols[0].metric("Mean step", _fmt(h["step_ms"], "{:,.2f} ms"))
    cols[1].metric("GPU busy", _fmt(h["gpu_busy_pct"], "{:.1f} %"))
    cols[2].metric("MFU", _fmt(h["mfu_pct"], "{:.1f} %"), help="needs --flops-per-step at ingest and a known GPU")
    cols[3].metric("All fixes", _fmt(h["plan_speedup"], "{:.2f}x"), help="the plan's cumulative expected speedup")
    cols[4].metric("Findings", str(sum(1 for f in run["findings"] if f["source"] == "trace")))
    money = st.columns(4)
    money[0].metric("GPU time recorded", _gpu_time(h["gpu_hours"]), help=f"source: {run['gpu_hours_source']}")
    money[1].metric("Fixes would save", _gpu_time(h["gpu_hours_saved"]))
    money[2].metric("Per 1,000 steps", _fmt(h["per_1k_steps_gpu_hours"], "{:,.3f} GPU-h"))
    money[3].metric(
        "Saved per 1,000 steps",
        _fmt(h["per_1k_steps_money_saved"], "${:,.2f}"),
        help=f"{_fmt(h['per_1k_steps_saved'], '{:,.3f}')} GPU-h at ${price:.2f}/GPU-h",
    )
    _findings(run)
    report = run["report"]
    if report.get("plan"):
        st.plotly_chart(figures.waterfall(float(report["checks"]["step_ms"]), report["plan"]), key="waterfall")
    steps = run["steps"]
    job = steps[steps["rank"] == -1]
    if len(job):
        st.plotly_chart(figures.step_breakdown(data.category_ms(job)), key="breakdown")
    rank = _timeline(url, run)
    if rank is not None:
        _memory(url, run, rank)
    _counters(url, run)
    if int(run["ranks"]) > 1 and len(steps):
        st.subheader("Per rank")
        value = st.selectbox(
            "Colour by", ["dur", "comm_exposed", "compute", "idle_data", "idle_sync"], key="heat_value"
        )
        st.plotly_chart(figures.rank_heatmap(steps, value), key="heatmap")
    for note in report.get("notes", []):
        st.caption(f"note: {note}")


def _findings(run: dict[str, Any]) -> None:
    st.subheader("Ranked fixes")
    findings = run["findings"]
    if not findings:
        st.success("No findings: nothing in this trace costs measurable time.")
        return
    for f in findings:
        d = f["detail"]
        saves = f" · saves {f['saves_ms_per_step']:.2f} ms/step" if f["saves_ms_per_step"] is not None else ""
        label = f"{f['position'] + 1}. {f['rule']} {f['expected_speedup']:.2f}x [{f['severity']}] {f['title']}{saves}"
        with st.expander(label, expanded=f["position"] == 0):
            st.markdown(
                f"**{f['name']}** ({f['category']}, from the {f['source']}): "
                f"{f['time_lost_ms_per_step']:.3f} ms lost per step of {d.get('step_ms', 0):.3f} ms; "
                f"confidence {f['confidence']} — {d.get('confidence_reason', '')}"
            )
            st.markdown("Evidence")
            st.json(d.get("evidence", {}), expanded=1)  # top level open; nested lists fold
            st.markdown("Fix")
            st.code(d.get("fix", ""), language="python")
            for item in d.get("record_next", []):
                st.caption(f"record next time: {item}")


def _timeline(url: str, run: dict[str, Any]) -> int | None:
    """The timeline of one rank (chosen here for a multi-rank run); returns that rank."""
    st.subheader("Timeline around the worst step")
    ranks = data.cached_ranks(url, run["run_key"])
    if not ranks:
        st.info("The event tables of this run are not in this machine's Parquet cache (MLPROF_CACHE).")
        return None
    rank = int(st.selectbox("Rank", ranks, key="timeline_rank") if len(ranks) > 1 else ranks[0])
    worst = data.worst_step(run["steps"], rank)
    if worst is None:
        st.info("No steps on this rank.")
        return rank
    margin = (worst["end"] - worst["ts"]) // 10
    lo, hi = worst["ts"] - margin, worst["end"] + margin
    bands = data.cached_timeline(url, run["run_key"], int(rank), lo, hi)
    if bands is None or len(bands) == 0:
        st.info("No events in this window.")
        return rank
    st.caption(
        f"step {worst['step']} ({(worst['end'] - worst['ts']) / 1e6:.2f} ms) ±10 %; events closer than "
        f"{(hi - lo) / data.TIMELINE_PIXELS / 1e3:.1f} µs on a lane are drawn as one band"
    )
    st.plotly_chart(figures.timeline(bands, lo, (worst["ts"], worst["end"])), key="timeline")
    return rank


def _memory(url: str, run: dict[str, Any], rank: int) -> None:
    trends = [t for t in run["extra"].get("memory", []) if t["rank"] == rank]
    memory = data.cached_memory(url, run["run_key"], rank)
    if memory is None or len(memory) == 0:
        return
    st.subheader(f"Memory (rank {rank})" if int(run["ranks"]) > 1 else "Memory")
    origin = int(memory["ts"].min())
    st.plotly_chart(figures.memory_curve(memory, trends, origin), key="memory")
    verdict = run["report"].get("checks", {}).get("verdicts", {}).get("MEM001")
    if verdict:
        st.caption(f"MEM001: {verdict}")


def _counters(url: str, run: dict[str, Any]) -> None:
    summary = run["counters"]
    series = data.cached_counter_series(url, run["run_key"])
    if (summary is None or len(summary) == 0) and series is None:
        return
    st.subheader("GPU counters (NVML/DCGM)")
    if summary is not None and len(summary):
        st.dataframe(summary.drop(columns=["run_id"]), hide_index=True, key="counter_table")
    if series is not None:
        st.plotly_chart(figures.counter_series(series, int(series["ts"].min())), key="counters")
