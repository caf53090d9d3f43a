"""Human-readable terminal summary of an analysis (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from mlprof.analysis import Analysis
from mlprof.analyzers.attribution import CATEGORIES
from mlprof.report.json_report import to_json_dict

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


def render_text(analysis: Analysis, console: Console) -> None:
    data = to_json_dict(analysis)
    tr = data["trace"]
    bd = data["breakdown"]
    device = tr["devices"][0]["name"] if tr["devices"] else "no device properties"
    ranks = tr["ranks"]
    console.print(f"[bold]mlprof analyze[/bold] {tr['path']}")
    console.print(
        f"  {tr['format']} trace, {len(ranks)} rank{'s' if len(ranks) != 1 else ''}"
        f"{' of ' + str(tr['world_size']) if tr['world_size'] else ''}, {device}, "
        f"{tr['json_bytes'] / 1e6:.1f} MB JSON, {tr['events']:,} events"
    )
    console.print(f"  steps found by: {tr['step_source']}")
    if bd.get("aggregation"):
        console.print(f"  job figures below: {bd['aggregation']} (per-rank table at the end)")
    st = bd.get("step_time_ms") or {}
    if st.get("median") is not None:
        console.print(
            f"  step time: median {st['median']:.2f} ms (min {st['min']:.2f}, max {st['max']:.2f}) "
            f"over {bd['steps_analysed']} steps"
        )
    if bd.get("gpu_busy_pct") is not None:
        console.print(f"  GPU busy: {bd['gpu_busy_pct']:.1f}% of step time")
    console.print()
    console.print(_category_table(bd))
    if len(data["steps"]) > 1:
        console.print(_steps_table(data["steps"]))
    if len(data["ranks"]) > 1:
        console.print(_ranks_table(data["ranks"]))
    _print_findings(data["findings"], console)
    for note in [*data["notes"], *tr["notes"]]:
        console.print(f"[yellow]note:[/yellow] {note}")


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


def _print_findings(findings: list[dict[str, Any]], console: Console) -> None:
    if not findings:
        return
    table = Table(title="Findings, ranked by expected speedup", title_justify="left")
    for col in ("#", "rule", "category", "title", "ms/step", "speedup"):
        table.add_column(col)
    for i, f in enumerate(findings, 1):
        table.add_row(
            str(i),
            f["rule"],
            f["category"],
            f["title"],
            f"{f['time_lost_ms_per_step']:.2f}",
            f"{f['expected_speedup']:.2f}x",
        )
    console.print(table)
