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
    from mlprof.errors import BadInputError
    from mlprof.report.formats import choose
    from mlprof.results.report import Report
    from mlprof.untrusted import plain

    refuse_to_overwrite(output, [report], force=force)
    chosen = choose(fmt, output)
    loaded = Report.from_json(report)
    try:
        # Rendered once before anything is written: a JSON object that is not a whole mlprof report
        # (hand-edited, truncated, another tool's) fails here, as one line, not halfway through the output.
        chosen.render(loaded)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise BadInputError(
            f"{report}: not a complete mlprof report ({type(exc).__name__}: {plain(exc, max_chars=200)}); "
            "write it with `mlprof analyze --format json`"
        ) from None
    emit_report(loaded, fmt, output)
