"""``mlprof annotate TRACE -o OUT``: a copy of the trace with the findings drawn on it."""

from __future__ import annotations

from pathlib import Path

import typer

from mlprof.commands._files import make_folder, refuse_to_overwrite
from mlprof.untrusted import plain


def register(app: typer.Typer) -> None:
    app.command("annotate")(annotate)


def annotate(
    trace: Path = typer.Argument(..., help="Kineto/Chrome JSON trace (.json, .json.gz), or a folder of rank traces."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="The annotated copy (.json or .json.gz); a folder when TRACE is a folder."
    ),
    steps: str | None = typer.Option(None, "--steps", help="Steps to analyse: 16, 16-18, 17-."),
    step_marker: str | None = typer.Option(None, "--step-marker", help="Regex for host ranges that mark steps."),
    config: Path | None = typer.Option(
        None, "--config", help="Thresholds file (mlprof.toml, or pyproject.toml with tool.mlprof)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite annotated copies that already exist."),
) -> None:
    """Copy of a trace with the findings on their time ranges, for Perfetto; the original is never modified."""
    from mlprof.annotate.job import rank_findings, straggler_marks
    from mlprof.annotate.writer import annotate_file
    from mlprof.api import analyze
    from mlprof.errors import BadInputError, UsageError
    from mlprof.rules.config import load_config

    rule_config = load_config(config)
    if trace.is_dir() and output.is_dir():  # each rank's copy goes into the folder under its own name
        from mlprof.trace.loader import job_files

        for source in job_files(trace):
            refuse_to_overwrite(output / source.name, [trace], force=force)
    else:
        refuse_to_overwrite(output, [trace], force=force)
    # The findings are the ones `mlprof analyze` reports for the same input (run-folder counters
    # included); the traces stay in memory because the annotations are drawn on their events.
    analysis = analyze(trace, steps=steps, step_marker=step_marker, config=rule_config, keep_traces=True).analysis
    if any(ra.trace.meta.format == "nsys" for ra in analysis.ranks):
        raise BadInputError(f"{trace}: an Nsight Systems export; annotate writes copies of Chrome/Kineto JSON traces")
    if trace.is_dir():
        if output.exists() and not output.is_dir():
            raise UsageError(f"-o {output}: TRACE is a folder, so the output must be a folder too")
        make_folder(output)
        _copy_side_files(trace, output)
    marks = straggler_marks(analysis)
    for ra in analysis.ranks:
        source = Path(ra.trace.meta.path)
        findings = analysis.findings if len(analysis.ranks) == 1 else rank_findings(analysis, ra.rank, ra.findings)
        target = output / source.name if trace.is_dir() else output
        result = annotate_file(source, target, findings, ra.trace, marks.get(ra.rank))
        print(
            plain(
                f"{result.output}: {result.findings} finding(s), {result.events_added} events added "
                f"({result.flows} flow arrows to kernels)"
            )
        )
        for note in result.notes:
            print(plain(f"  note: {note}"))


def _copy_side_files(source: Path, output: Path) -> None:
    """An mlprof.profile run folder's meta.json and counters go along, so the copy is a run folder too."""
    import shutil

    from mlprof.errors import MlprofError
    from mlprof.trace.loader import RUN_FOLDER_SIDE_FILES

    for side in sorted(source.iterdir()):
        if side.is_file() and RUN_FOLDER_SIDE_FILES.match(side.name):
            try:
                shutil.copy2(side, output / side.name)
            except OSError as exc:
                raise MlprofError(f"{output / side.name}: cannot write ({exc.strerror})") from None
