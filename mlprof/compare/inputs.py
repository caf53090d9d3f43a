"""What ``BASE``/``NEW`` may be on the command line, and turning one into an analysis."""

from __future__ import annotations

import re
from pathlib import Path

from mlprof.analysis import Analysis
from mlprof.errors import BadInputError, MlprofError, UsageError
from mlprof.rules.config import RuleConfig

RUN_ID = re.compile(r"^(?:run:)?(\d+)$")


def resolve_run(spec: str, role: str, store: str | None = None) -> Path:
    """A trace file or run folder path; ``12`` or ``run:12`` is run 12 of the run store.

    A stored run is compared from the files it was ingested from, and only if they are
    still there unchanged (the store keys each run on a hash of its inputs): comparing a
    run with files that changed since would put numbers under the wrong run's name.
    """
    path = Path(spec)
    try:
        if path.exists():
            return path
    except (OSError, ValueError):
        pass
    match = RUN_ID.match(spec.strip())
    if match:
        return _stored_run_path(int(match.group(1)), role, store)
    looks_like_path = spec == "-" or any(ch in spec for ch in "/\\.") or spec.endswith((".json", ".gz"))
    if looks_like_path:
        from mlprof.trace.path_errors import not_found

        raise UsageError(f"{role} {not_found(path)}")
    raise UsageError(
        f"{role} {spec!r}: not a file or folder, nor a run id of the run store (12 or run:12); "
        "give a trace file, an mlprof.profile run folder or a run id from `mlprof runs`"
    )


def _stored_run_path(run_id: int, role: str, store: str | None) -> Path:
    from sqlalchemy import select

    from mlprof.store.engine import open_engine, store_errors
    from mlprof.store.ingest import stored_run_key
    from mlprof.store.location import resolve_store
    from mlprof.store.schema import runs_t

    location = resolve_store(store)
    if location.sqlite_path is not None and not location.sqlite_path.is_file():
        raise UsageError(f"{role} run {run_id}: no run store at {location.display()} (see `mlprof ingest`)")
    with store_errors(location):
        engine = open_engine(location, read_only=True)
        try:
            with engine.connect() as conn:
                row = conn.execute(select(runs_t.c.source_path, runs_t.c.run_key).where(runs_t.c.id == run_id)).first()
        finally:
            engine.dispose()
    if row is None:
        raise UsageError(f"{role} run {run_id}: no such run in {location.display()} (see `mlprof runs`)")
    source, run_key = Path(row[0]), str(row[1])
    try:
        same = stored_run_key(source) == run_key
    except MlprofError:
        same = False
    if not same:
        raise BadInputError(
            f"{role} run {run_id}: it was ingested from {source}, which is gone or has changed since; "
            "compare the trace files themselves"
        )
    return source


def analyze_run(
    spec: str,
    role: str,
    steps: str | None,
    config: RuleConfig,
    step_marker: str | None = None,
    store: str | None = None,
) -> Analysis:
    from mlprof.api import analyze

    path = resolve_run(spec, role, store)
    # The same analysis as `mlprof analyze PATH` (run-folder counters included); the traces
    # stay in memory because the comparison reads kernels and ops by name from them.
    analysis: Analysis = analyze(path, steps=steps, step_marker=step_marker, config=config, keep_traces=True).analysis
    return analysis
