"""How an expected speedup is written in text and markdown reports."""

from __future__ import annotations

from typing import Any


def speedup_text(finding: dict[str, Any]) -> str:
    """``1.30x``, or ``≤1.36x`` for a low-confidence finding.

    A low-confidence finding (HOST001: the GPU idles while the host runs code the profiler
    did not record) measures time the trace shows as lost but cannot say how much of it a
    fix removes, so its speedup is an upper bound, and reports say so. Such findings are
    also left out of the plan. JSON keeps the plain number beside ``confidence``.
    """
    bound = "≤" if finding.get("confidence") == "low" else ""
    return f"{bound}{finding['expected_speedup']:.2f}x"
