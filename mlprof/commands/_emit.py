"""Write a report in the chosen format, to a file or stdout: what every command that shows a report does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mlprof.commands._files import write_text

if TYPE_CHECKING:
    from mlprof.results.report import Report


def emit_report(
    report: Report, fmt_name: str | None, output: Path | None, default: str = "text", top: int | None = None
) -> None:
    """Render ``report`` as ``--format`` says, else as ``-o``'s suffix says, else ``default``.

    Text to a terminal is printed through rich (colours, wrapping); everything else is
    rendered to a string first, so a file holds exactly what the format renders.
    """
    from mlprof.report.formats import choose

    fmt = choose(fmt_name, output, default)
    if fmt.name == "text" and output is None:
        from rich.console import Console

        from mlprof.report.text import render_text

        render_text(report, Console(), *(() if top is None else (top,)))
        return
    if top is not None and fmt.name == "markdown":  # --top: how many kernels and operators are listed
        from mlprof.report.markdown import render_markdown

        text = render_markdown(report, top)
    elif fmt.name == "json":
        # written piece by piece as indented (Report.json_chunks): a large job's report is never held whole as text
        chunks = report.json_chunks()
        if output is None:
            for piece in chunks:
                sys.stdout.write(piece)
        else:
            write_text(output, chunks)
        return
    elif top is not None and fmt.name == "text":
        from mlprof.report.formats import text_with_top

        text = text_with_top(report, top)
    else:
        text = fmt.render(report)
    if output is None:
        sys.stdout.write(text)
    else:
        write_text(output, text)
