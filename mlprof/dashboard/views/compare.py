"""Compare page: run A (before) and run B (after): what changed, what was fixed, did it deliver."""

from __future__ import annotations

import streamlit as st

from mlprof.dashboard import data, figures
from mlprof.dashboard.run_diff import diff_runs


def render(url: str, a_id: int | None, b_id: int | None) -> None:
    st.header("Compare two runs")
    runs = data.cached_runs(url)
    if len(runs) < 2:
        st.info("Compare needs at least two runs in the store.")
        return
    labels = {int(i): f"{i}: {n}" for i, n in zip(runs["id"], runs["name"], strict=True)}
    ids = list(labels)
    a_default = ids.index(a_id) if a_id in labels else min(1, len(ids) - 1)
    b_default = ids.index(b_id) if b_id in labels else 0
    cols = st.columns(2)
    a_pick = cols[0].selectbox("A (before)", ids, index=a_default, format_func=lambda i: labels[i], key="cmp_a")
    b_pick = cols[1].selectbox("B (after)", ids, index=b_default, format_func=lambda i: labels[i], key="cmp_b")
    a, b = data.cached_run(url, int(a_pick)), data.cached_run(url, int(b_pick))
    if a is None or b is None:
        st.warning("One of the runs is no longer in the store.")
        return
    d = diff_runs(a, b)
    heads = st.columns(4)
    heads[0].metric("A mean step", f"{d.step_ms_a:,.2f} ms")
    heads[1].metric(
        "B mean step", f"{d.step_ms_b:,.2f} ms", delta=f"{d.step_ms_b - d.step_ms_a:+,.2f} ms", delta_color="inverse"
    )
    heads[2].metric("Achieved speedup", f"{d.achieved_speedup:.2f}x")
    heads[3].metric(
        "Predicted by A's findings",
        f"{d.predicted_speedup:.2f}x",
        help="A's plan savings of the findings B no longer has or has less of; "
        f"A's whole plan predicted {d.predicted_plan_speedup:.2f}x",
    )
    st.plotly_chart(figures.category_change(d.categories), key="cmp_categories")
    st.dataframe(
        d.categories.round(3).rename(columns={"a_ms": "A ms/step", "b_ms": "B ms/step", "delta_ms": "change ms"}),
        hide_index=True,
        key="cmp_cat_table",
    )
    if len(d.ops):
        st.plotly_chart(figures.ops_change(d.ops), key="cmp_ops")
    st.subheader("Findings: resolved, new, persisting")
    if len(d.per_rule):
        titles = {f["rule"]: f["title"] for f in [*d.resolved, *d.new, *(p["b"] for p in d.persisting)]}
        table = d.per_rule.assign(title=d.per_rule["rule"].map(titles)).rename(
            columns={
                "a_lost_ms": "A lost ms/step",
                "b_lost_ms": "B lost ms/step",
                "predicted_saving_ms": "A predicted saving ms/step",
                "removed_ms": "time lost removed ms/step",
                "acted_on": "acted on",
            }
        )
        st.dataframe(table.round(3), hide_index=True, key="cmp_findings")
    else:
        st.write("Neither run has findings.")
