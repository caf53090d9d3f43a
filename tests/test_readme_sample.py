"""The README's sample report is what ``docs/make_assets.py`` produces from the bundled trace today.

The sample is regenerated in-process (the screenshot is not: it needs a browser) and compared
with ``docs/sample-report.txt`` and the README block; run ``python docs/make_assets.py --text``
when this fails. Its headline numbers are checked against the raw trace, so a sample that
matches the code but not the trace fails too.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
from pathlib import Path
from types import ModuleType

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _make_assets() -> ModuleType:
    return load_script(ROOT / "docs" / "make_assets.py")


def test_readme_sample_is_current(monkeypatch: pytest.MonkeyPatch) -> None:
    assets = _make_assets()
    monkeypatch.chdir(ROOT)
    text = assets.sample_report()
    hint = "stale: run python docs/make_assets.py --text"
    assert (ROOT / "docs" / "sample-report.txt").read_text() == text, hint
    block = assets.readme_block(text)
    readme = (ROOT / "README.md").read_text()
    assert readme.count(assets.START) == 1 and block in readme, hint
    # the step time it shows is the trace's: the median ProfilerStep duration of the raw JSON
    events = json.loads(gzip.decompress(assets.TRACE.read_bytes()))["traceEvents"]
    steps = [float(e["dur"]) / 1000 for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    assert len(steps) >= 3
    shown = re.search(r"step time: median ([\d.]+) ms", block)
    assert shown is not None and float(shown.group(1)) == pytest.approx(statistics.median(steps), abs=0.01)
    assert "Findings, ranked" in block and "DATA001" in block
