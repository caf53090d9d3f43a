"""CI gates: turn a report into a pass/fail exit code.

* ``--fail-on RULE_OR_CATEGORY[>=SPEEDUP]`` trips when a finding of that rule id
  (``DATA001``) or finding category (``data_starvation``; ``any`` for every rule) is
  reported with an expected speedup of at least ``SPEEDUP`` (default: any finding
  that is reported at all).
* ``--max-regression 5%`` (compare) trips when NEW's mean step time is more than 5%
  above BASE's.
* ``--budget CATEGORY=VALUE`` trips when the (NEW) run spends more than ``VALUE`` per
  step in a step breakdown category (``comm_exposed=2ms``, ``idle_data=500us``,
  ``idle_sync=5%`` of the step) or in the whole step (``step=120ms``).

The same thresholds can live in ``[tool.mlprof.gates]`` (``fail_on``, ``max_regression``,
``budgets``); command-line values are added to them (a budget for the same category,
or ``--max-regression``, replaces the file's). Malformed expressions are usage errors
(exit 2); a tripped gate exits 1 with a short markdown report.
"""

from __future__ import annotations

from mlprof.gates.evaluate import GateResult, check_analysis, check_comparison, gates_markdown
from mlprof.gates.spec import Budget, FindingGate, GateConfig, parse_budget, parse_fail_on, parse_max_regression

__all__ = [
    "Budget",
    "FindingGate",
    "GateConfig",
    "GateResult",
    "check_analysis",
    "check_comparison",
    "gates_markdown",
    "parse_budget",
    "parse_fail_on",
    "parse_max_regression",
]
