"""The rule table in docs/rules.md (linked from the README) lists every trace rule with its JSON category,
and says which rules the what-if replay has an edit for."""

from __future__ import annotations

import re
from pathlib import Path

from mlprof.rules.registry import TRACE_RULES
from mlprof.whatif.fixes import FIXES

DOC = Path(__file__).resolve().parents[1] / "docs" / "rules.md"


def test_every_trace_rule_has_a_row_with_its_category() -> None:
    text = DOC.read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| ([A-Z]+\d{3}) \| `([a-z_]+)` \|", text, re.M)}
    assert {r.id: r.category for r in TRACE_RULES} == {
        k: v for k, v in rows.items() if k in {r.id for r in TRACE_RULES}
    }
    assert set(rows) <= {r.id for r in TRACE_RULES}


def test_rows_of_the_new_rules_say_what_the_replay_does() -> None:
    text = DOC.read_text()
    for rule in ("COMPILE001", "DP001", "SHAPE001"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {rule} |"))
        assert rule in FIXES and "replay:" in row, rule
    for rule in ("BATCH001", "STARTUP001"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {rule} |"))
        assert rule not in FIXES and ("no replay edit" in row or "never a speedup" in row), rule
