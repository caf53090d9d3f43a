"""Human-readable terminal summary of an analysis (rich).

Names, paths and notes come from traces and users: they reach the console only as
:func:`mlprof.untrusted.term` text (no markup, emoji codes, escapes or highlighting).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.report.cross_rank_text import RANKS_TABLE_MAX, print_cross_rank
from mlprof.report.name_tables import DEFAULT_TOP, kernel_table, operator_table
from mlprof.report.speedup import speedup_text
from mlprof.report.verdict import verdict as verdict_parts
from mlprof.report.verdict import verdict_sentences
from mlprof.results.schema import ReportSource, report_data
from mlprof.untrusted import term, term_line

MAX_STEP_ROWS = 20
SHORT = {
    "compute": "compute",
    "comm_exposed": "comm",
    "memcpy_exposed": "copy",
    "idle_data": "data",
    "idle_sync": "sync",
    "idle_launch": "launch",
    "idle_other": "other",
}
"""Column labels for the per-step tables; the category table above them spells each one out."""


def render_text(report: ReportSource, console: Console, top: int = DEFAULT_TOP) -> None:
    """Print a report (a :class:`~mlprof.results.Report` or its JSON dict) on ``console``: the verdict
    paragraph and the top fix first, then the tables (``top`` kernels and operators)."""
    data = report_data(report)
    if data["trace"] is None:
        _render_counters_only(data, console)
        return
    tr = data["trace"]
    bd = data["breakdown"]
    device = tr["devices"][0]["name"] if tr["devices"] else "no device properties"
    ranks = tr["ranks"]
    _print_verdict(data, console)
    console.print(term_line(("mlprof analyze", "bold"), " ", tr["path"]))
    console.print(
        term(
            f"  {tr['format']} trace, {len(ranks)} rank{'s' if len(ranks) != 1 else ''}"
            f"{' of ' + str(tr['world_size']) if tr['world_size'] else ''}, {device}, "
            f"{tr['json_bytes'] / 1e6:.1f} MB JSON, {tr['events']:,} events"
        )
    )
    console.print(term(f"  steps found by: {tr['step_source']}"))
    if bd.get("aggregation"):
        console.print(f"  job figures below: {bd['aggregation']} (per-rank figures after the breakdown)")
    st = bd.get("step_time_ms") or {}
    if st.get("median") is not None:
        console.print(
            f"  step time: median {st['median']:.2f} ms (min {st['min']:.2f}, max {st['max']:.2f}) "
            f"over {bd['steps_analysed']} steps"
        )
    if bd.get("gpu_busy_pct") is not None:
        console.print(f"  GPU busy: {bd['gpu_busy_pct']:.1f}% of step time")
    _print_set_aside(data, console)
    console.print()
    console.print(_category_table(bd))
    if len(data["steps"]) > 1:
        console.print(_steps_table(data["steps"]))
    if 1 < len(data["ranks"]) <= RANKS_TABLE_MAX:
        console.print(_ranks_table(data["ranks"]))
    print_cross_rank(data, console)
    _print_whatif(data, console)
    _print_findings(data, console)
    for table in (kernel_table(data, top, console.width), operator_table(data, top, console.width)):
        if table is not None:
            console.print(table)
    for note in [*data["notes"], *tr["notes"]]:
        console.print(term_line(("note:", "yellow"), " ", note))
    if data.get("counters"):
        console.print()
        _print_counters(data["counters"], console, alone=False)


def _print_verdict(data: dict[str, Any], console: Console) -> None:
    """The one-paragraph verdict (wrapped at the terminal's width) and the top fix's code."""
    console.print(term_line(("Verdict:", "bold"), " ", verdict_sentences(data)))
    code = verdict_parts(data)["fix_code"]
    if code:
        console.print(term_line(("Fix:", "bold green"), " ", code))
    console.print()


def _print_set_aside(data: dict[str, Any], console: Console) -> None:
    """Steps left out of every per-step figure (warm-up, outlier, partial), one line each."""
    ranks = (data.get("steady_state") or {}).get("ranks", [])
    several = len(ranks) > 1
    for r in ranks:
        for s in r["set_aside"]:
            where = f"rank {r['rank']} " if several else ""
            console.print(term_line(f"  set aside: {where}step {s['step']} ({s['reason']}): {s['detail']}"))


def _render_counters_only(data: dict[str, Any], console: Console) -> None:
    c = data["counters"]
    console.print(term_line(("mlprof analyze", "bold"), " ", ", ".join(c["paths"])))
    _print_counters(c, console, alone=True)


def _print_counters(c: dict[str, Any], console: Console, *, alone: bool) -> None:
    n = len(c["devices"])
    span = c["span_s"] or 0.0
    console.print(
        f"{'  ' if alone else '[bold]GPU counters[/bold] '}{'/'.join(c['formats']) or 'counters'}, "
        f"{n} GPU{'s' if n != 1 else ''}, {_duration(span)}, {c['rows']:,} samples, clock: {c['time_base']}"
    )
    if not alone:
        console.print(
            term(f"  from {', '.join(c['paths'])}; joined to steps: {'yes' if c['aligned_to_steps'] else 'no'}")
        )
    console.print()
    low_pct = c["devices"][0]["low_util_pct"] if c["devices"] else 10.0
    table = Table(title="Per GPU (counters)", title_justify="left")
    for col in ("gpu", "util%", "p5", "p95", f"<{low_pct:g}%", "mem MiB", "MiB/min", "r2"):
        table.add_column(col, justify="right")
    table.add_column("throttled")
    for d in c["devices"]:
        throttle = ", ".join(f"{k} {v:.0%}" for k, v in d["throttle_share"].items() if k != "gpu_idle") or "-"
        low = d["util_below_share"]
        table.add_row(
            str(d["device"]),
            _fmt(d["util_mean_pct"], ".1f"),
            _fmt(d["util_p5_pct"], ".0f"),
            _fmt(d["util_p95_pct"], ".0f"),
            "-" if low is None else f"{low:.1%}",
            f"{_fmt(d['mem_used_max_mib'], '.0f')}/{_fmt(d['mem_total_mib'], '.0f')}",
            _fmt(d["mem_growth_mib_per_min"], "+.1f"),
            _fmt(d["mem_growth_r2"], ".2f"),
            throttle,
        )
    console.print(table)
    during = c.get("during_trace") or []
    if during:
        parts = [f"GPU {r['device']} {_fmt(r['util_mean_pct'], '.1f')}% ({r['util_samples']} samples)" for r in during]
        console.print(term("  utilisation during the traced steps: " + "; ".join(parts)))
    findings = c["findings"]
    if not findings:
        console.print(f"[green]No counter findings[/green] ({len(c['checks']['rules_run'])} counter rules run).")
    else:
        _print_findings_table(findings, console, title="Counter findings", per_step=False)
        _print_finding_details(findings, console, confidence=False)
        if not alone:
            console.print("   (counter findings are not in the plan: the trace attributes the idle time they see)")
    for rule, verdict in c["checks"]["verdicts"].items():
        console.print(term(f"{rule}: {verdict}"))
    for item in c["record_next"]:
        console.print(term_line(("record next time:", "cyan"), " ", item))
    for note in c["notes"]:
        console.print(term_line(("note:", "yellow"), " ", note))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _category_table(bd: dict[str, Any]) -> Table:
    table = Table(title="Where the time goes", title_justify="left")
    table.add_column("category")
    table.add_column("ms/step", justify="right")
    table.add_column("% of wall", justify="right")
    table.add_column("meaning")
    for c in CATEGORIES:
        entry = bd["categories"][c]
        value = entry["ms_per_step"]
        table.add_row(c, f"{value:.2f}", f"{entry['pct']:.1f}", entry["meaning"])
    return table


def _steps_table(steps: list[dict[str, Any]]) -> Table:
    table = Table(title="Per step (ms)", title_justify="left")
    table.add_column("step", justify="right")
    table.add_column("wall", justify="right")
    for c in CATEGORIES:
        table.add_column(SHORT[c], justify="right")
    shown = steps if len(steps) <= MAX_STEP_ROWS else steps[: MAX_STEP_ROWS // 2] + steps[-MAX_STEP_ROWS // 2 :]
    for rec in shown:
        table.add_row(str(rec["step"]), f"{rec['dur_ms']:.2f}", *[f"{rec[c + '_ms']:.2f}" for c in CATEGORIES])
    if len(steps) > len(shown):
        table.caption = f"{len(steps) - len(shown)} middle steps not shown; --format json lists all"
    return table


def _ranks_table(ranks: list[dict[str, Any]]) -> Table:
    table = Table(title="Per rank (ms per step)", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("step", justify="right")
    table.add_column("busy%", justify="right")
    for c in CATEGORIES:
        table.add_column(SHORT[c], justify="right")
    for r in ranks:
        bd = r["breakdown"]
        median = bd["step_time_ms"]["median"]
        busy = bd["gpu_busy_pct"]
        table.add_row(
            str(r["rank"]),
            f"{median:.2f}" if median is not None else "-",
            f"{busy:.1f}" if busy is not None else "-",
            *[f"{bd['categories'][c]['ms_per_step']:.2f}" for c in CATEGORIES],
        )
    return table


def _print_whatif(data: dict[str, Any], console: Console) -> None:
    """What paces each step, and whether the replay reproduces the recording (the JSON ``whatif`` object)."""
    w = data.get("whatif")
    if not w or not w.get("per_rank"):
        return
    console.print()
    status = "speedups below are replays of the trace" if w["trusted"] else "speedups below are attribution estimates"
    console.print(
        term(
            f"  replay: {w['replay_error_pct']:+.2f}% off the recorded step (rank {w['worst_rank']}; "
            f"limit {w['max_error_pct']:g}%): {status}"
        )
    )
    job = w.get("job")
    if job:
        # How a job's ranks were replayed (mlprof.whatif.job): together, coupled by their collectives, or one by one.
        console.print(
            term(
                f"  ranks replayed together: {job['matched_collectives']} collectives matched ({job['match_key']}), "
                f"each ending no earlier than its last rank's arrival; job model {job['job_replay_error_pct']:+.2f}% "
                "off the recorded steps"
                if job.get("model") == "job"
                else f"  ranks replayed one by one, not as a job: {job.get('reason', '')}"
            )
        )
    for rank in w["per_rank"][:RANKS_TABLE_MAX]:
        paced = rank["paced_by"]
        if not paced:
            continue
        counts: dict[str, int] = {}
        for p in paced:
            counts[p["paced_by"]] = counts.get(p["paced_by"], 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        summary = ", ".join(f"{name} ({n} of {len(paced)} steps)" for name, n in ranked)
        prefix = f"rank {rank['rank']}: " if len(w["per_rank"]) > 1 else ""
        console.print(term(f"  {prefix}paced by {summary}"))


def _print_findings(data: dict[str, Any], console: Console) -> None:
    findings = data["findings"]
    checks = data.get("checks", {})
    if not findings:
        console.print(f"[green]No findings[/green] ({len(checks.get('rules_run', []))} rules run).")
    else:
        multi = len(data.get("ranks") or []) > 1
        title = "Findings, ranked by expected speedup" + (
            " (ms/step: mean over ranks; \\[rank N] in a title: the worst rank's figure)" if multi else ""
        )
        _print_findings_table(findings, console, title=title, per_step=True)
        _print_finding_details(findings, console, confidence=True)
        console.print("   (mlprof explain RULE: what each rule measures, its fix with code, and when it misfires)")
    plan = data.get("plan", [])
    if len(plan) > 1:
        console.print()
        table = Table(title="Plan: fixes applied in order (waterfall)", title_justify="left")
        for col in ("rule", "saves ms/step", "step ms after", "cumulative"):
            table.add_column(col, justify="left" if col == "rule" else "right")
        step_ms = checks.get("step_ms")
        if step_ms:
            table.add_row("(now)", "", f"{step_ms:.2f}", "1.00x")
        for p in plan:
            table.add_row(
                p["rule"],
                f"{p['saves_ms_per_step']:.2f}",
                f"{p['step_ms_after']:.2f}",
                f"{p['cumulative_speedup']:.2f}x",
            )
        console.print(table)
    for rule, verdict in checks.get("verdicts", {}).items():
        console.print(term(f"{rule}: {verdict}"))
    for item in data.get("record_next", []):
        console.print(term_line(("record next time:", "cyan"), " ", item))


def _print_findings_table(findings: list[dict[str, Any]], console: Console, *, title: str, per_step: bool) -> None:
    # On a narrow terminal the category and confidence columns go (the details below
    # repeat them) so that the title keeps room to be read.
    wide = console.width >= NARROW_BELOW
    table = Table(title=title, title_justify="left")
    columns = [
        "#",
        "rule",
        *(["category"] if wide else []),
        "sev",
        *(["ms/step"] if per_step else []),
        "speedup",
        *(["conf"] if wide else []),
        "title",
    ]
    for col in columns:
        table.add_column(
            col,
            justify="right" if col in ("ms/step", "speedup") else "left",
            no_wrap=col != "title",
            min_width=24 if col == "title" else None,
        )
    for i, f in enumerate(findings, 1):
        lost = [f"{f['time_lost_ms_per_step']:.2f}"] if per_step else []
        table.add_row(
            str(i),
            f["rule"],
            *([f["category"]] if wide else []),
            f["severity"],
            *lost,
            speedup_text(f),
            *([f["confidence"]] if wide else []),
            term(f["title"], max_chars=TITLE_CHARS),
        )
    console.print(table)


def _print_finding_details(findings: list[dict[str, Any]], console: Console, *, confidence: bool) -> None:
    for i, f in enumerate(findings[:MAX_DETAILED], 1):
        console.print(term_line((f"{i}. {f['rule']} {f['name']}", "bold"), ": ", f["title"]))
        for key, value in list(_flat(f["evidence"]))[:MAX_EVIDENCE_LINES]:
            console.print(term(f"   {key}: {value}", max_chars=EVIDENCE_CHARS))
        console.print(term(f"   fix: {f['fix']}"))
        if confidence:
            console.print(term(f"   confidence {f['confidence']}: {f['confidence_reason']}"))


MAX_DETAILED = 5
TITLE_CHARS = 300
"""A finding title longer than this is shortened in the findings table (the details below show it whole)."""
EVIDENCE_CHARS = 2000
NARROW_BELOW = 110
MAX_EVIDENCE_LINES = 8


def _flat(evidence: dict[str, Any], prefix: str = "") -> Any:
    """Evidence as ``key: value`` lines; nested lists of records shown compactly."""
    for key, value in evidence.items():
        if isinstance(value, dict) and key.endswith("evidence"):
            yield from _flat(value, prefix=f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            shown = "; ".join(", ".join(f"{k}={v}" for k, v in item.items()) for item in value[:3])
            yield f"{prefix}{key}", shown + (" ..." if len(value) > 3 else "")
        else:
            yield f"{prefix}{key}", value
