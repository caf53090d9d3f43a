"""Markdown summary for pasting into a PR, a ticket or a CI comment."""

from __future__ import annotations

from mlprof.analysis import Analysis
from mlprof.analyzers.attribution import CATEGORIES
from mlprof.report.json_report import to_json_dict


def render_markdown(analysis: Analysis) -> str:
    data = to_json_dict(analysis)
    tr, bd = data["trace"], data["breakdown"]
    lines = [f"## mlprof: `{tr['path']}`", ""]
    device = tr["devices"][0]["name"] if tr["devices"] else "unknown device"
    lines.append(f"{tr['format']} trace, {len(tr['ranks'])} rank(s), {device}; steps found by {tr['step_source']}.")
    if bd.get("aggregation"):
        lines.append(f"Job figures are the {bd['aggregation']}.")
    st = bd.get("step_time_ms") or {}
    if st.get("median") is not None:
        lines.append(f"Median step time **{st['median']:.2f} ms** over {bd['steps_analysed']} steps.")
    if bd.get("gpu_busy_pct") is not None:
        lines.append(f"GPU busy **{bd['gpu_busy_pct']:.1f}%** of step time.")
    lines += ["", "| category | ms/step | % of wall | meaning |", "|---|---:|---:|---|"]
    for c in CATEGORIES:
        e = bd["categories"][c]
        lines.append(f"| {c} | {e['ms_per_step']:.2f} | {e['pct']:.1f} | {e['meaning']} |")
    if data["findings"]:
        lines += [
            "",
            "### Findings",
            "",
            "| # | rule | category | title | ms/step | expected speedup | confidence |",
            "|---|---|---|---|---:|---:|---|",
        ]
        for i, f in enumerate(data["findings"], 1):
            lines.append(
                f"| {i} | {f['rule']} | {f['category']} | {f['title']} | {f['time_lost_ms_per_step']:.2f} | "
                f"{f['expected_speedup']:.2f}x | {f['confidence']} |"
            )
        lines += ["", *[f"{i}. **{f['rule']}** fix: `{f['fix']}`" for i, f in enumerate(data["findings"], 1)]]
    if len(data.get("plan", [])) > 1:
        lines += ["", "### Plan (fixes applied in order)", "", "| rule | saves ms/step | step ms after | cumulative |"]
        lines.append("|---|---:|---:|---:|")
        for p in data["plan"]:
            lines.append(
                f"| {p['rule']} | {p['saves_ms_per_step']:.2f} | {p['step_ms_after']:.2f} | "
                f"{p['cumulative_speedup']:.2f}x |"
            )
    for rule, verdict in data.get("checks", {}).get("verdicts", {}).items():
        lines += ["", f"{rule}: {verdict}"]
    if data.get("record_next"):
        lines += ["", *[f"- record next time: {item}" for item in data["record_next"]]]
    notes = [*data["notes"], *tr["notes"]]
    if notes:
        lines += ["", *[f"> note: {n}" for n in notes]]
    return "\n".join(lines) + "\n"
