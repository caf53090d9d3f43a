"""The ``mlprof`` command line.

Exit codes: 0 the trace was analysed (whatever was found); 1 a gate the user asked
for tripped; 2 bad input or usage. Errors are one line on stderr, never a traceback
(set ``MLPROF_DEBUG=1`` to see one).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from mlprof import __version__

app = typer.Typer(
    name="mlprof",
    help="Profiling and trace analysis for PyTorch GPU jobs.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"
    html = "html"


FORMAT_HELP = "Output format; default: from the -o suffix (.json, .md, .html), else text."
FORCE_HELP = "Overwrite the -o file if it exists (without it an existing file is left as it is)."


def _version(value: bool) -> None:
    if value:
        print(f"mlprof {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Profiling and trace analysis for PyTorch GPU jobs."""


@app.command()
def analyze(
    path: Path = typer.Argument(
        ...,
        help="Trace file (.json, .json.gz, nsys .sqlite), a directory of per-rank traces, or a GPU counters file "
        "(nvidia-smi CSV, dcgmi dmon, dcgm-exporter metrics) analysed alone.",
    ),
    fmt: OutputFormat | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    rank: int | None = typer.Option(None, "--rank", help="Analyse only this rank of a multi-rank directory."),
    steps: str | None = typer.Option(None, "--steps", help="Steps to analyse: 16, 16-18, 16,18 or 17-."),
    step_marker: str | None = typer.Option(
        None,
        "--step-marker",
        help="Regex for host ranges that mark steps, when the trace has no ProfilerStep.",
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the report here instead of stdout."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Thresholds file (mlprof.toml or a pyproject.toml with [tool.mlprof]); found from the current "
        "directory up when not given.",
    ),
    settings: list[str] | None = typer.Option(
        None,
        "--set",
        help="A rule threshold for this run over the config file's: RULE.option=value (DATA001.min_share=0.05; "
        "names, units and ranges in 'mlprof explain RULE'); repeatable.",
    ),
    counters: list[Path] | None = typer.Option(
        None,
        "--counters",
        help="GPU counters recorded with the trace (nvidia-smi --query-gpu CSV, dcgmi dmon, dcgm-exporter "
        "metrics, mlprof counters CSV); repeatable.",
    ),
    fail_on: list[str] | None = typer.Option(
        None,
        "--fail-on",
        help="CI gate: exit 1 (markdown report on stderr) when a finding of this rule or category is reported, "
        "optionally only from an expected speedup: DATA001, comm_not_overlapped>=1.1, any>=1.25; repeatable.",
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        help="Ranks read in parallel (processes, or Dask workers for a LocalCluster); default one per core, at most 8.",
    ),
    engine: str = typer.Option(
        "local", "--engine", help="Where per-rank work runs for a multi-rank job: local (processes) or dask."
    ),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help="Dask scheduler address (tcp://HOST:PORT) for --engine dask; without it a LocalCluster is started.",
    ),
    low_memory: bool = typer.Option(
        False,
        "--low-memory",
        help="One trace larger than memory: spill it step by step to a temporary folder and analyse one step "
        "window at a time (needs ProfilerStep markers; slower; see docs/multirank.md).",
    ),
    top: int = typer.Option(
        10, "--top", min=1, max=1000, help="Kernels and operators listed in the text and markdown reports."
    ),
) -> None:
    """Where the step time goes, per step and per rank, and what to fix first."""
    from mlprof.commands._analyze import run_analyze

    run_analyze(
        path,
        fmt=fmt.value if fmt else None,
        rank=rank,
        steps=steps,
        step_marker=step_marker,
        output=output,
        force=force,
        config=config,
        settings=settings,
        counters=counters,
        fail_on=fail_on,
        jobs=jobs,
        engine=engine,
        scheduler=scheduler,
        low_memory=low_memory,
        top=top,
    )


def _register_subcommands() -> None:
    from mlprof.commands import register_all

    register_all(app)


_register_subcommands()


@app.command("rules")
def rules_command(
    config: Path | None = typer.Option(None, "--config", help="Show thresholds as overridden by this file."),
) -> None:
    """List every rule: id, category, what it finds and its thresholds."""
    from mlprof.rules.catalogue import ENTRIES as RULES
    from mlprof.rules.config import load_config

    cfg = load_config(config)
    if cfg.source:
        print(f"thresholds from {cfg.source}")
    import textwrap

    columns = _terminal_columns()
    width = max(len(r.name) for r in RULES)
    lead = 10 + width + 2 + 21
    for rule in RULES:
        values = cfg.thresholds(rule.id)
        shown = ", ".join(f"{d.name}={d.show(values[d.name])}" for d in rule.options())
        state = "  (disabled)" if rule.id in cfg.disabled else ""
        if columns >= lead + 60:  # wide: one row per rule, the summary wrapped in its column
            pad = " " * lead
            summary = textwrap.fill(rule.summary + state, width=columns - 1, initial_indent=pad, subsequent_indent=pad)[
                lead:
            ]
            print(f"{rule.id:<10}{rule.name:<{width + 2}}{rule.category:<21}{summary}")
            print(textwrap.fill(f"thresholds: {shown}", width=columns - 1, initial_indent=pad, subsequent_indent=pad))
        else:  # narrow: the id line, then the summary and thresholds wrapped at word boundaries
            print(f"{rule.id}  {rule.name}  [{rule.category}]{state}")
            for text in (rule.summary, f"thresholds: {shown}"):
                print(textwrap.fill(text, width=columns - 1, initial_indent="    ", subsequent_indent="    "))
    print(
        textwrap.fill(
            "mlprof explain ID: what a rule detects, why it costs time, how it is measured, the fix, false alarms.",
            width=columns - 1,
        )
    )


