"""A self-contained HTML page of an analysis, to attach to a ticket.

Everything the page needs is inside it: plotly.js is inlined once
(``include_plotlyjs=True`` on the first chart), no request leaves the page. The
figures come from the same JSON dict as ``--format json``
(:func:`mlprof.results.schema.to_json_dict`), so the page and the JSON never
disagree: the step breakdown per step (stacked bars, ms), the categories' share of
the steps, the ranked fixes and the plan as a waterfall (each fix removes its
``saves_ms_per_step`` from the step, in ranked order).
"""

from __future__ import annotations

from typing import Any

from mlprof import __version__
from mlprof.analyzers.attribution import CATEGORIES
from mlprof.report.name_tables import html_section
from mlprof.report.verdict import verdict as verdict_parts
from mlprof.report.verdict import verdict_sentences
from mlprof.results.schema import ReportSource, report_data
from mlprof.untrusted import html_text

COLORS = {
    "compute": "#2e7d32",
    "comm_exposed": "#6a1b9a",
    "memcpy_exposed": "#00838f",
    "idle_data": "#c62828",
    "idle_sync": "#ef6c00",
    "idle_launch": "#f9a825",
    "idle_other": "#9e9e9e",
}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
th{background:#f5f5f5;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev-critical{color:#b71c1c;font-weight:bold}.sev-warning{color:#e65100}.sev-info{color:#555}
code{background:#f5f5f5;padding:1px 3px}.note{color:#555}
"""


def render_html(report: ReportSource) -> str:
    """The whole page as one string, from a report (a :class:`~mlprof.results.Report` or its JSON dict)."""
    data = report_data(report)
    tr, bd = data["trace"], data["breakdown"]
    if tr is None:  # a GPU counters file analysed alone
        title = f"mlprof report: {', '.join(data['counters']['paths'])}"
        head = [_counters_summary(data["counters"])]
    else:
        title = f"mlprof report: {tr['path']}"
        head = [_verdict(data), _summary(tr, bd), "<h2>Step breakdown</h2>", _category_table(bd)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        *head,
    ]
    charts = _Charts()
    parts.append(charts.html(_steps_figure(data["steps"])))
    parts += ["<h2>Ranked fixes</h2>", _findings_table(data["findings"])]
    parts.append(charts.html(_plan_figure(data)))
    parts.append(_plan_table(data["plan"]))
    parts.append(_per_rank(data))
    parts.append(html_section(data))
    parts.append(_notes(data))
    parts.append(
        f'<p class="note">mlprof {_e(__version__)}. Categories: each instant of a step is attributed to one '
        "category (first match wins), so they add up to the step. Expected speedup = step / (step - time lost), "
        "time lost measured in this trace; <code>mlprof explain RULE</code> documents each rule.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


class _Charts:
    """Figures as HTML fragments; plotly.js is inlined with the first one only."""

    def __init__(self) -> None:
        self.inlined = False
        self.count = 0

    def html(self, fig: Any) -> str:
        if fig is None:
            return ""
        self.count += 1
        out: str = fig.to_html(
            full_html=False,
            include_plotlyjs=not self.inlined,
            config={"displaylogo": False, "responsive": True},
            div_id=f"mlprof-chart-{self.count}",  # not a random id: the same report gives the same page
        )
        self.inlined = True
        return out


def _e(value: Any) -> str:
    return html_text(value)  # escaped, and no control characters or terminal escapes from a trace


def _verdict(data: dict[str, Any]) -> str:
    code = verdict_parts(data)["fix_code"]
    fix = f"<p><b>Fix:</b> <code>{_e(code)}</code></p>" if code else ""
    return f"<p><b>Verdict:</b> {_e(verdict_sentences(data))}</p>{fix}"


def _per_rank(data: dict[str, Any]) -> str:
    """Several ranks: one row per rank (its own step time, GPU busy and largest categories); the straggler marked."""
    ranks = data.get("ranks") or []
    if len(ranks) < 2:
        return ""
    cross = data.get("cross_rank") or {}
    per = {int(r["rank"]): r for r in cross.get("per_rank") or [] if "rank" in r}
    summary = cross.get("summary") or {}
    late = [int(s["rank"]) for s in summary.get("stragglers") or [] if isinstance(s, dict) and "rank" in s]
    straggler = late[0] if late else None
    slowest = summary.get("slowest_rank")
    rows = []
    for r in ranks:
        rank = int(r["rank"])
        b = r["breakdown"]
        st = b.get("step_time_ms") or {}
        cats = b.get("categories") or {}
        top = sorted(CATEGORIES, key=lambda c: -(cats.get(c) or {}).get("ms_per_step", 0.0))[:2]
        top_text = ", ".join(f"{c} {cats[c]['ms_per_step']:.2f}" for c in top if c in cats)
        marks = []
        if rank == straggler:
            marks.append("straggler: the others wait for it most")
        if rank == slowest:
            marks.append("slowest mean step")
        wait = (per.get(rank) or {}).get("wait_ms")
        rows.append(
            f"<tr><td>{rank}{' <b>(' + ', '.join(marks) + ')</b>' if marks else ''}</td>"
            f"<td class=num>{_num(st.get('mean'), '.2f')}</td><td class=num>{_num(b.get('gpu_busy_pct'), '.1f')}</td>"
            f"<td class=num>{_num(wait, '.2f')}</td><td>{top_text}</td></tr>"
        )
    return (
        "<h2>Per rank</h2><p class=note>Each rank's own figures (the job's figures above are the mean over ranks). "
        "wait ms: time per step this rank's collectives wait for later ranks.</p>"
        "<table><tr><th>rank</th><th>mean step ms</th><th>GPU busy %</th><th>wait ms</th>"
        f"<th>largest categories (ms/step)</th></tr>{''.join(rows)}</table>"
    )


def _summary(tr: dict[str, Any], bd: dict[str, Any]) -> str:
    device = tr["devices"][0]["name"] if tr["devices"] else "no device properties"
    st = bd.get("step_time_ms") or {}
    items = [
        f"{_e(tr['format'])} trace, {len(tr['ranks'])} rank(s), {_e(device)}; steps found by {_e(tr['step_source'])}",
    ]
    if st.get("median") is not None:
        items.append(
            f"step time: median <b>{st['median']:.2f} ms</b> (mean {st['mean']:.2f}, min {st['min']:.2f}, "
            f"max {st['max']:.2f}) over {bd['steps_analysed']} steps"
        )
    if bd.get("gpu_busy_pct") is not None:
        items.append(f"GPU busy <b>{bd['gpu_busy_pct']:.1f}%</b> of step time")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _counters_summary(c: dict[str, Any]) -> str:
    """GPU counters alone: what was recorded, and one row per GPU."""
    head = (
        f"<ul><li>GPU counters ({_e('/'.join(c['formats']) or 'counters')}), {len(c['devices'])} GPU(s), "
        f"{c['rows']:,} samples over {c['span_s'] or 0:.1f} s; clock: {_e(c['time_base'])}</li></ul>"
    )
    rows = "".join(
        f"<tr><td class=num>{_e(d['device'])}</td><td class=num>{_num(d['util_mean_pct'], '.1f')}</td>"
        f"<td class=num>{_num(d['mem_used_max_mib'], '.0f')}</td><td class=num>{_num(d['mem_total_mib'], '.0f')}</td>"
        f"<td class=num>{_num(d['mem_growth_mib_per_min'], '+.1f')}</td></tr>"
        for d in c["devices"]
    )
    table = (
        "<h2>Per GPU (counters)</h2><table><tr><th>GPU</th><th>util %</th><th>max MiB used</th><th>MiB total</th>"
        f"<th>MiB/min growth</th></tr>{rows}</table>"
    )
    return head + table


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _category_table(bd: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{c}</td><td class=num>{bd['categories'][c]['ms_per_step']:.2f}</td>"
        f"<td class=num>{bd['categories'][c]['pct']:.1f}</td><td>{_e(bd['categories'][c]['meaning'])}</td></tr>"
        for c in CATEGORIES
    )
    return f"<table><tr><th>category</th><th>ms/step</th><th>% of wall</th><th>meaning</th></tr>{rows}</table>"


TEMPLATE = "plotly"
"""The charts' plotly template, named when each figure is made: not the process's default, which importing
streamlit (the dashboard, a notebook) replaces with its own; the page embeds the template, so it is the same in
any process."""


def _steps_figure(steps: list[dict[str, Any]]) -> Any:
    import plotly.graph_objects as go

    if not steps:
        return None
    x = [str(s["step"]) for s in steps]
    fig = go.Figure(layout={"template": TEMPLATE})
    for c in CATEGORIES:
        fig.add_bar(name=c, x=x, y=[s[f"{c}_ms"] for s in steps], marker_color=COLORS[c])
    fig.update_layout(
        barmode="stack",
        title="Step time by category (ms)",
        xaxis_title="step",
        yaxis_title="ms",
        height=420,
        margin={"t": 50, "b": 40},
    )
    return fig


def _plan_figure(data: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    plan = data["plan"]
    step_ms = data["checks"].get("step_ms")
    if not plan or step_ms is None:
        return None
    labels = ["step now", *[p["rule"] for p in plan], "after all fixes"]
    values = [step_ms, *[-p["saves_ms_per_step"] for p in plan], plan[-1]["step_ms_after"]]
    fig = go.Figure(
        go.Waterfall(
            x=labels,
            y=values,
            measure=["absolute", *["relative"] * len(plan), "total"],
            text=[
                f"{step_ms:.1f}",
                *[f"-{p['saves_ms_per_step']:.1f}" for p in plan],
                f"{plan[-1]['step_ms_after']:.1f}",
            ],
            textposition="outside",
            decreasing={"marker": {"color": "#2e7d32"}},
            totals={"marker": {"color": "#1565c0"}},
        ),
        layout={"template": TEMPLATE},
    )
    fig.update_layout(
        title=f"Plan: fixes applied in ranked order (ms per step; {plan[-1]['cumulative_speedup']:.2f}x in all)",
        yaxis_title="ms per step",
        height=420,
        showlegend=False,
        margin={"t": 50, "b": 40},
    )
    return fig


def _findings_table(findings: list[dict[str, Any]]) -> str:
    if not findings:
        return "<p>No findings: no rule found time to save in this trace.</p>"
    rows = []
    for i, f in enumerate(findings, 1):
        rows.append(
            f"<tr><td class=num>{i}</td><td><b>{_e(f['rule'])}</b></td><td>{_e(f['category'])}</td>"
            f"<td class='sev-{_e(f['severity'])}'>{_e(f['severity'])}</td><td>{_e(f['title'])}</td>"
            f"<td class=num>{f['time_lost_ms_per_step']:.2f}</td><td class=num>{f['expected_speedup']:.2f}x</td>"
            f"<td>{_e(f['confidence'])}: {_e(f['confidence_reason'])}</td><td><code>{_e(f['fix'])}</code></td></tr>"
        )
    head = (
        "<tr><th>#</th><th>rule</th><th>category</th><th>severity</th><th>finding</th><th>ms/step</th>"
        "<th>expected speedup</th><th>confidence</th><th>fix</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _plan_table(plan: list[dict[str, Any]]) -> str:
    if not plan:
        return ""
    rows = "".join(
        f"<tr><td>{_e(p['rule'])}</td><td class=num>{p['saves_ms_per_step']:.2f}</td>"
        f"<td class=num>{p['step_ms_after']:.2f}</td><td class=num>{p['cumulative_speedup']:.2f}x</td></tr>"
        for p in plan
    )
    return (
        "<h2>Plan (waterfall)</h2><table><tr><th>fix</th><th>saves ms/step</th><th>step ms after</th>"
        f"<th>cumulative</th></tr>{rows}</table>"
    )


def _notes(data: dict[str, Any]) -> str:
    items = [f"record next time: {_e(r)}" for r in data.get("record_next", [])]
    items += [_e(n) for n in [*data["notes"], *(data["trace"] or {}).get("notes", [])]]
    items += [f"{_e(rule)}: {_e(v)}" for rule, v in data["checks"].get("verdicts", {}).items()]
    if not items:
        return ""
    return "<h2>Notes</h2><ul class=note>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
