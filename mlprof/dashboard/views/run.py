"""Run page: headline figures, then tabs: ranked fixes, timeline of any step with the findings on it,
kernels, operators, memory, ranks, counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from mlprof.dashboard import data, figures, tables
from mlprof.dashboard.costs import default_price, headline
from mlprof.dashboard.views.nav import go
from mlprof.untrusted import md_code, md_text, plain


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
    st.header(f"Run {run['id']}: {md_text(run['name'])}")
    tags = " ".join(md_code(f"{k}={v}") for k, v in run["tags"].items())
    st.caption(
        f"{md_text(run['gpu'])} · {run['ranks']} rank(s) of world size {run['world_size']} · started "
        f"{run['started_at']} ({md_text(run['extra'].get('started_at_source', ''))}) · {run['steps_analysed']} steps "
        f"from {md_text(run['step_source'])} · {md_text(run['source_kind'])} {md_code(Path(run['source_path']).name)}"
        + (f" · git {md_code(str(run['git_commit'])[:10])}" if run.get("git_commit") else "")
        + (f" · {tags}" if tags else "")
    )
    with st.sidebar:
        price = st.number_input("$ per GPU-hour", min_value=0.0, value=default_price(), step=0.5, key="price")
        _compare_picker(url, run)
    h = headline(run, float(price))
    multi = int(run["ranks"]) > 1
    scope = " (mean over ranks)" if multi else ""
    cols = st.columns(5)
    cols[0].metric("Mean step", _fmt(h["step_ms"], "{:,.2f} ms"), help=f"mean over the analysed steps{scope}")
    cols[1].metric("GPU busy", _fmt(h["gpu_busy_pct"], "{:.1f} %"), help=f"share of wall time{scope}")
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
    report = run["report"]
    steps = run["steps"]
    names = ["Fixes", "Timeline", "Kernels", "Operators", "Memory"]
    if multi and len(steps):
        names.append("Ranks")
    has_counters = len(run["counters"]) > 0
    if has_counters:
        names.append("Counters")
    tabs = dict(zip(names, st.tabs(names), strict=True))
    with tabs["Fixes"]:
        _findings(url, run)
        if report.get("plan"):
            st.plotly_chart(figures.waterfall(float(report["checks"]["step_ms"]), report["plan"]), key="waterfall")
        job = steps[steps["rank"] == -1]
        if len(job):
            st.plotly_chart(figures.step_breakdown(data.category_ms(job)), key="breakdown")
    with tabs["Timeline"]:
        rank = _timeline(url, run)
    with tabs["Kernels"]:
        _kernels(run)
    with tabs["Operators"]:
        _operators(run)
    with tabs["Memory"]:
        _memory(url, run, rank if rank is not None else 0)
    if "Ranks" in tabs:
        with tabs["Ranks"]:
            _ranks(run)
    if has_counters:
        with tabs["Counters"]:
            _counters(url, run)
    for note in report.get("notes", []):
        st.caption(f"note: {md_text(note)}")


def _compare_picker(url: str, run: dict[str, Any]) -> None:
    """Pick another run to compare with: this run is B (after), the pick is A (before)."""
    runs = data.cached_runs(url)
    others = runs[runs["id"] != int(run["id"])]
    if len(others) == 0:
        return
    labels = {int(i): f"{i}: {plain(n)}" for i, n in zip(others["id"], others["name"], strict=True)}
    started = pd.to_datetime(others["started_at"], utc=True, errors="coerce")
    mine = pd.to_datetime(pd.Series([run["started_at"]]), utc=True, errors="coerce").iloc[0]
    earlier = others[started < mine] if pd.notna(mine) else others.iloc[0:0]
    default = int(earlier.loc[started[earlier.index].idxmax(), "id"]) if len(earlier) else int(others["id"].iloc[0])
    ids: list[int] = list(labels)
    pick = st.selectbox(
        "Compare with (as A, before)",
        ids,
        index=ids.index(default),
        format_func=lambda i: labels[int(i)],
        key="compare_with",
    )
    if st.button("Compare with another run", key="to_compare") and pick is not None:
        go("compare", a=int(pick), b=int(run["id"]))


def _finding_download(url: str, run: dict[str, Any], f: dict[str, Any]) -> None:
    """A Perfetto download of the step holding the finding's first time range, with every finding drawn on it."""
    d = f["detail"]
    rank = int((d.get("ranks") or [0])[0])
    a = int(d["time_ranges_ns"][0][0])
    step = next((s for s in data.rank_steps(run["steps"], rank) if s["ts"] <= a < s["end"]), None)
    lo, hi = (step["ts"], step["end"]) if step else (a, int(d["time_ranges_ns"][0][1]))
    if rank not in data.cached_ranks(url, run["run_key"]):
        return
    found = data.finding_bands(run["findings"], rank, lo, hi)
    trace = data.cached_window_trace(url, run["run_key"], rank, lo, hi, found)
    if trace is None:
        return
    where = f"step {step['step']}" if step else "its first range"
    st.download_button(
        f"Download {where} (rank {rank}) with this finding for Perfetto",
        trace,
        file_name=f"run{run['id']}_rank{rank}_{f['rule']}.mlprof.json",
        mime="application/json",
        key=f"perfetto_{f['position']}",
        help="Open in ui.perfetto.dev or chrome://tracing; findings are on the 'mlprof findings' process.",
    )


