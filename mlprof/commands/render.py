"""``mlprof render REPORT.json -o report.html``: a saved JSON report in another format, without the trace."""

from __future__ import annotations

from pathlib import Path

import typer

from mlprof.commands._files import refuse_to_overwrite


def register(app: typer.Typer) -> None:
    app.command("render")(render)


def render(
    report: Path = typer.Argument(..., help="A JSON report written by mlprof analyze --format json (or -o X.json)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="text, json, markdown or html; default: from the -o suffix, else text."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite the -o file if it exists."),
) -> None:
    """Render a saved JSON report as text, Markdown or HTML: the same output as analysing the trace again."""
    from mlprof.commands._emit import emit_report
    from mlprof.report.formats import choose
    from mlprof.results.report import Report

    refuse_to_overwrite(output, [report], force=force)
    choose(fmt, output)
    emit_report(Report.from_json(report), fmt, output)
