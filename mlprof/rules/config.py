"""Team thresholds: ``[tool.mlprof]`` in ``pyproject.toml`` or a ``mlprof.toml``.

::

    [tool.mlprof]
    min_speedup = 1.02          # drop findings below this expected speedup
    disable = ["HOST001"]       # rules not to run

    [tool.mlprof.rules.DATA001]
    min_share = 0.05            # a threshold from `mlprof explain DATA001`

    [tool.mlprof.gates]         # CI gates, see mlprof.gates
    fail_on = ["DATA001>=1.1"]
    max_regression = "5%"
    budgets = {comm_exposed = "2ms"}

In ``mlprof.toml`` the same keys sit at the top level. A key mlprof does not know is
an error that names it: a misspelt threshold silently ignored is worse than none.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlprof.errors import UsageError
from mlprof.rules.catalogue import BY_ID

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = {"min_speedup", "disable", "rules", "gates"}
DEFAULT_MIN_SPEEDUP = 1.01


@dataclass
class RuleConfig:
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    """Findings with a smaller expected speedup are not reported (memory leaks always are)."""
    disabled: set[str] = field(default_factory=set)
    overrides: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str | None = None
    gates_table: Any = None
    """``[tool.mlprof.gates]`` as read, or None; :func:`mlprof.gates.spec.gates_from_config` parses it
    (gates sit above the rules: the rules layer never imports them)."""
    gates_key: str = "gates"
    """The table's key as the user wrote it (``tool.mlprof.gates`` or ``gates``), for error messages."""

    def thresholds(self, rule_id: str) -> dict[str, float]:
        return {**BY_ID[rule_id].defaults, **self.overrides.get(rule_id, {})}


def find_config(start: Path) -> Path | None:
    """The nearest ``mlprof.toml``, or ``pyproject.toml`` with a ``[tool.mlprof]`` table, from ``start`` up.

    The search stops at the first ``pyproject.toml`` (the project root) like other linters do.
    """
    for folder in [start, *start.parents]:
        own = folder / "mlprof.toml"
        if own.is_file():
            return own
        project = folder / "pyproject.toml"
        if project.is_file():
            try:
                data = tomllib.loads(project.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                return None
            return project if "mlprof" in data.get("tool", {}) else None
    return None


def load_config(path: Path | None = None, start: Path | None = None) -> RuleConfig:
    """Read the config file (given, or found from ``start``); defaults when there is none."""
    if path is None:
        path = find_config((start or Path.cwd()).resolve())
        if path is None:
            return RuleConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read config ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("mlprof", {})
        prefix = "tool.mlprof."
    else:
        table = data.get("tool", {}).get("mlprof", data) if set(data) == {"tool"} else data
        prefix = ""
    return parse_config(table, str(path), prefix)


def parse_config(table: dict[str, Any], source: str, prefix: str = "") -> RuleConfig:
    cfg = RuleConfig(source=source)
    for key in table:
        if key not in TOP_KEYS:
            raise UsageError(f"{source}: unknown key '{prefix}{key}' (known: {', '.join(sorted(TOP_KEYS))})")
    if "min_speedup" in table:
        cfg.min_speedup = _number(table["min_speedup"], f"{prefix}min_speedup", source)
        if cfg.min_speedup < 1.0:
            raise UsageError(f"{source}: '{prefix}min_speedup' must be >= 1.0")
    disable = table.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(x, str) for x in disable):
        raise UsageError(f"{source}: '{prefix}disable' must be a list of rule ids")
    for rule_id in disable:
        if rule_id.upper() not in BY_ID:
            raise UsageError(f"{source}: '{prefix}disable' names unknown rule '{rule_id}'")
        cfg.disabled.add(rule_id.upper())
    if "gates" in table:
        cfg.gates_table, cfg.gates_key = table["gates"], f"{prefix}gates"
    rules = table.get("rules", {})
    if not isinstance(rules, dict):
        raise UsageError(f"{source}: '{prefix}rules' must be a table of rule ids")
    for rule_id, values in rules.items():
        rid = rule_id.upper()
        if rid not in BY_ID:
            raise UsageError(f"{source}: unknown rule '{prefix}rules.{rule_id}' (see 'mlprof rules')")
        if not isinstance(values, dict):
            raise UsageError(f"{source}: '{prefix}rules.{rule_id}' must be a table of thresholds")
        known = BY_ID[rid].defaults
        for name, value in values.items():
            if name not in known:
                raise UsageError(
                    f"{source}: unknown key '{prefix}rules.{rule_id}.{name}' (known: {', '.join(sorted(known))})"
                )
            number = _number(value, f"{prefix}rules.{rule_id}.{name}", source)
            doc = dict(zip(known, (d for d, _ in BY_ID[rid].options()), strict=True)).get(name)
            if doc is not None and not (doc.lo <= number <= doc.hi):
                raise UsageError(
                    f"{source}: '{prefix}rules.{rule_id}.{name}' = {number:g} is outside {doc.lo:g}..{doc.hi:g} "
                    f"({doc.unit}; see 'mlprof explain {rid}')"
                )
            cfg.overrides.setdefault(rid, {})[name] = number
    return cfg


def _number(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UsageError(f"{source}: '{key}' must be a number, got {value!r}")
    return float(value)
