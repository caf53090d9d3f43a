"""``mlprof report PATH -o report.html``: a self-contained HTML page to attach to a ticket."""

from __future__ import annotations

from pathlib import Path

import typer


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
    from mlprof.errors import MlprofError, UsageError
    from mlprof.report.html import render_html
    from mlprof.rules.config import load_config
    from mlprof.trace.loader import load_job

    rule_config = load_config(config)
    try:
        src, out = path.resolve(), output.resolve()
        if src == out or (path.is_dir() and src in out.parents):
            raise UsageError(f"-o {output}: would write over or into the input; choose another file")
    except OSError:
        pass
    analysis = analyze_job(load_job(path, step_marker=step_marker), str(path), steps, rule_config)
    page = render_html(analysis)
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise MlprofError(f"{output}: cannot write ({exc.strerror})") from None
    print(f"{output}: {len(page) / 1e6:.1f} MB, {len(analysis.findings)} finding(s)")
