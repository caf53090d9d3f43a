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

import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from mlprof.errors import UsageError
from mlprof.rules.catalogue import BY_ID
from mlprof.rules.spec import Option, OptionsT, finite_or_inf


def _toml(text: str) -> dict[str, Any]:
    """``tomllib.loads``, imported on first use: a plain ``mlprof analyze`` without a config file reads no TOML
    (the parser's import is ~3 ms of its start-up)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads(text)


TOP_KEYS = {"min_speedup", "disable", "rules", "gates"}
DEFAULT_MIN_SPEEDUP = 1.01


class RuleConfig(msgspec.Struct):
    """The rules' thresholds: the minimum speedup reported, disabled rules, per-rule option values, gates."""

    min_speedup: float = DEFAULT_MIN_SPEEDUP
    """Findings with a smaller expected speedup are not reported (memory leaks always are)."""
    disabled: set[str] = msgspec.field(default_factory=set)
    overrides: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """Thresholds set by the team (``[tool.mlprof.rules.ID]``, ``--set``), by rule id; :meth:`options`
    checks them against each option's documented type and range."""
    source: str | None = None
    gates_table: Any = None
    """``[tool.mlprof.gates]`` as read, or None; :func:`mlprof.gates.spec.gates_from_config` parses it
    (gates sit above the rules: the rules layer never imports them)."""
    gates_key: str = "gates"
    """The table's key as the user wrote it (``tool.mlprof.gates`` or ``gates``), for error messages."""

    def options(self, rule_id: str, options_class: type[OptionsT]) -> OptionsT:
        """A rule's typed thresholds (``rule.options_class``): its defaults with the team's overrides.

        The overrides were checked when read; a :class:`RuleConfig` built in code is checked here
        (UsageError naming the key)."""
        values = self.overrides.get(rule_id, {})
        checked = {
            name: _option_value(rule_id, name, v, self.source or "config", f"rules.{rule_id}")
            for name, v in values.items()
        }
        return options_class.build(checked)

    def thresholds(self, rule_id: str) -> dict[str, float]:
        """The thresholds by name, as ``mlprof rules`` lists them (the rules and their what-if fixes read the typed
        :meth:`options`)."""
        return {**BY_ID[rule_id].defaults, **self.overrides.get(rule_id, {})}


_TOOL_TABLE = re.compile(r"^\s*\[+\s*tool\s*\.\s*mlprof\b|^\s*tool\s*\.\s*mlprof\b", re.MULTILINE)
"""A ``[tool.mlprof...]`` table header or a dotted ``tool.mlprof...`` key, as text (for files TOML rejects)."""


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
                text = project.read_text(encoding="utf-8")
            except (OSError, ValueError):  # unreadable or not UTF-8: not ours to judge
                return None
            try:
                data = _toml(text)
            except ValueError:  # not TOML, or an integer of more than 4300 digits
                # A broken file that holds our table is reported by load_config (one line, exit 2)
                # rather than silently analysed with the defaults the team did not choose.
                return project if _TOOL_TABLE.search(text) else None
            return project if "mlprof" in data.get("tool", {}) else None
    return None


def load_config(path: Path | None = None, start: Path | None = None) -> RuleConfig:
    """Read the config file (given, or found from ``start``); defaults when there is none."""
    if path is None:
        path = find_config((start or Path.cwd()).resolve())
        if path is None:
            return RuleConfig()
    try:
        data = _toml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read config ({exc})") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4300 digits
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
            raise UsageError(f"{source}: unknown key {_q(prefix + key)} (known: {', '.join(sorted(TOP_KEYS))})")
    if "min_speedup" in table:
        cfg.min_speedup = _number(table["min_speedup"], f"{prefix}min_speedup", source)
        if cfg.min_speedup < 1.0:
            raise UsageError(f"{source}: '{prefix}min_speedup' must be >= 1.0")
    disable = table.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(x, str) for x in disable):
        raise UsageError(f"{source}: '{prefix}disable' must be a list of rule ids")
    for rule_id in disable:
        if rule_id.upper() not in BY_ID:
            raise UsageError(f"{source}: '{prefix}disable' names unknown rule {_q(rule_id)}")
        cfg.disabled.add(rule_id.upper())
    if "gates" in table:
        cfg.gates_table, cfg.gates_key = table["gates"], f"{prefix}gates"
    rules = table.get("rules", {})
    if not isinstance(rules, dict):
        raise UsageError(f"{source}: '{prefix}rules' must be a table of rule ids")
    for rule_id, values in rules.items():
        rid = rule_id.upper()
        if rid not in BY_ID:
            raise UsageError(f"{source}: unknown rule {_q(f'{prefix}rules.{rule_id}')} (see 'mlprof rules')")
        if not isinstance(values, dict):
            raise UsageError(f"{source}: '{prefix}rules.{rule_id}' must be a table of thresholds")
        table_key = f"{prefix}rules.{rule_id}"
        for name, value in values.items():
            cfg.overrides.setdefault(rid, {})[name] = _option_value(rid, name, value, source, table_key)
    return cfg


def _q(text: str) -> str:
    """A name the user typed, quoted for an error line: ``'x'``, or its ``repr`` when it holds characters
    the terminal would act on (the error printer removes escapes, which made ``DA\\x1b[31mTA001`` read
    as the known ``DATA001``)."""
    return f"'{text}'" if text.isprintable() else repr(text)


def _docs(rule_id: str) -> dict[str, Option]:
    return {d.name: d for d in BY_ID[rule_id].options()}


def _option_value(rule_id: str, name: str, value: Any, source: str, table: str) -> Any:
    """One threshold checked against its documented type and range; UsageError naming the key otherwise."""
    docs = _docs(rule_id)
    doc = docs.get(name)
    if doc is None:
        raise UsageError(f"{source}: unknown key {_q(f'{table}.{name}')} (known: {', '.join(sorted(docs)) or 'none'})")
    try:
        return doc.convert(value)
    except ValueError as exc:
        detail = f"{exc}, got {value!r}" if str(exc).startswith("must be") else f"{exc}"
        raise UsageError(f"{source}: '{table}.{name}' {detail}; see 'mlprof explain {rule_id}'") from None


def apply_overrides(cfg: RuleConfig, settings: list[str], source: str = "--set") -> RuleConfig:
    """``ID.name=value`` settings (the command line's ``--set``) over ``cfg``, each checked like the config's."""
    for text in settings:
        key, sep, raw = text.partition("=")
        rule_id, dot, name = key.strip().partition(".")
        if not sep or not dot or not name.strip():
            raise UsageError(f"{source} {text!r}: expected RULE.option=value, e.g. DATA001.min_share=0.05")
        rid = rule_id.upper()
        if rid not in BY_ID:
            raise UsageError(f"{source} {text!r}: unknown rule {_q(rule_id)} (see 'mlprof rules')")
        try:
            value: Any = _toml(f"v = {raw.strip()}")["v"]
        except ValueError:  # not TOML (a bare word), or an integer of more than 4300 digits
            value = raw.strip()
        cfg.overrides.setdefault(rid, {})[name.strip()] = _option_value(rid, name.strip(), value, source, rid)
    return cfg


def _number(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UsageError(f"{source}: '{key}' must be a number, got {value!r}")
    return float(finite_or_inf(value))
