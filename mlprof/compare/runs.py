"""One run as a comparison reads it: the JSON report's steady steps, findings and names.

``mlprof compare`` (two analyses computed now) and the dashboard's Compare page (two
runs read back from the store) both build a :class:`RunSummary` and hand two of them to
:func:`mlprof.compare.diff.compare_runs`, so both show the same figures by the same
definitions. Everything here comes from the ``mlprof analyze --format json`` report
(``steps``: the steady steps with their breakdown categories; ``steady_state``: the
steps set aside; ``findings``) plus, optionally, the per-name kernel/op table
(:mod:`mlprof.compare.names`), which the store keeps alongside the report.

A report written before steady state existed (schema 1.3 or older, e.g. an old run
in the store) lists every step; the same duration rule
(:func:`mlprof.analyzers.steady_state.classify_durations`) is then applied to its step
times here, without the one-off start-up signals only the trace has, and a note says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.analyzers.steady_state import classify_durations
from mlprof.compare.names import analysis_names
from mlprof.results.findings import brief_fields
from mlprof.results.schema import to_json_dict

if TYPE_CHECKING:
    from mlprof.analysis import Analysis

NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class FindingView:
    """A finding as the JSON report holds it (the fields a comparison reads)."""

    rule: str
    name: str
    category: str
    severity: str
    title: str
    expected_speedup: float
    time_lost_ms: float
    step_ms: float
    confidence: str
    claimed_ms: dict[str, float]
    evidence: dict[str, Any]
    """What the rule measured (a rule's merge key reads it: MEM001 is matched per device)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FindingView:
        evidence = d.get("evidence") or {}
        return cls(
            rule=str(d["rule"]),
            name=str(d.get("name", "")),
            category=str(d.get("category", "")),
            severity=str(d.get("severity", "")),
            title=str(d.get("title", "")),
            expected_speedup=float(d.get("expected_speedup") or 1.0),
            time_lost_ms=float(d.get("time_lost_ms_per_step") or 0.0),
            step_ms=float(d.get("step_ms") or 0.0),
            confidence=str(d.get("confidence", "")),
            claimed_ms={str(k): float(v) for k, v in (d.get("claimed_ms_per_step") or {}).items()},
            evidence=evidence if isinstance(evidence, dict) else {},
        )

    def brief(self) -> dict[str, Any]:
        return brief_fields(
            self.rule,
            self.name,
            self.category,
            self.severity,
            self.title,
            self.expected_speedup,
            self.time_lost_ms,
        )


@dataclass
class RunSummary:
    """What a comparison needs of one run."""

    path: str
    format: str
    devices: list[str]
    ranks: list[int]
    step_source: str
    step_filter: str | None
    steps: pd.DataFrame
    """The steady steps (job view): ``step``, ``dur`` and one column per category, ns."""
    set_aside: list[dict[str, Any]]
    """Steps left out as warm-up/outlier/partial: rank, step, dur_ms, reason, detail."""
    findings: list[FindingView]
    names: pd.DataFrame | None = None
    """Per-name table (kind, klass, name, count, ns per step), when known."""
    plan: list[tuple[str, float]] = field(default_factory=list)
    """BASE's plan: rule and cumulative speedup, in order."""
    notes: list[str] = field(default_factory=list)
    stepless: bool = False
    """The run has no steps: its whole analysed window is one pseudo-step."""

    @classmethod
    def from_report(
        cls, report: dict[str, Any], names: pd.DataFrame | None = None, label: str | None = None
    ) -> RunSummary:
        """From an ``mlprof analyze --format json`` report (a dict, as stored or written)."""
        tr = report.get("trace") or {}
        notes: list[str] = []
        steps = _steps_frame(report.get("steps") or [])
        stepless = False
        if len(steps) == 0:
            steps = _whole_window(report.get("breakdown") or {})
            stepless = len(steps) > 0
        steady = report.get("steady_state")
        set_aside: list[dict[str, Any]] = []
        if steady is not None:
            for r in steady.get("ranks", []):
                set_aside.extend({"rank": r.get("rank"), **s} for s in r.get("set_aside", []))
        elif len(steps) >= 3 and not tr.get("step_filter") and not stepless:
            reasons = classify_durations(steps["dur"].to_numpy(np.float64))
            for (_, row), reason in zip(steps.iterrows(), reasons, strict=True):
                if reason is not None:
                    set_aside.append(
                        {
                            "rank": None,
                            "step": int(row["step"]),
                            "dur_ms": float(row["dur"]) / NS_PER_MS,
                            "reason": reason,
                            "detail": "set aside by compare (step times only: the report predates steady state)",
                        }
                    )
            if any(r is not None for r in reasons):
                steps = steps[[r is None for r in reasons]].reset_index(drop=True)
                notes.append(
                    f"{label or 'a run'}'s report predates steady state: warm-up/outlier steps were set aside "
                    "by compare from the step times alone"
                )
        devices = sorted({str(d.get("name")) for d in tr.get("devices") or [] if d.get("name")})
        return cls(
            path=str(tr.get("path", label or "")),
            format=str(tr.get("format", "")),
            devices=devices,
            ranks=[int(r) for r in tr.get("ranks") or []],
            step_source=str(tr.get("step_source", "none")),
            step_filter=tr.get("step_filter"),
            steps=steps,
            set_aside=set_aside,
            findings=[FindingView.from_dict(f) for f in report.get("findings") or []],
            names=names,
            plan=[(str(p["rule"]), float(p.get("cumulative_speedup") or 1.0)) for p in report.get("plan") or []],
            notes=notes,
            stepless=stepless,
        )

    @classmethod
    def from_analysis(cls, analysis: Analysis) -> RunSummary:
        """From an analysis computed in this process: its JSON report plus names measured on its traces."""

        return cls.from_report(to_json_dict(analysis), analysis_names(analysis))

    # -- figures ---------------------------------------------------------------------------
    @property
    def step_ms(self) -> np.ndarray:
        return self.steps["dur"].to_numpy(np.float64) / NS_PER_MS

    def category_ms(self) -> dict[str, float]:
        """Mean ms per steady step of each category (they sum to the mean steady step)."""
        if len(self.steps) == 0:
            return dict.fromkeys(CATEGORIES, 0.0)
        return {c: float(self.steps[c].to_numpy(np.float64).mean()) / NS_PER_MS for c in CATEGORIES}


def _steps_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    cols = ["step", "dur", *CATEGORIES]
    if not records:
        return pd.DataFrame({c: np.empty(0, np.int64) for c in cols})
    return pd.DataFrame(
        {
            "step": np.array([int(r["step"]) for r in records], np.int64),
            "dur": np.array([round(float(r["dur_ms"]) * NS_PER_MS) for r in records], np.int64),
            **{c: np.array([round(float(r[f"{c}_ms"]) * NS_PER_MS) for r in records], np.int64) for c in CATEGORIES},
        }
    )


def _whole_window(breakdown: dict[str, Any]) -> pd.DataFrame:
    """A stepless run: its analysed window as one step, from the breakdown totals."""
    cats = breakdown.get("categories") or {}
    if not cats:
        return _steps_frame([])
    record = {"step": -1, "dur_ms": float(breakdown.get("wall_ms") or 0.0)}
    record.update({f"{c}_ms": float((cats.get(c) or {}).get("ms") or 0.0) for c in CATEGORIES})
    return _steps_frame([record]) if record["dur_ms"] > 0 else _steps_frame([])