def _findings(url: str, run: dict[str, Any]) -> None:
    st.subheader("Ranked fixes")
    findings = run["findings"]
    if not findings:
        st.success("No findings: nothing in this trace costs measurable time.")
        return
    multi = int(run["ranks"]) > 1
    for f in findings:
        d = f["detail"]
        saves = f" · saves {f['saves_ms_per_step']:.2f} ms/step" if f["saves_ms_per_step"] is not None else ""
        label = (
            f"{f['position'] + 1}. {f['rule']} {f['expected_speedup']:.2f}x [{f['severity']}] "
            f"{md_text(f['title'])}{saves}"
        )
        with st.expander(label, expanded=f["position"] == 0):
            ranks = d.get("ranks") or []
            scope = ""
            if multi and ranks:
                scope = f" (mean over ranks {_span(ranks)})" if len(ranks) > 1 else f" (rank {ranks[0]})"
            st.markdown(
                f"**{md_text(f['name'])}** ({md_text(f['category'])}, from the {md_text(f['source'])}): "
                f"{f['time_lost_ms_per_step']:.3f} ms lost per step of {d.get('step_ms', 0):.3f} ms{scope}; "
                f"confidence {md_text(f['confidence'])} — {md_text(d.get('confidence_reason', ''))}"
            )
            ranges = d.get("time_ranges_ns") or []
            if ranges:
                st.caption(
                    f"{len(ranges)} time range(s) of this finding are drawn as red bands labelled {f['rule']} on the "
                    "Timeline tab (pick a step marked with it)."
                )
                _finding_download(url, run, f)
            st.markdown("Evidence")
            st.json(d.get("evidence", {}), expanded=1)  # top level open; nested lists fold
            st.markdown("Fix")
            st.code(d.get("fix", ""), language="python")  # a code block shows text literally
            for item in d.get("record_next", []):
                st.caption(f"record next time: {md_text(item)}")


def _span(ranks: list[int]) -> str:
    ranks = sorted(ranks)
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks))


def _timeline(url: str, run: dict[str, Any]) -> int | None:
    """The timeline of one step of one rank, with the findings' ranges; returns that rank."""
    st.subheader("Timeline")
    ranks = data.cached_ranks(url, run["run_key"])
    if not ranks:
        st.info("The event tables of this run are not in this machine's Parquet cache (MLPROF_CACHE).")
        return None
    cols = st.columns([1, 3])
    rank = int(cols[0].selectbox("Rank", ranks, key="timeline_rank") if len(ranks) > 1 else ranks[0])
    steps = data.rank_steps(run["steps"], rank)
    if not steps:
        st.info("No steps on this rank.")
        return rank
    worst = data.worst_step(run["steps"], rank)
    marks = data.finding_steps([f for f in run["findings"] if rank in (f["detail"].get("ranks") or [rank])], steps)
    by_number = {s["step"]: s for s in steps}
    numbers = list(by_number)

    def label(n: int) -> str:
        s = by_number[n]
        text = f"step {n} · {(s['end'] - s['ts']) / 1e6:.2f} ms"
        if worst is not None and n == worst["step"]:
            text += " · longest"
        if n in marks:
            text += " · " + ", ".join(marks[n])
        return text

    default = numbers.index(worst["step"]) if worst is not None else 0
    chosen = int(cols[1].selectbox("Step", numbers, index=default, format_func=label, key="timeline_step"))
    step = by_number[chosen]
    margin = (step["end"] - step["ts"]) // 10
    lo, hi = step["ts"] - margin, step["end"] + margin
    bands = data.cached_timeline(url, run["run_key"], int(rank), lo, hi)
    if bands is None or len(bands) == 0:
        st.info("No events in this window.")
        return rank
    found = data.finding_bands(run["findings"], rank, lo, hi)
    memory = data.cached_memory_window(url, run["run_key"], int(rank), lo, hi)
    title = f"Timeline of step {chosen}" + (f" on rank {rank}" if len(ranks) > 1 else "") + " (shaded: the step)"
    st.plotly_chart(figures.timeline(bands, lo, (step["ts"], step["end"]), found, memory, title), key="timeline")
    drawn = sorted(set(found["rule"])) if len(found) else []
    st.caption(
        f"step {chosen} ({(step['end'] - step['ts']) / 1e6:.2f} ms) ±10 %; events closer than "
        f"{(hi - lo) / data.TIMELINE_PIXELS / 1e3:.1f} µs on a lane are drawn as one band (hover: the longest). "
        "Colours: compute kernels, communication kernels, memcpy and memset, CPU ops, CUDA runtime. "
        + (f"Red bands: the time ranges of {', '.join(drawn)}. " if drawn else "No finding has a time range here. ")
        + "Drag to zoom, double-click to reset."
    )
    trace = data.cached_window_trace(url, run["run_key"], int(rank), lo, hi, found)
    if trace is not None:
        st.download_button(
            "Download this window with the findings for Perfetto",
            trace,
            file_name=f"run{run['id']}_rank{rank}_step{chosen}.mlprof.json",
            mime="application/json",
            key="perfetto",
            help="Open in ui.perfetto.dev or chrome://tracing; findings are on the 'mlprof findings' process.",
        )
    allocating = data.cached_allocating_ops(url, run["run_key"], int(rank), lo, hi)
    if allocating is not None and len(allocating):
        st.markdown("Ops that allocated most in this window")
        st.dataframe(allocating.assign(op=allocating["op"].map(plain)), hide_index=True, key="alloc_ops")
    return rank


