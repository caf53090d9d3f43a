"""Compare page: run A (before) and run B (after): what changed, what was fixed, did it deliver."""

from __future__ import annotations

import streamlit as st

from mlprof.dashboard import data, figures
from mlprof.dashboard.run_diff import diff_runs
from mlprof.errors import MlprofError
from mlprof.untrusted import md_text, plain


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
    try:
        d = diff_runs(a, b)
    except MlprofError as exc:
        st.warning(md_text(exc))  # the message names the run's path: shown literally, not as markdown
        return
    c = d.comparison
    step = c.step
    heads = st.columns(4)
    heads[0].metric("A median steady step", f"{d.step_ms_a:,.2f} ms")
    heads[1].metric(
        "B median steady step",
        f"{d.step_ms_b:,.2f} ms",
        delta=f"{d.step_ms_b - d.step_ms_a:+,.2f} ms",
        delta_color="inverse",
    )
    heads[2].metric(
        "Achieved speedup",
        f"{d.achieved_speedup:.2f}x",
        help="A median / B median over the steady steps (warm-up and outlier steps set aside); "
        + (f"run-to-run band +/-{step.noise_pct:.1f}%" if step.noise_pct is not None else "spread unknown"),
    )
    heads[3].metric(
        "Predicted by A's findings",
        "-" if d.predicted_speedup is None else f"{d.predicted_speedup:.2f}x",
        help="A's predicted savings of the findings B no longer has or has less of, together",
    )
    st.caption(
        f"Verdict: {step.verdict} ({step.change_pct:+.1f}% median, over {step.base.n} / {step.new.n} steady steps). "
        "Same comparison as `mlprof compare` (docs/compare.md)."
    )
    for note in c.notes:
        st.text(plain(f"note: {note}"))
    st.plotly_chart(figures.category_change(d.categories), key="cmp_categories")
    st.dataframe(
        d.categories.round(3).rename(
            columns={"a_ms": "A ms/step", "b_ms": "B ms/step", "delta_ms": "change ms (mean steady step)"}
        ),
        hide_index=True,
        key="cmp_cat_table",
    )
    if len(d.ops):
        st.plotly_chart(figures.ops_change(d.ops), key="cmp_ops")
    st.subheader("Findings: predicted vs achieved")
    if len(d.per_rule):
        table = d.per_rule.rename(
            columns={
                "a_lost_ms": "A lost ms/step",
                "b_lost_ms": "B lost ms/step",
                "predicted_speedup": "A predicted",
                "achieved_speedup": "achieved (whole steady step)",
                "acted_on": "acted on",
            }
        )
        st.dataframe(table.round(3), hide_index=True, key="cmp_findings")
    else:
        st.write("Neither run has findings.")
