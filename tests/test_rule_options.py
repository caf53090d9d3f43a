"""Every rule threshold is documented, used, and safe at both ends of its accepted range.

The fuzz runs each rule with each option set to its smallest and its largest accepted
value (the others at their defaults) on bundled traces chosen so every rule has
something to judge, and on a GPU counters file for the counter rules: no exception,
and every finding serialises with a finite speedup. (FUSE001 with ``min_chain`` above
the longest chain used to exit 3: NaN to int.)
"""

from __future__ import annotations

import gzip
import inspect
import json
import math
from pathlib import Path

import pytest

from mlprof.analysis import analyze_job
from mlprof.analyzers.rank_skew import rank_skew
from mlprof.api import load_counters_files
from mlprof.cli import main
from mlprof.rules.base import RankContext, Rule
from mlprof.rules.config import parse_config
from mlprof.rules.counter_base import CounterContext, CounterRule
from mlprof.rules.registry import RULES
from mlprof.trace.loader import load_trace

from conftest import SAMPLES

ROOT = Path(__file__).resolve().parents[1]
TRACES = ["launch_bound", "sync_point", "memory_leak", "comm_exposed", "data_starvation"]
COUNTERS = ROOT / "tests" / "data" / "counters" / "nvidia_smi_units.csv"


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> list[list[RankContext]]:
    """Per trace, the rank contexts the rules read (a two-rank job of the comm trace for the job rules)."""
    jobs = [[load_trace(SAMPLES / "synthetic" / f"{name}.json.gz")] for name in TRACES]
    folder = tmp_path_factory.mktemp("job")
    doc = json.loads(gzip.decompress((SAMPLES / "synthetic" / "comm_exposed.json.gz").read_bytes()))
    for rank in (0, 1):
        path = folder / f"rank-{rank}.json.gz"
        path.write_bytes(gzip.compress(json.dumps(dict(doc, distributedInfo={"rank": rank, "world_size": 2})).encode()))
    jobs.append([load_trace(folder / "rank-0.json.gz"), load_trace(folder / "rank-1.json.gz")])
    out = []
    for traces in jobs:
        analysis = analyze_job(traces, "fuzz")
        out.append([RankContext(ra, ra.causes) for ra in analysis.ranks])  # type: ignore[arg-type]
    return out


def _ends(rule: Rule) -> list[tuple[str, float]]:
    return [(doc.name, end) for doc, _ in rule.options() if doc is not None for end in (doc.lo, doc.hi)]


def test_every_option_is_documented_in_range_and_used() -> None:
    # read by the rule (cfg["name"]) or by the what-if replay of its fix (ctx.param("name", ...))
    replay = "".join(p.read_text() for p in (ROOT / "mlprof" / "whatif").glob("*.py"))
    for rule in RULES:
        source = inspect.getsource(type(rule))
        for (name, default), (doc, _) in zip(rule.defaults.items(), rule.options(), strict=True):
            assert doc is not None, f"{rule.id}.{name}: no Option (unit, range, meaning)"
            assert doc.name == name and doc.unit and doc.meaning, f"{rule.id}.{name}"
            assert doc.lo <= default <= doc.hi, f"{rule.id}.{name}: default {default} outside {doc.lo}..{doc.hi}"
            used = f'cfg["{name}"]' in source or f'param("{name}"' in replay
            assert used, f"{rule.id}.{name}: never read by the rule or its what-if fix"


def test_explain_prints_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for rule in RULES:
        assert main(["explain", rule.id]) == 0
        out = " ".join(capsys.readouterr().out.split())  # explain wraps at the terminal's width
        for doc, _ in rule.options():
            assert doc is not None and doc.name in out and " ".join(doc.meaning.split()) in out


@pytest.mark.parametrize("rule", [r for r in RULES if not isinstance(r, CounterRule)], ids=lambda r: r.id)
def test_trace_rules_at_their_range_ends(rule: Rule, contexts: list[list[RankContext]]) -> None:
    for name, value in _ends(rule):
        cfg = {**rule.defaults, name: value}
        for job in contexts:
            found = [f for ctx in job for f in rule.check(ctx, cfg)]
            if rule.scope == "job":
                skew = rank_skew([c.tables for c in job]) if len(job) > 1 else None  # type: ignore[misc]
                step_ns = sum(c.step_ns for c in job) / len(job)
                found += rule.check_job(job, skew, step_ns, cfg)[0]
            for f in found:
                d = f.to_dict()
                assert math.isfinite(d["expected_speedup"]) and d["expected_speedup"] >= 1.0, (rule.id, name, value)


@pytest.mark.parametrize("rule", [r for r in RULES if isinstance(r, CounterRule)], ids=lambda r: r.id)
def test_counter_rules_at_their_range_ends(rule: CounterRule) -> None:
    table, _ = load_counters_files([COUNTERS])
    assert table is not None
    for name, value in _ends(rule):
        ctx = CounterContext(table, str(table.attrs["time_base"]))
        for f in rule.check_counters(ctx, {**rule.defaults, name: value}):
            assert math.isfinite(f.to_dict()["expected_speedup"]), (rule.id, name, value)


def test_config_refuses_values_outside_the_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlprof.errors import UsageError

    with pytest.raises(UsageError, match=r"FUSE001.min_chain' = 1 is outside 2\.\.1e\+06"):
        parse_config({"rules": {"FUSE001": {"min_chain": 1}}}, "t.toml")
    cfg = tmp_path / "mlprof.toml"
    cfg.write_text("[rules.FUSE001]\nmin_chain = 1000\n")  # above the longest chain: was exit 3
    trace = SAMPLES / "synthetic" / "launch_bound.json.gz"
    assert main(["analyze", str(trace), "--config", str(cfg), "-f", "json", "-o", str(tmp_path / "r.json")]) == 0
    rules = [f["rule"] for f in json.loads((tmp_path / "r.json").read_text())["findings"]]
    assert "FUSE001" not in rules and "LAUNCH001" in rules
