"""``mlprof compare BASE NEW``: what changed between two runs, with CI gates."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from mlprof.commands._files import refuse_to_overwrite, write_text
from mlprof.untrusted import json_text


class CompareFormat(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"


TEXT_FILE_WIDTH = 100
"""Width of the text written with ``-o`` (no terminal to fit)."""


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def compare(
    base: str = typer.Argument(
        ..., help="The run before: a trace file, an mlprof.profile run folder, or a run id of the store (12, run:12)."
    ),
    new: str = typer.Argument(..., help="The run after (same kinds as BASE)."),
    fmt: CompareFormat = typer.Option(CompareFormat.text, "--format", "-f", help="Output format."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the report here instead of stdout."),
    force: bool = typer.Option(False, "--force", help="Overwrite the -o file if it exists."),
    steps: str | None = typer.Option(None, "--steps", help="Steps to compare in both runs: 16, 16-18, 17-."),
    step_marker: str | None = typer.Option(None, "--step-marker", help="Regex for host ranges that mark steps."),
    config: Path | None = typer.Option(
        None, "--config", help="Thresholds and gates file (mlprof.toml, or pyproject.toml with tool.mlprof)."
    ),
    max_regression: str | None = typer.Option(
        None, "--max-regression", help="Exit 1 when NEW's mean step is slower than BASE's by more than this (5%)."
    ),
    budget: list[str] | None = typer.Option(
        None, "--budget", help="Exit 1 when NEW spends more than this per step: comm_exposed=2ms, idle_data=5%."
    ),
    fail_on: list[str] | None = typer.Option(
        None, "--fail-on", help="Exit 1 when NEW reports this finding: RULE_OR_CATEGORY[>=SPEEDUP]."
    ),
    store: str | None = typer.Option(
        None, "--store", help="Run store for run ids (file path or database URL; default MLPROF_STORE, ~/.mlprof)."
    ),
) -> None:
    """What changed between two runs: step time, categories, kernels, findings, predicted vs achieved."""
    import msgspec

    from mlprof.compare import compare_analyses
    from mlprof.compare.inputs import analyze_run
    from mlprof.gates import check_comparison, gates_markdown
    from mlprof.gates.spec import gates_from_config, parse_budget, parse_fail_on, parse_max_regression
    from mlprof.report.compare_report import comparison_json, comparison_markdown, comparison_text
    from mlprof.report.markdown import shown_path
    from mlprof.rules.config import load_config
    from mlprof.untrusted import md_code

    rule_config = load_config(config)
    file_gates = gates_from_config(rule_config)
    gates = file_gates.merged(
        [parse_fail_on(x) for x in fail_on or []],
        None if max_regression is None else parse_max_regression(max_regression),
        [parse_budget(x) for x in budget or []],
    )
    refuse_to_overwrite(output, [Path(base), Path(new)], force=force)
    base_a = analyze_run(base, "BASE", steps, rule_config, step_marker, store)
    new_a = analyze_run(new, "NEW", steps, rule_config, step_marker, store)
    comparison = compare_analyses(base_a, new_a)
    results = check_comparison(comparison, gates) if not gates.empty else None
    if fmt is CompareFormat.json:
        data = comparison_json(comparison, results)
        text = json_text(msgspec.json.format(msgspec.json.encode(data), indent=2).decode()) + "\n"
    elif fmt is CompareFormat.markdown:
        text = comparison_markdown(comparison, results)
    else:
        text = comparison_text(comparison, results, width=_columns() if output is None else TEXT_FILE_WIDTH)
    if output is None:
        sys.stdout.write(text)
    else:
        write_text(output, text)
    if results is not None and not all(r.passed for r in results):
        sys.stdout.flush()
        sys.stderr.write(gates_markdown(results, f"{md_code(shown_path(base))} -> {md_code(shown_path(new))}"))
        raise typer.Exit(code=1)


def _columns() -> int:
    """The terminal's width (``COLUMNS`` when set), 100 when it cannot be told."""
    import shutil

    return max(shutil.get_terminal_size((100, 24)).columns, 40)
