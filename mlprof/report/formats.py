"""The output formats, in one registry: each renders a :class:`~mlprof.results.Report` to a string.

Commands pick a format from ``--format``, else from the ``-o`` file's suffix
(``.json``, ``.md``, ``.html``), else text. Every renderer reads only the report's
JSON (``report.data``), so a report read back from JSON (``mlprof render``) renders
exactly as the analysis that wrote it. A new format is one :func:`register` call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from mlprof.errors import UsageError
from mlprof.results.report import Report


class Format(msgspec.Struct, frozen=True):
    """An output format: its name, the ``-o`` suffixes that select it and its renderer."""

    name: str
    suffixes: tuple[str, ...]
    """``-o`` suffixes that select this format when ``--format`` is not given (lower case, with the dot)."""
    render: Callable[[Report], str]
    description: str


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> None:
    """Add a format (its name and suffixes must be new)."""
    taken = {s for f in FORMATS.values() for s in f.suffixes}
    if fmt.name in FORMATS or taken & set(fmt.suffixes):
        raise ValueError(f"format {fmt.name}: name or suffix already registered")
    FORMATS[fmt.name] = fmt


def choose(name: str | None, output: Path | None, default: str = "text") -> Format:
    """The format named by ``--format``, else the one ``output``'s suffix selects, else ``default``."""
    if name is not None:
        try:
            return FORMATS[name]
        except KeyError:
            raise UsageError(f"--format {name}: choose one of {', '.join(FORMATS)}") from None
    if output is not None:
        suffix = output.suffix.lower()
        for fmt in FORMATS.values():
            if suffix in fmt.suffixes:
                return fmt
    return FORMATS[default]


def _json(report: Report) -> str:
    return report.to_json()


def text_with_top(report: Report, top: int) -> str:
    """The text report as a file holds it (140 columns), listing ``top`` kernels and operators."""
    from rich.console import Console

    from mlprof.report.text import render_text

    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=140, file=sink)
        render_text(report, console, top)
    return console.export_text()


def _text(report: Report) -> str:
    from rich.console import Console

    from mlprof.report.text import render_text

    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=140, file=sink)
        render_text(report, console)
    return console.export_text()


def _markdown(report: Report) -> str:
    from mlprof.report.markdown import render_markdown

    return render_markdown(report)


def _html(report: Report) -> str:
    from mlprof.report.html import render_html

    return render_html(report)


register(Format("text", (".txt",), _text, "the terminal summary as plain text (coloured on a terminal)"))
register(Format("json", (".json",), _json, "the versioned JSON report (schema_version; see the README)"))
register(Format("markdown", (".md", ".markdown"), _markdown, "Markdown for a PR, a ticket or a CI comment"))
register(Format("html", (".html", ".htm"), _html, "one self-contained HTML page with charts"))
