"""Plotly figures for the dashboard, built from plain frames (no Streamlit, no database).

Times on axes are ms; timeline x is ms from the start of the drawn window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mlprof.analyzers.attribution import CATEGORIES, CATEGORY_HELP
from mlprof.untrusted import html_text

CATEGORY_COLORS = {
    "compute": "#2ca02c",
    "comm_exposed": "#9467bd",
    "memcpy_exposed": "#8c564b",
    "idle_data": "#d62728",
    "idle_sync": "#ff7f0e",
    "idle_launch": "#e377c2",
    "idle_other": "#7f7f7f",
}
MIB = 1 << 20


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=title, height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend_title_text="")
    return fig


REGRESSION = 0.10
"""A run is marked a regression when its median step is this much above the previous run of its line."""


def regressions(runs: pd.DataFrame, group: pd.Series) -> pd.DataFrame:
    """Runs whose median step is more than REGRESSION above the previous run (by start date) of the same group."""
    frame = runs.assign(group=group.to_numpy()).dropna(subset=["step_ms_median"])
    frame = frame.sort_values(["group", "started_at", "id"], kind="stable")
    previous = frame.groupby("group", sort=False)["step_ms_median"].shift(1)
    frame = frame.assign(previous_ms=previous, change=frame["step_ms_median"] / previous - 1.0)
    return frame[frame["change"] > REGRESSION]


def step_trend(runs: pd.DataFrame, group: pd.Series) -> go.Figure:
    """Median step time per run over the run's start date, one line per group; regressions marked."""
    fig = go.Figure()
    frame = runs.assign(group=group.to_numpy()).dropna(subset=["step_ms_median"]).sort_values("started_at")
    for name, part in frame.groupby("group", sort=True):
        fig.add_trace(
            go.Scatter(
                x=part["started_at"],
                y=part["step_ms_median"],
                mode="lines+markers",
                name=str(name),
                text=plotly_text(part["name"]),
                customdata=part["id"],
                hovertemplate="run %{customdata} %{text}<br>%{x}<br>median step %{y:.2f} ms<extra></extra>",
            )
        )
    slow = regressions(runs, group)
    if len(slow):
        fig.add_trace(
            go.Scatter(
                x=slow["started_at"],
                y=slow["step_ms_median"],
                mode="markers",
                marker={"symbol": "x", "size": 13, "color": "#d62728"},
                name=f"regression (> +{REGRESSION:.0%} vs previous run)",
                text=plotly_text(slow["name"]) + " " + (100 * slow["change"]).round(1).astype(str) + " %",
                hovertemplate="%{text} slower than the previous run<extra></extra>",
            )
        )
    fig.update_yaxes(title="median step (ms)", rangemode="tozero")
    return _layout(fig, "Step time across runs")


def waterfall(step_ms: float, plan: list[dict[str, Any]]) -> go.Figure:
    """The plan as a waterfall: the step, each fix's saving in ranked order, what is left."""
    labels = ["step now", *[p["rule"] for p in plan], "after all fixes"]
    values = [step_ms, *[-float(p["saves_ms_per_step"]) for p in plan], 0.0]
    measure = ["absolute", *["relative"] * len(plan), "total"]
    text = [f"{step_ms:.2f} ms"]
    text += [f"-{p['saves_ms_per_step']:.2f} ms → {p['cumulative_speedup']:.2f}x" for p in plan]
    text.append(f"{plan[-1]['step_ms_after']:.2f} ms" if plan else f"{step_ms:.2f} ms")
    fig = go.Figure(
        go.Waterfall(
            x=labels,
            y=values,
            measure=measure,
            text=text,
            textposition="outside",
            decreasing={"marker": {"color": "#2ca02c"}},
            totals={"marker": {"color": "#1f77b4"}},
        )
    )
    fig.update_yaxes(title="ms per step", rangemode="tozero")
    return _layout(fig, "Cumulative effect of the ranked fixes (ms per step)")


