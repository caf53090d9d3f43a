"""``mlprof report PATH -o report.html``: a self-contained HTML page to attach to a ticket."""

from __future__ import annotations

from pathlib import Path

import typer

from mlprof.commands._files import refuse_to_overwrite, write_text
from mlprof.untrusted import plain


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    path: Path = typer.Argument(..., help="Trace file, a folder of rank traces, or an mlprof.profile run folder."),
    output: Path = typer.Option(..., "--output", "-o", help="The report file to write (HTML unless --format)."),
    fmt: str | None = typer.Option(None, "--format", "-f", help="html (default), json, markdown or text."),
    force: bool = typer.Option(False, "--force", help="Overwrite the -o file if it exists."),
    steps: str | None = typer.Option(None, "--steps", help="Steps to analyse: 16, 16-18, 17-."),
    step_marker: str | None = typer.Option(None, "--step-marker", help="Regex for host ranges that mark steps."),
    config: Path | None = typer.Option(
        None, "--config", help="Thresholds file (mlprof.toml, or pyproject.toml with tool.mlprof)."
    ),
    rank: int | None = typer.Option(None, "--rank", help="Only this rank of a multi-rank directory."),
    counters: list[Path] | None = typer.Option(
        None, "--counters", help="GPU counters files recorded with the trace (as for mlprof analyze); repeatable."
    ),
    jobs: int | None = typer.Option(None, "--jobs", "-j", help="Ranks read in parallel (as for mlprof analyze)."),
    low_memory: bool = typer.Option(
        False, "--low-memory", help="One trace larger than memory, one step window at a time (as for analyze)."
    ),
) -> None:
    """A self-contained HTML page: step breakdown, ranked fixes and the plan's waterfall."""
    from mlprof.api import analyze
    from mlprof.report.formats import choose
    from mlprof.rules.config import load_config

    rule_config = load_config(config)
    counter_paths = list(counters or [])
    refuse_to_overwrite(output, [path, *counter_paths], force=force)
    chosen = choose(fmt, None, default="html")
    result = analyze(
        path,
        steps=steps,
        step_marker=step_marker,
        config=rule_config,
        counters=counter_paths or "auto",
        rank=rank,
        jobs=jobs,
        low_memory=low_memory,
    )
    page = chosen.render(result)
    write_text(output, page)
    print(plain(f"{output}: {len(page) / 1e6:.1f} MB, {len(result.data['findings'])} finding(s)"))
