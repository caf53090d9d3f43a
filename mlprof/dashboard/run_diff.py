"""Two stored runs compared with ``mlprof compare``'s own code, from what the store holds.

No trace is re-read and nothing is measured here: each run's stored JSON report
(its steady steps, set-aside steps and findings) and its per-name kernel/op table
become a :class:`mlprof.compare.RunSummary`, and :func:`mlprof.compare.compare_runs`
compares them exactly as the CLI does (``docs/compare.md`` defines every figure:
achieved = the change of the median steady step, the run-to-run band, the categories
of the mean steady step, predicted vs achieved per finding). This module only shapes
the comparison into the tables the Compare page draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlprof.compare import Comparison, RunSummary, compare_runs
from mlprof.compare.names import stored_names

NS_PER_MS = 1_000_000


@dataclass
class RunDiff:
    comparison: Comparison
    categories: pd.DataFrame
    """category, a_ms, b_ms, delta_ms (mean per steady step)."""
    ops: pd.DataFrame
    """kind, name, a_ms, b_ms, delta_ms (per step), largest change first."""
    per_rule: pd.DataFrame
    """rule, status, title, a_lost_ms, b_lost_ms, predicted_speedup, achieved_speedup, acted_on; one row per rule."""

    @property
    def step_ms_a(self) -> float:
        """Median steady step of A."""
        return self.comparison.step.base_ms

    @property
    def step_ms_b(self) -> float:
        return self.comparison.step.new_ms

    @property
    def achieved_speedup(self) -> float:
        return self.comparison.step.speedup

    @property
    def predicted_speedup(self) -> float | None:
        """A's prediction for the findings B acted on, together (None when none was)."""
        return self.comparison.predicted_together


def run_summary(run: dict[str, Any]) -> RunSummary:
    """A stored run (as :func:`mlprof.dashboard.data.read_run` returns it) as compare reads a run."""
    report = run.get("report") or {}
    windows = int(run.get("steps_analysed") or 0)
    ops = run.get("ops")
    names = stored_names(ops, windows) if isinstance(ops, pd.DataFrame) else None
    return RunSummary.from_report(report, names, label=str(run.get("name") or run.get("id") or ""))


def diff_runs(a: dict[str, Any], b: dict[str, Any], top_ops: int = 15) -> RunDiff:
    """Compare run ``a`` (before) with run ``b`` (after); both as returned by ``read_run``."""
    c = compare_runs(run_summary(a), run_summary(b))
    categories = pd.DataFrame(
        {
            "category": [x.category for x in c.categories],
            "a_ms": [x.base_ms for x in c.categories],
            "b_ms": [x.new_ms for x in c.categories],
            "delta_ms": [x.change_ms for x in c.categories],
        }
    )
    names = c.names.table
    ops = pd.DataFrame(
        {
            "kind": names["kind"].astype(str),
            "name": names["name"].astype(str),
            "a_ms": names["base_ns"] / NS_PER_MS,
            "b_ms": names["new_ns"] / NS_PER_MS,
            "delta_ms": names["change_ns"] / NS_PER_MS,
        }
    ).head(top_ops)
    predicted = {p.rule: p for p in c.predicted}
    rows = []
    for pair in [*c.findings.resolved, *c.findings.changed, *c.findings.unchanged, *c.findings.new]:
        p = predicted.get(pair.rule)
        rows.append(
            {
                "rule": pair.rule,
                "status": pair.status,
                "title": pair.finding.title,
                "a_lost_ms": pair.base_ms,
                "b_lost_ms": pair.new_ms,
                "predicted_speedup": None if pair.base is None else pair.base.expected_speedup,
                "achieved_speedup": c.step.speedup if p is not None and p.acted_on else None,
                "acted_on": bool(p is not None and p.acted_on),
            }
        )
    columns = [
        "rule",
        "status",
        "title",
        "a_lost_ms",
        "b_lost_ms",
        "predicted_speedup",
        "achieved_speedup",
        "acted_on",
    ]
    return RunDiff(comparison=c, categories=categories, ops=ops, per_rule=pd.DataFrame(rows, columns=columns))
