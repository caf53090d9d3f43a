"""Every rule's id, summary, documentation and thresholds, readable without the analysis stack.

``mlprof rules``, ``mlprof explain`` and the config loader need what a rule *says*, not
what it *does*; importing the rules themselves costs pandas and numpy (~0.5 s). The
documentation is written next to each rule's detection code (its class in
``mlprof/rules/``; the what-if text next to its graph edit in ``mlprof/whatif/fixes.py``);
this module reads a snapshot of it, ``_catalogue_data.py``, generated from the live rules
by ``python -m mlprof.commands._catalogue``. ``tests/test_rule_catalogue.py`` fails when
the snapshot and the live rules differ, and says to run that command.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from mlprof.errors import UsageError
from mlprof.rules._catalogue_data import CATALOGUE_JSON
from mlprof.rules.spec import Option, RuleDoc


class RuleEntry(msgspec.Struct, frozen=True):
    """What ``mlprof rules`` lists and ``mlprof explain`` prints about one rule."""

    id: str
    name: str
    category: str
    summary: str
    source: str
    """``trace`` (judged on a trace's events) or ``counters`` (on sampled GPU counters)."""
    scope: str
    """``rank`` or ``job`` (see :attr:`mlprof.rules.base.Rule.scope`)."""
    claims: tuple[str, ...]
    defaults: dict[str, float]
    option_docs: tuple[Option, ...]
    """The documentation, type and default of each threshold, in order."""
    doc: RuleDoc
    whatif: str | None
    """How the what-if replay applies the fix (None: the rule has no graph edit)."""

    def options(self) -> tuple[Option, ...]:
        """Each threshold's documentation and default, in order (as :meth:`mlprof.rules.base.Rule.options`)."""
        return self.option_docs


def _entry(data: dict[str, Any]) -> RuleEntry:
    return RuleEntry(
        id=data["id"],
        name=data["name"],
        category=data["category"],
        summary=data["summary"],
        source=data["source"],
        scope=data["scope"],
        claims=tuple(data["claims"]),
        defaults=dict(data["defaults"]),
        option_docs=tuple(Option(**o) for o in data["options"]),
        doc=RuleDoc(**data["doc"]),
        whatif=data["whatif"],
    )


ENTRIES: tuple[RuleEntry, ...] = tuple(_entry(d) for d in json.loads(CATALOGUE_JSON))
"""In the order the engine runs the rules (:data:`mlprof.rules.registry.RULES`)."""

BY_ID: dict[str, RuleEntry] = {e.id: e for e in ENTRIES}


def get_entry(rule_id: str) -> RuleEntry:
    """A rule by id (case-insensitive) or by name (``dataloader-wait``)."""
    key = rule_id.strip().upper()
    if key in BY_ID:
        return BY_ID[key]
    for entry in ENTRIES:
        if entry.name == rule_id.strip().lower():
            return entry
    known = ", ".join(BY_ID)
    raise UsageError(f"no rule {rule_id!r}; known rules: {known} (see 'mlprof rules')")