def _kernels(run: dict[str, Any]) -> None:
    table = tables.kernel_table(run["ops"], run["report"])
    if len(table) == 0:
        st.info("This run has no kernel totals (ingested before they were recorded, or no GPU kernels).")
        return
    _searchable(table, "k", "kernel_table", tables.KERNEL_SORTS)
    scope = "mean over ranks; " if int(run["ranks"]) > 1 else ""
    st.caption(
        f"Kernels launched in the analysed steps, by name ({scope}the top {len(table)} names, the rest in "
        "'(other)'). total ms: device time; mean µs: total / count; % of kernel time: share of all kernel "
        "time; ms per step: total / analysed steps. Click a column header to sort."
    )


def _operators(run: dict[str, Any]) -> None:
    table = tables.op_table(run["ops"], run["report"])
    if len(table) == 0:
        st.info("This run has no operator totals (ingested before they were recorded, or no CPU ops).")
        return
    _searchable(table, "o", "op_table", tables.OP_SORTS)
    scope = "mean over ranks; " if int(run["ranks"]) > 1 else ""
    st.caption(
        f"CPU ops (cpu_op ranges) started in the analysed steps, by name ({scope}the top {len(table)} names). "
        "total ms is inclusive host time (an op's children count too), so the rows do not add up to the step."
    )


def _searchable(table: pd.DataFrame, prefix: str, key: str, sorts: tuple[str, ...]) -> None:
    cols = st.columns([3, 2, 1])
    query = cols[0].text_input("Search names", key=f"{prefix}_search", placeholder="substring, case-insensitive")
    sort = cols[1].selectbox("Sort by", sorts, key=f"{prefix}_sort")
    descending = cols[2].checkbox("Descending", value=sort != "name", key=f"{prefix}_desc")
    shown = tables.search_sort(table, query, str(sort), descending)
    shown = shown.assign(name=shown["name"].map(plain))
    st.dataframe(
        shown.round(3),
        hide_index=True,
        width="stretch",
        key=key,
        column_config={"name": st.column_config.TextColumn("name", width="large")},
    )


def _memory(url: str, run: dict[str, Any], rank: int) -> None:
    trends = [t for t in run["extra"].get("memory", []) if t["rank"] == rank]
    memory = data.cached_memory(url, run["run_key"], rank)
    if memory is None or len(memory) == 0:
        st.info("No allocator events in this run (record with profile_memory=True).")
        return
    st.subheader(f"Memory (rank {rank})" if int(run["ranks"]) > 1 else "Memory")
    origin = int(memory["ts"].min())
    st.plotly_chart(figures.memory_curve(memory, trends, origin), key="memory")
    st.caption(
        "The whole trace; the Timeline tab draws allocated and reserved memory of one step on the "
        "timeline's time axis, with the step's peak and the ops that allocated most."
    )
    verdict = run["report"].get("checks", {}).get("verdicts", {}).get("MEM001")
    if verdict:
        st.caption(f"MEM001: {md_text(verdict)}")


def _ranks(run: dict[str, Any]) -> None:
    st.subheader("Per rank")
    value = st.selectbox("Colour by", ["dur", "comm_exposed", "compute", "idle_data", "idle_sync"], key="heat_value")
    straggler = next(
        (int(f["detail"]["ranks"][0]) for f in run["findings"] if f["rule"] == "STRAG001" and f["detail"].get("ranks")),
        None,
    )
    st.plotly_chart(figures.rank_heatmap(run["steps"], value, straggler), key="heatmap")
    st.caption(
        "ms per rank and step; the straggler is STRAG001's rank when that rule fired, else the rank "
        "with the longest total step time."
    )


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
