"""``mlprof report PATH -o report.html``: a self-contained HTML page to attach to a ticket."""

from __future__ import annotations

from pathlib import Path

import typer

from mlprof.commands._files import refuse_to_overwrite, write_text


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    path: Path = typer.Argument(..., help="Trace file, a folder of rank traces, or an mlprof.profile run folder."),
    output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write."),
    steps: str | None = typer.Option(None, "--steps", help="Steps to analyse: 16, 16-18, 17-."),
    step_marker: str | None = typer.Option(None, "--step-marker", help="Regex for host ranges that mark steps."),
    config: Path | None = typer.Option(
        None, "--config", help="Thresholds file (mlprof.toml, or pyproject.toml with tool.mlprof)."
    ),
) -> None:
    """A self-contained HTML page: step breakdown, ranked fixes and the plan's waterfall."""
    from mlprof.analysis import analyze_job
    from mlprof.report.html import render_html
    from mlprof.rules.config import load_config
    from mlprof.trace.loader import load_job

    rule_config = load_config(config)
    refuse_to_overwrite(output, [path])
    analysis = analyze_job(load_job(path, step_marker=step_marker), str(path), steps, rule_config)
    page = render_html(analysis)
    write_text(output, page)
    print(f"{output}: {len(page) / 1e6:.1f} MB, {len(analysis.findings)} finding(s)")
