"""What ``BASE``/``NEW`` may be on the command line, and turning one into an analysis."""

from __future__ import annotations

from pathlib import Path

from mlprof.analysis import Analysis
from mlprof.errors import UsageError
from mlprof.rules.config import RuleConfig


def resolve_run(spec: str, role: str) -> Path:
    """A trace file or run folder path. Run ids of the run store are not resolved here yet."""
    path = Path(spec)
    try:
        if path.exists():
            return path
    except (OSError, ValueError):
        pass
    looks_like_path = any(ch in spec for ch in "/\\.") or spec.endswith((".json", ".gz"))
    if looks_like_path:
        raise UsageError(f"{role} {spec}: no such file or directory")
    raise UsageError(
        f"{role} {spec!r}: not a file or folder; comparing run ids from the run store is not supported yet, "
        "give a trace file or an mlprof.profile run folder"
    )


def analyze_run(
    spec: str, role: str, steps: str | None, config: RuleConfig, step_marker: str | None = None
) -> Analysis:
    from mlprof.analysis import analyze_job
    from mlprof.trace.loader import load_job

    path = resolve_run(spec, role)
    traces = load_job(path, step_marker=step_marker)
    return analyze_job(traces, str(path), steps, config)
