"""The rule table in docs/rules.md (linked from the README) lists every trace rule with its JSON category,
and says which rules the what-if replay has an edit for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlprof.cli import main
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


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("SHAPE001", "What-if replay (the expected speedup is replay(recorded) / replay(with this edit))"),
        ("DP001", "What-if replay (the expected speedup is replay(recorded) / replay(with this edit))"),
        ("COMPILE001", "What-if replay (the expected speedup is replay(recorded) / replay(with this edit))"),
        ("ATTN001", "What-if replay (the expected speedup is replay(recorded) / replay(with this edit))"),
        ("STARTUP001", "the expected speedup is always 1.0"),
        ("MEM001", "the expected speedup is always 1.0"),
        ("BATCH001", "the expected speedup is always 1.0"),
        ("STRAG001", "Replayed only with the job replay"),
        ("COMM002", "No graph edit: the expected speedup is the attribution estimate."),
    ],
)
def test_explain_says_what_the_replay_does(rule: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", rule]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert says in out, rule
    assert "it costs memory, not time" not in out.split("Expected speedup", 1)[-1]
