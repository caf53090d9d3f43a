"""The rule catalogue (what ``mlprof rules`` / ``mlprof explain`` read) against the live rules.

The catalogue is a generated snapshot so that those commands do not import pandas; these
tests fail when it is stale (regenerate with ``python -m mlprof.commands._catalogue``)
or when the commands start importing the analysis stack again.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlprof.commands._catalogue import live_catalogue, render
from mlprof.rules import _catalogue_data
from mlprof.rules.catalogue import BY_ID, ENTRIES
from mlprof.rules.registry import RULES
from mlprof.whatif.fixes import FIXES


def test_snapshot_is_current() -> None:
    """The snapshot equals what the live rules and fixes say, field by field and in engine order."""
    live = live_catalogue()
    stale = render(live) != render(json.loads(_catalogue_data.CATALOGUE_JSON))
    assert len(live) == len(RULES) >= 23
    assert not stale, "mlprof/rules/_catalogue_data.py is stale: run `python -m mlprof.commands._catalogue`"


def test_entries_match_rule_objects() -> None:
    """Each entry reads back as the live rule: ids in order, thresholds with their docs, what-if text."""
    assert [e.id for e in ENTRIES] == [r.id for r in RULES]
    for rule in RULES:
        entry = BY_ID[rule.id]
        assert (entry.name, entry.category, entry.summary, entry.scope) == (
            rule.name,
            rule.category,
            rule.summary,
            rule.scope,
        )
        assert entry.defaults == rule.defaults and entry.options() == rule.options()
        assert entry.doc == rule.doc and entry.claims == tuple(rule.claims)
        assert entry.whatif == (FIXES[rule.id].doc if rule.id in FIXES else None)


@pytest.mark.parametrize("argv", [["rules"], ["explain", "SYNC001"], ["explain", "gpu-idle"]])
def test_catalogue_commands_import_no_data_libraries(argv: list[str]) -> None:
    """``mlprof rules`` and ``mlprof explain`` print without importing pandas, numpy or the rules' code."""
    code = (
        "import sys\n"
        "from mlprof.cli import main\n"
        f"rc = main({argv!r})\n"
        "names = ('pandas', 'numpy', 'plotly', 'sqlalchemy', 'dask', 'pyarrow', 'mlprof.rules.base')\n"
        "print('HEAVY', sorted(m for m in names if m in sys.modules), rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY [] 0" in out, out
