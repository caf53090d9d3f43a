"""Runs page: every recorded run, filters, and the step-time trend across runs."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pandas as pd
import streamlit as st

from mlprof.dashboard import data, figures
from mlprof.dashboard.views.nav import go, set_params


def render(url: str) -> None:
    st.header("Runs")
    tags = data.cached_tags(url)
    with st.sidebar:
        st.subheader("Filters")
        tag_options = [f"{k}={v}" for k, v in zip(tags["key"], tags["value"], strict=True)]
        chosen = st.multiselect("Tags (all must match)", tag_options, key="f_tags")
        name = st.text_input("Name contains", key="f_name")
        gpu = st.text_input("GPU contains", key="f_gpu")
        since = st.date_input("Started on or after", value=None, key="f_since")
        sort = st.selectbox("Sort by", ["date", "step_time", "gpu_busy", "speedup", "name"], key="f_sort")
    tag_pairs = tuple(tuple(t.split("=", 1)) for t in chosen)
    since_dt = datetime.combine(since, time.min, tzinfo=timezone.utc) if since else None
    runs = data.cached_runs(url, tag_pairs, since_dt, None, gpu or None, name or None, sort)  # type: ignore[arg-type]
    if len(runs) == 0:
        st.info("No runs match. Record runs with `mlprof ingest PATH`.")
        return
    table = pd.DataFrame(
        {
            "id": runs["id"],
            "name": runs["name"],
            "started": runs["started_at"],
            "tags": [" ".join(f"{k}={v}" for k, v in t.items()) for t in runs["tags"]],
            "GPU": runs["gpu"],
            "world size": runs["world_size"],
            "median step ms": runs["step_ms_median"].round(3),
            "GPU busy %": runs["gpu_busy_pct"].round(1),
            "top finding": runs["top_rule"].fillna("-") + " " + runs["top_title"].fillna(""),
            "top speedup": runs["top_speedup"].round(2),
            "all fixes": runs["plan_speedup"].round(2),
        }
    )
    st.caption(
        "median step ms: median over the analysed steps (mean over ranks). GPU busy %: compute + exposed "
        "communication + exposed copies over wall time. top speedup: the first finding's expected speedup; "
        "all fixes: the plan's cumulative speedup. Select a row to open the run."
    )
    ids = [int(i) for i in table["id"]]

    def open_selected() -> None:
        rows = st.session_state["runs_table"].selection.rows
        if rows:
            set_params("run", run=ids[rows[0]])

    st.dataframe(
        table, hide_index=True, width="stretch", on_select=open_selected, selection_mode="single-row", key="runs_table"
    )
    cols = st.columns([3, 1])
    labels = {int(i): f"{i}: {n}" for i, n in zip(runs["id"], runs["name"], strict=True)}
    pick = cols[0].selectbox("Run", list(labels), format_func=lambda i: labels[i], key="open_pick")
    if cols[1].button("Open run", key="open_run") and pick is not None:
        go("run", run=int(pick))

    st.subheader("Step time across runs")
    keys = sorted(set(tags["key"]))
    default = keys.index("project") if "project" in keys else None
    group_key = st.selectbox(
        "One line per value of tag", keys, index=default, placeholder="all runs in one line", key="trend_tag"
    )
    group = (
        runs["tags"].map(lambda t: t.get(group_key, "(untagged)")) if group_key else pd.Series(["all runs"] * len(runs))
    )
    st.plotly_chart(figures.step_trend(runs, group), width="stretch", key="trend_chart")