def _wrap_line(line: str) -> str:
    """A prose line wrapped at word boundaries to the terminal (code, indented four spaces or more, is kept)."""
    import textwrap

    width = _terminal_columns() - 1
    indent = line[: len(line) - len(line.lstrip(" "))]
    if len(line) <= width or len(indent) >= 4:
        return line
    return textwrap.fill(line.strip(), width=width, initial_indent=indent, subsequent_indent=indent + "  ")


def _terminal_columns() -> int:
    """The terminal's width (``COLUMNS`` when set), 100 when it cannot be told; text is wrapped to it."""
    import shutil

    return max(shutil.get_terminal_size((100, 24)).columns, 40)


@app.command()
def explain(rule_id: str = typer.Argument(..., help="Rule id (DATA001) or name (dataloader-wait).")) -> None:
    """A rule's documentation: what it detects, why it costs time, detection, fix with code, false alarms."""
    from mlprof.rules.catalogue import get_entry

    rule = get_entry(rule_id)
    doc = rule.doc
    counter = rule.source == "counters"
    source = "GPU counters" if counter else "trace"
    if counter and rule.category == "gpu_utilisation":
        speedup = (
            "Expected speedup = recorded time / (recorded time - the idle time this rule measures in the counters)."
        )
    elif counter:
        speedup = "Expected speedup = 1.0: it costs no measured time; the severity says how urgent it is."
    elif rule.scope == "job":
        speedup = (
            "Attribution estimate = step / (step - time lost per step), step = the mean step over ranks; a job-level "
            "rule: its time lost is measured across ranks (see detection), not from one rank's causes. When the "
            "ranks are replayed together (JSON whatif.job), the expected speedup is that replay's (What-if replay "
            "below) and the estimate stays in evidence.attribution_speedup."
        )
    else:
        speedup = (
            "Expected speedup = step / (step - time lost per step); the time lost is the trace's own measurement "
            "of the causes this rule owns: "
            + (", ".join(rule.claims) or "none (the attribution claims no time for it: see What-if replay)")
            + "."
        )
    parts = [
        f"{rule.id} {rule.name}  [category: {rule.category}]",
        "",
        "What it detects",
        _indent(doc.what),
        "",
        "Why it costs time",
        _indent(doc.why),
        "",
        f"How it is detected in the {source}",
        _indent(doc.detection),
        "",
        "Fix",
        _indent(doc.fix),
        "",
        "When it is a false alarm",
        _indent(doc.false_alarms),
        "",
        "Thresholds (override in [tool.mlprof.rules." + rule.id + "])",
        *_option_lines(rule),
        "",
        speedup,
        *_whatif_doc(rule.whatif, bool(rule.claims) or counter or rule.scope == "job"),
    ]
    sys.stdout.write("\n".join(_wrap_line(line) for line in "\n".join(parts).split("\n")) + "\n")


def _option_lines(rule: Any) -> list[str]:
    """``name = default  (unit, lo..hi): meaning`` for each threshold."""
    lines = []
    for doc in rule.options():
        kind = "whole number; " if doc.kind == "integer" else ""
        accepted = doc.unit if doc.kind == "flag" else f"{kind}{doc.unit}; {doc.lo:g}..{doc.hi:g}"
        lines.append(f"  {doc.name} = {doc.show(doc.default)}  ({accepted}): {doc.meaning}")
    return lines or ["  none"]


def _whatif_doc(fix: str | None, claims: bool = True) -> list[str]:
    """The rule's fix as the replay applies it (mlprof.whatif.fixes), when it has one."""
    if fix is None:
        text = (
            "No graph edit: the expected speedup is the attribution estimate."
            if claims
            else "No graph edit and no time claimed: the expected speedup is always 1.0 (the detection text says why)."
        )
        return ["", "What-if replay", _indent(text)]
    return [
        "",
        "What-if replay (the expected speedup is replay(recorded) / replay(with this edit))",
        _indent(fix),
    ]


def _indent(text: str) -> str:
    import textwrap

    out = []
    for block in text.split("\n\n"):
        if block.startswith("    "):
            out.append("\n".join("  " + line for line in block.splitlines()))
        else:
            width = min(96, _terminal_columns() - 1)
            out.append(textwrap.fill(block, width=width, initial_indent="  ", subsequent_indent="  "))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Runs the app and turns errors into one line and an exit code (the process's entry is :mod:`mlprof.__main__`).

    The command is invoked without click's own ``main``, which turned a closed pipe into
    exit 1 (the gate code) and Ctrl-C into a blank line before ours.
    """
    from mlprof.commands._run import raise_on_closed_pipe_in_rich, run_command

    raise_on_closed_pipe_in_rich()
    args = list(sys.argv[1:] if argv is None else argv)

    def invoke() -> object:
        command = typer.main.get_command(app)
        with command.make_context("mlprof", args) as ctx:
            return command.invoke(ctx)  # a typer.Exit gives its code (a tripped gate exits 1)

    return run_command(invoke)


def run() -> None:
    """The ``mlprof`` console script of installs made before it moved to :func:`mlprof.__main__.run`
    (which reads a small trace ahead and skips the exit's garbage collection)."""
    raise SystemExit(main())
