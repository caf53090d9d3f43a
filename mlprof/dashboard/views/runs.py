"""Runs page: every recorded run, filters, and the step-time trend across runs."""

from __future__ import annotations

from datetime import date, datetime, time, timezone

import pandas as pd
import streamlit as st

from mlprof.dashboard import data, figures
from mlprof.dashboard.views.nav import go, set_params
from mlprof.untrusted import plain

FIRST_COLUMNS = {
    "name": 190,
    "started": 125,
    "median step ms": 110,
    "top finding": 250,
    "top speedup": 95,
    "all fixes": 80,
}
"""The columns a user scans first and their widths in CSS pixels: with the row selector they fit the
Runs table at 1366 px with the sidebar open (tests/test_dashboard_browser.py measures it)."""
SORTS = ["date", "step_time", "gpu_busy", "speedup", "name"]


def _from_url(tag_options: list[str]) -> None:
    """Seed the filter widgets from the URL once per session (a shared link opens the same view)."""
    if st.session_state.get("_filters_seeded"):
        return
    st.session_state["_filters_seeded"] = True
    q = st.query_params
    if "tags" in q:
        st.session_state["f_tags"] = [t for t in q.get_all("tags") if t in tag_options]
    for key in ("name", "gpu"):
        if key in q:
            st.session_state[f"f_{key}"] = str(q[key])[:200]
    if "sort" in q and q["sort"] in SORTS:
        st.session_state["f_sort"] = q["sort"]
    if "since" in q:
        try:
            st.session_state["f_since"] = date.fromisoformat(str(q["since"]))
        except ValueError:
            pass


def _to_url() -> None:
    """Write the filters into the URL (``?page=runs&tags=..&name=..``), leaving out the empty ones."""
    state = st.session_state
    params: dict[str, str | list[str]] = {"page": "runs"}
    if state.get("f_tags"):
        params["tags"] = list(state["f_tags"])
    for key in ("name", "gpu"):
        if state.get(f"f_{key}"):
            params[key] = str(state[f"f_{key}"])
    if state.get("f_sort") and state["f_sort"] != "date":
        params["sort"] = str(state["f_sort"])
    if state.get("f_since"):
        params["since"] = state["f_since"].isoformat()
    st.query_params.from_dict(params)


def render(url: str) -> None:
    st.header("Runs")
    tags = data.cached_tags(url)
    tag_options = [f"{k}={v}" for k, v in zip(tags["key"], tags["value"], strict=True)]
    _from_url(tag_options)
    with st.sidebar:
        st.subheader("Filters")
        chosen = st.multiselect("Tags (all must match)", tag_options, key="f_tags", on_change=_to_url)
        name = st.text_input("Name contains", key="f_name", on_change=_to_url)
        gpu = st.text_input("GPU contains", key="f_gpu", on_change=_to_url)
        since = st.date_input("Started on or after", value=None, key="f_since", on_change=_to_url)
        sort = st.selectbox("Sort by", SORTS, key="f_sort", on_change=_to_url)
    tag_pairs = tuple(tuple(t.split("=", 1)) for t in chosen)
    since_dt = datetime.combine(since, time.min, tzinfo=timezone.utc) if since else None
    runs = data.cached_runs(url, tag_pairs, since_dt, None, gpu or None, name or None, sort)  # type: ignore[arg-type]
    if len(runs) == 0:
        st.info("No runs match. Record runs with `mlprof ingest PATH`.")
        return
    # the columns a user scans first come first, so they fit a 1366 px screen without scrolling
    table = pd.DataFrame(
        {
            "name": runs["name"].map(plain),
            "started": pd.to_datetime(runs["started_at"], utc=True, errors="coerce").dt.strftime("%Y-%m-%d %H:%M"),
            "median step ms": runs["step_ms_median"].round(3),
            "top finding": (runs["top_rule"].fillna("-") + " " + runs["top_title"].fillna("")).map(plain),
            "top speedup": runs["top_speedup"].round(2),
            "all fixes": runs["plan_speedup"].round(2),
            "GPU busy %": runs["gpu_busy_pct"].round(1),
            "GPU": runs["gpu"].map(plain),
            "world size": runs["world_size"],
            "tags": [plain(" ".join(f"{k}={v}" for k, v in t.items())) for t in runs["tags"]],
            "id": runs["id"],
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
        table,
        hide_index=True,
        width="stretch",
        on_select=open_selected,
        selection_mode="single-row",
        key="runs_table",
        column_config={
            "name": st.column_config.TextColumn("name", width=FIRST_COLUMNS["name"]),
            "started": st.column_config.TextColumn("started", width=FIRST_COLUMNS["started"]),
            "median step ms": st.column_config.NumberColumn(
                "median step ms", width=FIRST_COLUMNS["median step ms"], format="%.2f"
            ),
            "top finding": st.column_config.TextColumn("top finding", width=FIRST_COLUMNS["top finding"]),
            "top speedup": st.column_config.NumberColumn(
                "top speedup", width=FIRST_COLUMNS["top speedup"], format="%.2fx"
            ),
            "all fixes": st.column_config.NumberColumn("all fixes", width=FIRST_COLUMNS["all fixes"], format="%.2fx"),
        },
    )
    cols = st.columns([3, 1])
    labels = {int(i): f"{i}: {plain(n)}" for i, n in zip(runs["id"], runs["name"], strict=True)}
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
