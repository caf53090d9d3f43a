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
from dataclasses import fields
from pathlib import Path

import pytest

from mlprof.analysis import analyze_job
from mlprof.analyzers.rank_skew import rank_skew
from mlprof.api import load_counters_files
from mlprof.cli import main
from mlprof.rules.base import RankContext, Rule, RuleOptions
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
    return [(doc.name, end) for doc in rule.options() for end in (doc.lo, doc.hi)]


def _at(rule: Rule, name: str, value: float) -> RuleOptions:
    """The rule's typed options with one set to ``value`` (built and range-checked as the config does)."""
    return rule.options_class.build({name: value})


def test_every_option_is_typed_documented_and_in_range() -> None:
    for rule in RULES:
        declared = {f.name: f for f in fields(rule.options_class)}
        assert [d.name for d in rule.options()] == list(declared)
        for doc in rule.options():
            assert doc.unit and doc.meaning, f"{rule.id}.{doc.name}"
            assert doc.lo <= doc.default <= doc.hi, f"{rule.id}.{doc.name}: default outside {doc.lo}..{doc.hi}"
            typed = {"number": float, "integer": int, "flag": bool}[doc.kind]
            assert type(getattr(rule.options_class(), doc.name)) is typed, f"{rule.id}.{doc.name}"


def test_every_option_is_read_by_the_rule_or_its_fix() -> None:
    # read as an attribute by the rule's code (the dataclass field) or by the what-if replay of its fix
    replay = "".join(p.read_text() for p in (ROOT / "mlprof" / "whatif").glob("*.py"))
    for rule in RULES:
        source = inspect.getsource(inspect.getmodule(type(rule)))  # type: ignore[arg-type]
        for doc in rule.options():
            used = f"opts.{doc.name}" in source or f'param("{doc.name}"' in replay
            assert used, f"{rule.id}.{doc.name}: never read by the rule or its what-if fix"


def test_explain_prints_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for rule in RULES:
        assert main(["explain", rule.id]) == 0
        out = " ".join(capsys.readouterr().out.split())  # explain wraps at the terminal's width
        for doc in rule.options():
            assert doc.name in out and " ".join(doc.meaning.split()) in out


@pytest.mark.parametrize("rule", [r for r in RULES if not isinstance(r, CounterRule)], ids=lambda r: r.id)
def test_trace_rules_at_their_range_ends(rule: Rule, contexts: list[list[RankContext]]) -> None:
    for name, value in _ends(rule):
        cfg = _at(rule, name, value)
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
        for f in rule.check_counters(ctx, _at(rule, name, value)):
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