def step_breakdown(steps_ms: pd.DataFrame) -> go.Figure:
    """Stacked bar per step: ms per attribution category (they add up to the step)."""
    fig = go.Figure()
    x = steps_ms["step"].astype(str)
    for c in CATEGORIES:
        fig.add_trace(
            go.Bar(
                x=x,
                y=steps_ms[c],
                name=c,
                marker_color=CATEGORY_COLORS[c],
                hovertemplate=f"step %{{x}}<br>{c}: %{{y:.3f}} ms<br>{CATEGORY_HELP[c]}<extra></extra>",
            )
        )
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="step", type="category")
    fig.update_yaxes(title="ms")
    return _layout(fig, "Where each step's time goes")


KIND_COLORS = {
    "compute": "#1f77b4",
    "communication": "#9467bd",
    "memcpy": "#8c564b",
    "memset": "#bcbd22",
    "cpu op": "#ff7f0e",
    "cuda runtime": "#7f7f7f",
}
"""Timeline colours per band kind (:data:`mlprof.dashboard.data.LANE_KINDS`)."""
FINDING_COLOR = "#d62728"


def plotly_text(values: pd.Series, max_chars: int = 120) -> pd.Series:
    """Trace text made literal for plotly (which reads ``<...>`` in hover text as HTML), once per distinct name."""
    names = values.astype(str).astype("category")
    escaped = np.array([html_text(c, max_chars=max_chars) for c in names.cat.categories], dtype=object)
    return pd.Series(escaped[names.cat.codes.to_numpy()], index=values.index)


