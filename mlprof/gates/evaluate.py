"""Evaluate gates against an analysis or a comparison; the results say what was measured against what."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from mlprof.gates.spec import Budget, GateConfig

if TYPE_CHECKING:
    from mlprof.analysis import Analysis, CounterAnalysis
    from mlprof.compare.diff import Comparison


class GateResult(msgspec.Struct, frozen=True):
    """One gate checked: passed or not, and what was measured against what was allowed."""

    gate: str
    """The gate as the user wrote it (``--max-regression 5%``, ``comm_exposed=2ms``...)."""
    passed: bool
    measured: str
    """What the run measured, in words and numbers."""
    limit: str

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "measured": self.measured, "limit": self.limit}


def check_analysis(analysis: Analysis | CounterAnalysis, gates: GateConfig) -> list[GateResult]:
    """``fail_on`` over the reported findings (trace and counters) and budgets over the per-step breakdown."""
    from mlprof.analysis import Analysis
    from mlprof.compare.steps import per_step_categories

    findings = list(analysis.findings)
    summary = analysis.counter_summary if isinstance(analysis, Analysis) else None
    if summary is not None:
        findings += summary.findings
    out = _fail_on(findings, gates)
    if gates.budgets and isinstance(analysis, Analysis):  # a counters file alone has no steps to budget
        cats, _ = per_step_categories(analysis)
        out += _budgets(cats, gates.budgets.values())
    return out


def check_comparison(comparison: Comparison, gates: GateConfig) -> list[GateResult]:
    """``max_regression`` on the median steady step's change; ``fail_on`` and budgets on the NEW run."""
    out: list[GateResult] = []
    if gates.max_regression_pct is not None:
        step = comparison.step
        out.append(
            GateResult(
                gate=f"--max-regression {gates.max_regression_pct:g}%",
                passed=step.change_pct <= gates.max_regression_pct,
                measured=f"median steady step {step.base_ms:.2f} -> {step.new_ms:.2f} ms ({step.change_pct:+.1f}%)",
                limit=f"at most +{gates.max_regression_pct:g}%",
            )
        )
    out += _fail_on(comparison.new.findings, gates)
    if gates.budgets:
        out += _budgets(comparison.new.category_ms(), gates.budgets.values())
    return out


def _fail_on(findings: list[Any], gates: GateConfig) -> list[GateResult]:
    out = []
    for gate in gates.fail_on:
        hits = [f for f in findings if gate.matches(f.rule, f.category, f.expected_speedup)]
        measured = (
            "; ".join(f"{f.rule} {f.expected_speedup:.2f}x: {f.title}" for f in hits) if hits else "no matching finding"
        )
        limit = f"no {gate.target} finding" + (f" at {gate.min_speedup:g}x or more" if gate.min_speedup > 1 else "")
        out.append(
            GateResult(gate=f"--fail-on {gate.text or gate.target}", passed=not hits, measured=measured, limit=limit)
        )
    return out


def _budgets(cats: dict[str, float], budgets: Any) -> list[GateResult]:
    out = []
    step_ms = sum(cats.values())
    for b in budgets:
        assert isinstance(b, Budget)
        value = step_ms if b.target == "step" else cats[b.target]
        if b.pct is not None:
            share = 100.0 * value / step_ms if step_ms > 0 else 0.0
            passed = share <= b.pct
            measured = f"{b.target} {value:.3f} ms per step ({share:.1f}% of {step_ms:.2f} ms)"
            limit = f"at most {b.pct:g}% of the step"
        else:
            assert b.ms is not None
            passed = value <= b.ms
            measured = f"{b.target} {value:.3f} ms per step"
            limit = f"at most {b.ms:g} ms per step"
        out.append(GateResult(gate=f"--budget {b.text}", passed=passed, measured=measured, limit=limit))
    return out


def gates_markdown(results: list[GateResult], subject: str) -> str:
    """A short report a CI job can post as a comment."""
    failed = [r for r in results if not r.passed]
    head = "FAILED" if failed else "passed"
    lines = [
        f"### mlprof gates {head}: {len(failed)} of {len(results)} tripped",
        "",
        *([subject, ""] if subject else []),
        "| gate | result | measured | limit |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| `{r.gate}` | {'pass' if r.passed else '**FAIL**'} | {_cell(r.measured)} | {r.limit} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
