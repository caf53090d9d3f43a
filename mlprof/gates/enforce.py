"""The command-line end of the gates: gates from the config plus flags, and exit 1 when one trips."""

from __future__ import annotations

import sys
from typing import Any

from mlprof.gates.evaluate import check_analysis, gates_markdown
from mlprof.gates.spec import GateConfig, gates_from_config, parse_fail_on
from mlprof.rules.config import RuleConfig


def analysis_gates(config: RuleConfig, fail_on: list[str] | None) -> GateConfig:
    """``[tool.mlprof.gates]`` plus ``--fail-on`` flags (parsed now, so a malformed one exits 2 before reading)."""
    return gates_from_config(config).merged([parse_fail_on(x) for x in fail_on or []], None, [])


def enforce_gates(analysis: Any, gates: GateConfig, subject: str) -> None:
    """Write the gate report to stderr and exit 1 when a gate trips; do nothing without gates.

    ``max_regression`` needs two runs and is only checked by ``mlprof compare``.
    """
    if gates.empty:
        return
    results = check_analysis(analysis, gates)
    if results and not all(r.passed for r in results):
        sys.stdout.flush()
        sys.stderr.write(gates_markdown(results, f"`{subject}`"))
        import typer  # here: the fast path of ``mlprof analyze`` runs without typer until a gate trips

        raise typer.Exit(code=1)