def timeline(
    bands: pd.DataFrame,
    origin_ns: int,
    step_ns: tuple[int, int],
    findings: pd.DataFrame | None = None,
    memory: pd.DataFrame | None = None,
    title: str = "Timeline",
) -> go.Figure:
    """GPU streams and CPU threads as lanes of merged bands, one colour per kind, with each finding's
    time ranges as a red band labelled with its rule id and, below on the same time axis, memory.

    ``bands`` come from :func:`mlprof.dashboard.data.read_timeline`, ``findings`` from
    :func:`~mlprof.dashboard.data.finding_bands`, ``memory`` from
    :func:`~mlprof.dashboard.data.read_memory_window`. x is ms from ``origin_ns``.
    """
    from plotly.subplots import make_subplots

    lanes = sorted(bands["lane"].unique(), key=lambda s: (not s.startswith("GPU"), s))
    rows = 2 if memory is not None and len(memory) else 1
    lane_px = 60 + 28 * len(lanes)
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        row_heights=[lane_px, 200] if rows == 2 else None,
    )
    for kind, color in KIND_COLORS.items():
        part = bands[bands["kind"] == kind]
        if len(part) == 0:
            continue
        n = len(part)
        x = np.empty(n * 3)
        x[0::3] = (part["ts"].to_numpy(np.int64) - origin_ns) / 1e6
        x[1::3] = (part["end"].to_numpy(np.int64) - origin_ns) / 1e6
        x[2::3] = np.nan
        y = np.empty(n * 3, dtype=object)
        y[0::3] = part["lane"].to_numpy()
        y[1::3] = part["lane"].to_numpy()
        y[2::3] = None
        hover = (
            plotly_text(part["top_name"])
            + "<br>"
            + (part["top_dur"] / 1e3).round(1).astype(str)
            + " µs; "
            + part["events"].astype(str)
            + " event(s) in this band"
        ).to_numpy()
        text = np.empty(n * 3, dtype=object)
        text[0::3] = hover
        text[1::3] = hover
        text[2::3] = None
        fig.add_trace(
            go.Scattergl(
                x=x,
                y=y,
                mode="lines",
                line={"width": 12, "color": color},
                name=kind,
                text=text,
                hovertemplate="%{y}<br>%{x:.3f} ms<br>%{text}<extra>" + kind + "</extra>",
                connectgaps=False,
            ),
            row=1,
            col=1,
        )
    lo, hi = (step_ns[0] - origin_ns) / 1e6, (step_ns[1] - origin_ns) / 1e6
    fig.add_vrect(x0=lo, x1=hi, fillcolor="#888888", opacity=0.06, line_width=0)
    if findings is not None and len(findings):
        labelled: set[str] = set()
        for rule, a, b in zip(findings["rule"], findings["ts"], findings["end"], strict=True):
            x0, x1 = (int(a) - origin_ns) / 1e6, (int(b) - origin_ns) / 1e6
            label: dict[str, Any] = {}
            if rule not in labelled:  # one label per rule; every range gets a band
                label = {
                    "annotation_text": html_text(rule),
                    "annotation_position": "top left",
                    "annotation_font_color": FINDING_COLOR,
                }
            labelled.add(rule)
            fig.add_vrect(
                x0=x0,
                x1=max(x1, x0 + (hi - lo) / 2000),
                fillcolor=FINDING_COLOR,
                opacity=0.18,
                line_width=1,
                line_color=FINDING_COLOR,
                name=f"finding {rule}",
                **label,
            )
    if rows == 2 and memory is not None:
        for (device, series), part in memory.groupby(["device", "series"], sort=True):
            fig.add_trace(
                go.Scatter(
                    x=(part["ts"].to_numpy(np.int64) - origin_ns) / 1e6,
                    y=part["bytes"].to_numpy() / MIB,
                    mode="lines",
                    line={"shape": "hv", "dash": "dot" if series == "reserved" else "solid"},
                    name=f"{device} {series}",
                    hovertemplate=f"{device} {series}<br>%{{x:.3f}} ms<br>%{{y:.2f}} MiB<extra></extra>",
                ),
                row=2,
                col=1,
            )
            if series == "allocated" and len(part):
                peak = int(np.argmax(part["bytes"].to_numpy()))
                fig.add_trace(
                    go.Scatter(
                        x=[(int(part["ts"].iloc[peak]) - origin_ns) / 1e6],
                        y=[float(part["bytes"].iloc[peak]) / MIB],
                        mode="markers+text",
                        marker={"symbol": "triangle-down", "size": 11, "color": FINDING_COLOR},
                        text=[f"peak {float(part['bytes'].iloc[peak]) / MIB:,.1f} MiB"],
                        textposition="top center",
                        name=f"{device} peak in window",
                        showlegend=False,
                    ),
                    row=2,
                    col=1,
                )
        fig.update_yaxes(title="MiB", row=2, col=1)
    fig.update_yaxes(categoryorder="array", categoryarray=lanes[::-1], type="category", row=1, col=1)
    fig.update_xaxes(title="ms from window start", row=rows, col=1)
    fig.update_layout(dragmode="zoom", hovermode="closest")
    return _layout(fig, title, height=lane_px + (260 if rows == 2 else 40))


def memory_curve(memory: pd.DataFrame, trends: list[dict[str, Any]], origin_ns: int) -> go.Figure:
    """Allocated MiB over time per device, with step-boundary levels and their straight-line trend."""
    fig = go.Figure()
    for device, part in memory.groupby("device", sort=True):
        fig.add_trace(
            go.Scattergl(
                x=(part["ts"].to_numpy(np.int64) - origin_ns) / 1e9,
                y=part["bytes"].to_numpy() / MIB,
                mode="lines",
                name=f"{device} allocated",
            )
        )
    for t in trends:
        x = (np.asarray(t["step_start_ns"], np.int64) - origin_ns) / 1e9
        idx = np.arange(len(x), dtype=np.float64)
        trend = (t["intercept_bytes"] + t["slope_bytes_per_step"] * idx) / MIB
        fig.add_trace(
            go.Scatter(
                x=x,
                y=np.asarray(t["boundary_bytes"]) / MIB,
                mode="markers",
                name=f"{t['device']} at step start",
            )
        )
        slope = t["slope_bytes_per_step"] / MIB
        fig.add_trace(
            go.Scatter(
                x=x,
                y=trend,
                mode="lines",
                line={"dash": "dash"},
                name=f"{t['device']} trend {slope:+.2f} MiB/step (r² {t['r2']:.2f})",
            )
        )
    fig.update_xaxes(title="s from trace start")
    fig.update_yaxes(title="MiB allocated")
    return _layout(fig, "Memory: allocated over time, level at each step start and its trend")


