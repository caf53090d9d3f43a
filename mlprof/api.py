"""``mlprof.analyze``: the one entry point from an input to a :class:`~mlprof.results.Report`.

Every door calls it: ``mlprof analyze``, ``report``, ``annotate``, ``compare``, the run
store's ``ingest``, the collectors' end-of-run summary and notebooks. So the same input
gives the same answer whichever way it comes in. It resolves the input (a trace file,
a directory or glob of rank traces, an fsspec URL, an ``mlprof.profile`` run folder with
its counters, or a GPU counters file alone), picks the path that reads it (in this
process, per-rank tasks on an engine, or step by step with ``low_memory``) and returns
the report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlprof.errors import BadInputError, UsageError
from mlprof.results import Report

if TYPE_CHECKING:
    import pandas as pd

    from mlprof.analysis import Analysis
    from mlprof.rules.config import RuleConfig

CounterSpec = str | Path | Sequence[str | Path] | None
"""``"auto"`` (a run folder's own counters), None (no counters), or counters files."""

ProgressFn = Callable[[int, int], None]


def analyze(
    source: str | Path | Sequence[str | Path],
    *,
    steps: str | None = None,
    step_marker: str | None = None,
    config: RuleConfig | str | Path | None = None,
    counters: CounterSpec = "auto",
    engine: str = "local",
    jobs: int | None = None,
    low_memory: bool = False,
    rank: int | None = None,
    scheduler: str | None = None,
    keep_traces: bool = False,
    on_progress: ProgressFn | None = None,
    on_rank_done: Callable[[int, int], None] | None = None,
) -> Report:
    """Analyse a trace, a job of rank traces or a GPU counters file; the findings, plan and tables.

    * ``source``: a Kineto/Chrome JSON trace (``.json``/``.json.gz``), an nsys ``.sqlite``
      export, a directory/glob/list/fsspec URL of per-rank traces, an ``mlprof.profile``
      run folder, or a counters file (nvidia-smi CSV, dcgmi dmon, dcgm-exporter) alone.
    * ``steps``: which steps to analyse (``"16"``, ``"16-18"``, ``"16,18"``, ``"17-"``).
    * ``step_marker``: a regex for host ranges that start each step, when there are no ``ProfilerStep``.
    * ``config``: a :class:`~mlprof.rules.config.RuleConfig`, or a thresholds file; None finds
      ``mlprof.toml``/``pyproject.toml`` from the current directory up, as the CLI does.
    * ``counters``: ``"auto"`` uses a run folder's ``counters*`` files (files without a
      sample are skipped with a note); a path or list of paths adds those (each must hold
      samples); None uses none.
    * ``engine``/``jobs``/``scheduler``: where the per-rank work of a job runs (``local``
      processes or ``dask``) and how many processes read (``jobs=1``: this process only);
      the answer does not depend on them.
    * ``low_memory``: one trace larger than memory, analysed step window by step window.
    * ``rank``: analyse only this rank of a job.
    * ``keep_traces``: keep every rank's full trace on ``report.analysis`` (read in this
      process), for callers that draw on the events (annotate, the run store).
    """
    from mlprof.engine.job import check_engine_options

    check_engine_options(jobs, engine, scheduler)
    rule_config = _rule_config(config)
    if step_marker is not None:
        try:
            re.compile(step_marker)
        except re.error as exc:
            raise UsageError(f"--step-marker: not a valid regex ({exc})") from None
    explicit = _explicit_counters(counters)

    single = source if isinstance(source, (str, Path)) else None
    if single is not None and _is_file(Path(single)):
        from mlprof.counters import sniff_counters

        if sniff_counters(Path(single)) is not None:
            return _counters_alone(Path(single), explicit or [], rule_config, rank, steps, step_marker)

    if low_memory:
        return _low_memory(source, rule_config, steps, step_marker, explicit, rank, jobs, on_progress)

    from mlprof.engine.sources import is_job

    counter_table, counter_paths, counter_notes = _counters_for(source, counters, explicit)
    use_engine = single is None or (rank is None and not keep_traces and is_job(str(single)))
    if use_engine:
        from mlprof.engine import analyze_paths

        label_source: str | list[str] = str(single) if single is not None else [str(s) for s in source]  # type: ignore[union-attr]
        analysis = analyze_paths(
            label_source,
            steps_spec=steps,
            step_marker=step_marker,
            config=rule_config,
            jobs=jobs,
            engine=engine,
            scheduler=scheduler,
            on_rank_done=on_rank_done,
        )
        if counter_table is not None:
            from mlprof.analysis import attach_counters

            attach_counters(analysis, counter_table, counter_paths, rule_config)
    else:
        from mlprof.analysis import analyze_job
        from mlprof.trace.loader import load_job

        assert single is not None
        traces = load_job(single, on_progress=on_progress, step_marker=step_marker, workers=jobs)
        if rank is not None:
            traces = [t for t in traces if t.meta.rank == rank]
            if not traces:
                raise UsageError(f"--rank {rank}: no such rank in {single}")
        analysis = analyze_job(
            traces, str(single), steps, rule_config, counters=counter_table, counter_paths=counter_paths
        )
    _add_notes(analysis, counter_notes)
    return _report(analysis)


def _report(analysis: Any) -> Report:
    from mlprof.results.schema import build_report

    return build_report(analysis)


def _rule_config(config: RuleConfig | str | Path | None) -> RuleConfig:
    from mlprof.rules.config import RuleConfig, load_config

    if isinstance(config, RuleConfig):
        return config
    return load_config(Path(config) if config is not None else None)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False  # the trace loader reports unusable paths in its own words


def _explicit_counters(counters: CounterSpec) -> list[Path] | None:
    if counters is None or (isinstance(counters, str) and counters == "auto"):
        return None
    if isinstance(counters, (str, Path)):
        return [Path(counters)]
    return [Path(p) for p in counters]


def run_folder_counters(source: str | Path) -> list[Path]:
    """The counters files of an ``mlprof.profile`` run folder (``counters*``), by name.

    A later profiling cycle (``<run>/cycles/<K>``) uses its run folder's counters.
    """
    path = Path(source)
    try:
        if not path.is_dir():
            return []
        if path.parent.name == "cycles" and path.name.isdigit():
            path = path.parent.parent
        return sorted(p for p in path.glob("counters*") if p.is_file())
    except OSError:
        return []


def load_counters_files(paths: list[Path], *, skip_empty: bool = False) -> tuple[pd.DataFrame | None, list[str]]:
    """Counters files as one table (``attrs``: formats, time base, notes) and notes on files left out.

    A file without a readable sample is an error when named (``skip_empty=False``) and is
    left out with a note when found in a run folder.
    """
    from mlprof.counters import concat_counters, load_counters

    tables = []
    used: list[Path] = []
    skipped: list[str] = []
    for p in paths:
        table = load_counters(p)
        if len(table) == 0:
            if not skip_empty:
                raise BadInputError(
                    f"{p}: a {table.attrs.get('format', 'counters')} file without a single readable sample"
                )
            skipped.append(f"{p}: counters file without a single sample; not used")
            continue
        tables.append(table)
        used.append(p)
    if not tables:
        return None, skipped
    table = concat_counters(tables)
    bases = {str(t.attrs.get("time_base", "relative")) for t in tables}
    notes = [f"{p}: {n}" for p, t in zip(used, tables, strict=True) for n in t.attrs.get("notes", [])]
    if len(tables) > 1:
        notes.append(f"{len(tables)} counters files merged; GPUs with the same index in different files are one GPU")
    table.attrs = {
        "time_base": bases.pop() if len(bases) == 1 else "mixed",
        "format": sorted({str(t.attrs.get("format")) for t in tables}),
        "notes": notes,
        "paths": [str(p) for p in used],
    }
    return table, skipped


def _counters_for(
    source: Any, counters: CounterSpec, explicit: list[Path] | None
) -> tuple[pd.DataFrame | None, list[str], list[str]]:
    """The counters table to join, the paths it came from, and notes on run-folder files left out."""
    if explicit is not None:
        table, notes = load_counters_files(explicit)
        return table, [str(p) for p in explicit], notes
    if counters is None or not isinstance(source, (str, Path)):
        return None, [], []
    found = run_folder_counters(source)
    if not found:
        return None, [], []
    table, notes = load_counters_files(found, skip_empty=True)
    return table, list(table.attrs["paths"]) if table is not None else [], notes


def _add_notes(analysis: Analysis, notes: list[str]) -> None:
    if notes and analysis.ranks:
        analysis.ranks[0].notes.extend(notes)


def _counters_alone(
    path: Path, more: list[Path], config: RuleConfig, rank: int | None, steps: str | None, step_marker: str | None
) -> Report:
    from mlprof.analysis import analyze_counters

    for flag, value in (("--rank", rank), ("--steps", steps), ("--step-marker", step_marker)):
        if value is not None:
            raise UsageError(f"{flag}: {path} is a counters file, which has no ranks or steps; pass a trace")
    paths = [path, *more]
    table, _ = load_counters_files(paths)
    assert table is not None
    return _report(analyze_counters(table, [str(p) for p in paths], config))


def _low_memory(
    source: Any,
    config: RuleConfig,
    steps: str | None,
    step_marker: str | None,
    explicit: list[Path] | None,
    rank: int | None,
    jobs: int | None,
    on_progress: ProgressFn | None,
) -> Report:
    from mlprof.engine.sources import is_job
    from mlprof.engine.windows import analyze_low_memory

    if (
        explicit is not None
        or rank is not None
        or step_marker is not None
        or not isinstance(source, (str, Path))
        or is_job(str(source))
    ):
        raise UsageError(
            "--low-memory analyses one trace file by its ProfilerStep ranges, without "
            "--counters, --rank or --step-marker"
        )
    return _report(analyze_low_memory(source, config=config, steps_spec=steps, jobs=jobs, on_progress=on_progress))
