"""What a rule says about itself, without running: documentation and thresholds.

Kept free of pandas and numpy so that ``mlprof rules``, ``mlprof explain`` and the
config loader can read it (through :mod:`mlprof.rules.catalogue`) without importing
the analysis stack; :mod:`mlprof.rules.base` re-exports these names for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuleDoc:
    """Linter-style documentation, printed by ``mlprof explain ID``."""

    what: str
    why: str
    detection: str
    fix: str
    """Prose plus a short code example (indented four spaces)."""
    false_alarms: str


@dataclass(frozen=True)
class Option:
    """One threshold of a rule: what ``[tool.mlprof.rules.ID]`` may set, printed by ``mlprof explain``."""

    name: str
    unit: str
    lo: float
    """Smallest accepted value (the config refuses less)."""
    hi: float
    """Largest accepted value."""
    meaning: str


COMMON_OPTIONS: dict[str, Option] = {
    "min_share": Option(
        "min_share",
        "share of the step (0-1)",
        0.0,
        1.0,
        "report only when the time the fix saves is at least this share of the step (or of the recording)",
    ),
    "low_util_pct": Option(
        "low_util_pct", "% GPU utilisation", 0.0, 100.0, "a sample under this utilisation counts as an idle GPU"
    ),
    "min_r2": Option(
        "min_r2", "R^2 (0-1)", 0.0, 1.0, "the memory trend must fit a straight line at least this well (R^2)"
    ),
    "min_late_ratio": Option(
        "min_late_ratio",
        "ratio (0-1)",
        0.0,
        1.0,
        "the growth over the last half must be at least this share of the overall growth (not levelling off)",
    ),
}
"""Options several rules share, documented once (a rule's ``option_docs`` may say more)."""