def counter_series(series: pd.DataFrame, origin_ns: int) -> go.Figure:
    """NVML/DCGM samples: one line per device and metric, each metric on its own row."""
    from plotly.subplots import make_subplots

    metrics = list(dict.fromkeys(series["metric"]))
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=metrics, vertical_spacing=0.06)
    for i, metric in enumerate(metrics, start=1):
        for device, part in series[series["metric"] == metric].groupby("device", sort=True):
            scale = 1 / MIB if metric.endswith("_bytes") else 1.0
            fig.add_trace(
                go.Scattergl(
                    x=(part["ts"].to_numpy(np.int64) - origin_ns) / 1e9,
                    y=part["value"].to_numpy() * scale,
                    mode="lines",
                    name=f"GPU {device} {metric}",
                ),
                row=i,
                col=1,
            )
    fig.update_xaxes(title="s from first sample", row=len(metrics), col=1)
    return _layout(fig, "GPU counters (bytes shown as MiB)", height=180 * len(metrics) + 60)


def rank_heatmap(steps: pd.DataFrame, value: str = "dur", straggler: int | None = None) -> go.Figure:
    """Ranks x steps, colour and number = ms of ``value`` (``dur`` or a category); the straggler's
    row (STRAG001's rank, else the rank with the longest total, when the totals differ) is marked."""
    ranks = steps[steps["rank"] >= 0]
    grid = ranks.pivot_table(index="rank", columns="step", values=f"{value}_ns", aggfunc="sum") / 1e6
    if straggler is None and len(grid):
        totals = ranks.groupby("rank")["dur_ns"].sum()
        straggler = int(totals.idxmax()) if totals.max() > totals.min() else None  # equal ranks: none is late
    labels = [f"rank {r}" + (" ◀ straggler" if r == straggler else "") for r in grid.index]
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=[str(s) for s in grid.columns],
            y=labels,
            colorscale="Viridis",
            colorbar={"title": "ms"},
            texttemplate="%{z:.2f}",
            hovertemplate="%{y}, step %{x}: %{z:.2f} ms<extra></extra>",
        )
    )
    fig.update_xaxes(title="step", type="category")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Per rank: {value} (ms)", height=max(260, 80 + 30 * len(grid)))


def category_change(categories: pd.DataFrame) -> go.Figure:
    """Per category ms per step in A and B, with the change."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=categories["category"], y=categories["a_ms"], name="A (before)", marker_color="#aec7e8"))
    fig.add_trace(go.Bar(x=categories["category"], y=categories["b_ms"], name="B (after)", marker_color="#1f77b4"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="ms per step")
    return _layout(fig, "Step time by category: before and after")


def ops_change(ops: pd.DataFrame) -> go.Figure:
    """Kernels and ops whose ms per step changed most (negative: faster)."""
    labels = ops["kind"] + ": " + plotly_text(ops["name"], max_chars=60)  # tick labels read HTML too
    colors = np.where(ops["delta_ms"].to_numpy() < 0, "#2ca02c", "#d62728")
    fig = go.Figure(
        go.Bar(
            y=labels[::-1],
            x=ops["delta_ms"][::-1],
            orientation="h",
            marker_color=colors[::-1],
            hovertemplate="%{y}<br>change %{x:+.3f} ms per step<extra></extra>",
        )
    )
    fig.update_xaxes(title="change in ms per step (B - A)")
    return _layout(fig, "Kernels and ops that changed most", height=max(300, 60 + 24 * len(ops)))
