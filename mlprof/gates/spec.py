"""Gate expressions as typed values; every malformed one is a :class:`UsageError` naming it."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from mlprof.analyzers.attribution import CATEGORIES as STEP_CATEGORIES
from mlprof.errors import UsageError
from mlprof.rules.base import CATEGORIES as FINDING_CATEGORIES
from mlprof.rules.config import RuleConfig
from mlprof.rules.registry import BY_ID, RULES

_FAIL_ON = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_\-]*)\s*(?:>=\s*([0-9]*\.?[0-9]+)\s*x?)?\s*$")
_AMOUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|us|µs|s|%)\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*\+?([0-9]*\.?[0-9]+)\s*%?\s*$")
_UNIT_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
BUDGET_TARGETS: tuple[str, ...] = ("step", *STEP_CATEGORIES)
"""What a budget can limit: the whole step or one step breakdown category."""


class FindingGate(msgspec.Struct, frozen=True):
    """Trips when a reported finding matches ``target`` with expected speedup >= ``min_speedup``."""

    target: str
    """A rule id (upper case), a finding category, or ``any``."""
    min_speedup: float = 1.0
    text: str = ""

    def matches(self, rule: str, category: str, speedup: float) -> bool:
        hit = self.target == "any" or self.target == rule or self.target == category
        return hit and speedup >= self.min_speedup


class Budget(msgspec.Struct, frozen=True):
    """At most ``ms`` per step (or ``pct`` % of the step) in ``target``."""

    target: str
    ms: float | None = None
    pct: float | None = None
    text: str = ""


class GateConfig(msgspec.Struct):
    """The gates of a run: findings that fail it, the largest regression allowed, per-category budgets."""

    fail_on: list[FindingGate] = msgspec.field(default_factory=list)
    max_regression_pct: float | None = None
    budgets: dict[str, Budget] = msgspec.field(default_factory=dict)
    source: str | None = None

    @property
    def empty(self) -> bool:
        return not self.fail_on and self.max_regression_pct is None and not self.budgets

    def merged(self, fail_on: list[FindingGate], max_regression_pct: float | None, budgets: list[Budget]) -> GateConfig:
        """This (file) config with command-line gates added; the command line wins per budget target."""
        return GateConfig(
            fail_on=[*self.fail_on, *fail_on],
            max_regression_pct=self.max_regression_pct if max_regression_pct is None else max_regression_pct,
            budgets={**self.budgets, **{b.target: b for b in budgets}},
            source=self.source,
        )


def parse_fail_on(text: str, where: str = "--fail-on") -> FindingGate:
    """``DATA001``, ``data_starvation>=1.1``, ``any>=1.25``."""
    m = _FAIL_ON.match(text)
    if not m:
        raise UsageError(
            f"{where} {text!r}: expected RULE_OR_CATEGORY[>=SPEEDUP], e.g. DATA001 or comm_not_overlapped>=1.1"
        )
    name, speedup = m.group(1), m.group(2)
    if name.upper() in BY_ID:
        target = name.upper()
    elif name.lower() in FINDING_CATEGORIES or name.lower() == "any" or name.lower() in _counter_categories():
        target = name.lower()
    else:
        raise UsageError(
            f"{where} {text!r}: {name!r} is neither a rule id nor a finding category "
            f"(categories: {', '.join(FINDING_CATEGORIES)}, any; rules: 'mlprof rules')"
        )
    value = 1.0 if speedup is None else float(speedup)
    if value < 1.0:
        raise UsageError(f"{where} {text!r}: the speedup threshold must be >= 1.0 (1.1 means 10% faster)")
    return FindingGate(target=target, min_speedup=value, text=text.strip())


def _counter_categories() -> set[str]:
    return {r.category for r in RULES}


def parse_max_regression(text: str | float, where: str = "--max-regression") -> float:
    """``5%`` or ``5`` (percent of the base step time) -> 5.0."""
    m = _PERCENT.match(str(text))
    if not m:
        raise UsageError(f"{where} {text!r}: expected a percentage such as 5%")
    return float(m.group(1))


def parse_budget(text: str, where: str = "--budget") -> Budget:
    """``comm_exposed=2ms``, ``idle_data=500us``, ``idle_sync=5%``, ``step=120ms``."""
    if "=" not in text:
        raise UsageError(f"{where} {text!r}: expected CATEGORY=VALUE, e.g. comm_exposed=2ms or idle_data=5%")
    target, value = (part.strip() for part in text.split("=", 1))
    return _budget(target, value, where, text)


def _budget(target: str, value: str, where: str, text: str) -> Budget:
    if target not in BUDGET_TARGETS:
        raise UsageError(f"{where} {text!r}: unknown category {target!r} (one of: {', '.join(BUDGET_TARGETS)})")
    m = _AMOUNT.match(value)
    if not m:
        raise UsageError(f"{where} {text!r}: expected an amount per step with a unit: 2ms, 500us, 0.1s or 5%")
    amount, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        if target == "step":
            raise UsageError(f"{where} {text!r}: a step budget needs a time (step=120ms), not a share of itself")
        return Budget(target=target, pct=amount, text=text.strip())
    return Budget(target=target, ms=amount * _UNIT_MS[unit], text=text.strip())


GATE_KEYS = {"fail_on", "max_regression", "budgets"}


def parse_gate_table(table: Any, source: str, prefix: str) -> GateConfig:
    """``[tool.mlprof.gates]``: ``fail_on = ["DATA001>=1.1"]``, ``max_regression = "5%"``,
    ``budgets = {comm_exposed = "2ms"}``."""
    if not isinstance(table, dict):
        raise UsageError(f"{source}: '{prefix}' must be a table")
    for key in table:
        if key not in GATE_KEYS:
            raise UsageError(f"{source}: unknown key '{prefix}.{key}' (known: {', '.join(sorted(GATE_KEYS))})")
    cfg = GateConfig(source=source)
    fail_on = table.get("fail_on", [])
    if isinstance(fail_on, str):
        fail_on = [fail_on]
    if not isinstance(fail_on, list) or not all(isinstance(x, str) for x in fail_on):
        raise UsageError(f"{source}: '{prefix}.fail_on' must be a list of RULE_OR_CATEGORY[>=SPEEDUP] strings")
    cfg.fail_on = [parse_fail_on(x, f"{source}: {prefix}.fail_on") for x in fail_on]
    if "max_regression" in table:
        value = table["max_regression"]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise UsageError(f"{source}: '{prefix}.max_regression' must be a percentage such as \"5%\"")
        cfg.max_regression_pct = parse_max_regression(value, f"{source}: {prefix}.max_regression")
    budgets = table.get("budgets", {})
    if not isinstance(budgets, dict):
        raise UsageError(f"{source}: '{prefix}.budgets' must be a table such as {{comm_exposed = \"2ms\"}}")
    for target, value in budgets.items():
        if not isinstance(value, str):
            raise UsageError(f'{source}: \'{prefix}.budgets.{target}\' must be a string such as "2ms" or "5%"')
        cfg.budgets[target] = _budget(target, value, f"{source}: {prefix}.budgets", f"{target}={value}")
    return cfg


def gates_from_config(config: RuleConfig) -> GateConfig:
    """The gates of a thresholds file (``[tool.mlprof.gates]``), parsed; empty when it has none."""
    if config.gates_table is None:
        return GateConfig()
    return parse_gate_table(config.gates_table, config.source or "config", config.gates_key)
