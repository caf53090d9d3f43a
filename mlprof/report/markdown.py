"""Markdown summary for pasting into a PR, a ticket or a CI comment.

Text from traces and users (paths, device names, finding titles, notes) goes through
:func:`mlprof.untrusted.md_text` / :func:`~mlprof.untrusted.md_code`: it renders
literally, with no heading, link, image or broken table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.report.name_tables import DEFAULT_TOP, markdown_lines
from mlprof.report.speedup import speedup_text
from mlprof.report.verdict import verdict as verdict_parts
from mlprof.report.verdict import verdict_sentences
from mlprof.results.schema import ReportSource, report_data
from mlprof.untrusted import md_code, md_text

_IDENTIFIER = re.compile(r"[A-Za-z_][\w.:]*[\w)](?:\(\))?|__\w+__")
"""A word that may be code: checked by :func:`_is_code`."""


def _is_code(word: str) -> bool:
    """An identifier worth a code span: ``__next__``, ``num_workers``, ``torch.compile``, ``aten::mm``, ``f()``."""
    core = word.rstrip(".")
    return "_" in core or "::" in core or core.endswith("()") or ("." in core and not core.replace(".", "").isdigit())


def prose(text: str) -> str:
    """Text with identifiers as code spans and the rest escaped (``__next__`` stays ``__next__``, not bold)."""
    out: list[str] = []
    pos = 0

    def between(fragment: str, first: bool) -> str:
        if not fragment:
            return ""
        lead = "" if first else " " * (len(fragment) - len(fragment.lstrip(" ")))
        return lead + md_text(fragment)  # md_text keeps trailing spaces, drops leading ones

    for m in _IDENTIFIER.finditer(text):
        if not _is_code(m.group()):
            continue
        out.append(between(text[pos : m.start()], pos == 0))
        out.append(md_code(m.group()))
        pos = m.end()
    out.append(between(text[pos:], pos == 0))
    return "".join(out)


def shown_path(path: str) -> str:
    """A path as people paste it into a PR: relative to the current directory when under it, else the file name
    (an absolute path would leak a home directory or a cluster's layout)."""
    p = Path(path)
    if not p.is_absolute() or "://" in path:
        return path
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def render_markdown(report: ReportSource, top: int = DEFAULT_TOP) -> str:
    """A report (a :class:`~mlprof.results.Report` or its JSON dict) as Markdown: the verdict first, then the
    tables (``top`` kernels and operators)."""
    data = report_data(report)
    if data["trace"] is None:
        c = data["counters"]
        paths = ", ".join(md_code(shown_path(p)) for p in c["paths"])
        return "\n".join([f"## mlprof: {paths}", "", *_counters_lines(c, alone=True)]) + "\n"
    tr, bd = data["trace"], data["breakdown"]
    lines = [f"## mlprof: {md_code(shown_path(tr['path']))}", ""]
    lines.append(f"**Verdict:** {md_text(verdict_sentences(data))}")
    code = verdict_parts(data)["fix_code"]
    if code:
        lines += ["", f"**Fix:** {md_code(code, table=False)}"]
    lines.append("")
    device = md_text(tr["devices"][0]["name"]) if tr["devices"] else "unknown device"
    lines.append(
        f"{md_text(tr['format'])} trace, {len(tr['ranks'])} rank(s), {device}; "
        f"steps found by {md_text(tr['step_source'])}."
    )
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
        lines.append(f"| `{c}` | {e['ms_per_step']:.2f} | {e['pct']:.1f} | {prose(e['meaning'])} |")
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
                f"| {i} | {f['rule']} | {f['category']} | {prose(f['title'])} | {f['time_lost_ms_per_step']:.2f} | "
                f"{speedup_text(f)} | {f['confidence']} |"
            )
        lines += ["", *[f"{i}. **{f['rule']}** fix: {md_code(f['fix'])}" for i, f in enumerate(data["findings"], 1)]]
    if len(data.get("plan", [])) > 1:
        lines += ["", "### Plan (fixes applied in order)", "", "| rule | saves ms/step | step ms after | cumulative |"]
        lines.append("|---|---:|---:|---:|")
        for p in data["plan"]:
            lines.append(
                f"| {p['rule']} | {p['saves_ms_per_step']:.2f} | {p['step_ms_after']:.2f} | "
                f"{p['cumulative_speedup']:.2f}x |"
            )
    lines += markdown_lines(data, top)
    for rule, said in data.get("checks", {}).get("verdicts", {}).items():
        lines += ["", f"{rule}: {md_text(said)}"]
    if data.get("record_next"):
        lines += ["", *[f"- record next time: {md_text(item)}" for item in data["record_next"]]]
    notes = [*data["notes"], *tr["notes"]]
    if notes:
        lines += ["", *[f"> note: {md_text(n)}" for n in notes]]
    if data.get("counters"):
        lines += ["", "### GPU counters", "", *_counters_lines(data["counters"], alone=False)]
    return "\n".join(lines) + "\n"


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _counters_lines(c: dict[str, Any], *, alone: bool) -> list[str]:
    lines = [
        f"{'/'.join(c['formats']) or 'counters'}, {len(c['devices'])} GPU(s), {_cell(c['span_s'], '.0f')} s, "
        f"{c['rows']:,} samples, clock: {c['time_base']}"
        + ("" if alone else f"; joined to steps: {'yes' if c['aligned_to_steps'] else 'no'}")
        + ".",
        "",
        "| GPU | util mean % | time under low util | mem max MiB | of MiB | growth MiB/min (r2) | throttled |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for d in c["devices"]:
        low = d["util_below_share"]
        throttle = ", ".join(f"{k} {v:.0%}" for k, v in d["throttle_share"].items() if k != "gpu_idle") or "-"
        under = "-" if low is None else f"{low:.1%} (<{d['low_util_pct']:g}%)"
        lines.append(
            f"| {d['device']} | {_cell(d['util_mean_pct'], '.1f')} | {under} | {_cell(d['mem_used_max_mib'], '.0f')} | "
            f"{_cell(d['mem_total_mib'], '.0f')} | {_cell(d['mem_growth_mib_per_min'], '+.1f')} "
            f"({_cell(d['mem_growth_r2'], '.2f')}) | {throttle} |"
        )
    if c["findings"]:
        lines += ["", "| # | rule | title | expected speedup | severity |", "|---|---|---|---:|---|"]
        for i, f in enumerate(c["findings"], 1):
            lines.append(f"| {i} | {f['rule']} | {prose(f['title'])} | {speedup_text(f)} | {f['severity']} |")
        lines += ["", *[f"{i}. **{f['rule']}** fix: {md_code(f['fix'])}" for i, f in enumerate(c["findings"], 1)]]
    else:
        lines += ["", f"No counter findings ({len(c['checks']['rules_run'])} counter rules run)."]
    for rule, said in c["checks"]["verdicts"].items():
        lines += ["", f"{rule}: {md_text(said)}"]
    lines += [f"- record next time: {md_text(item)}" for item in c["record_next"]]
    lines += [f"> note: {md_text(n)}" for n in c["notes"]]
    return lines
