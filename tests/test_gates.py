"""CI gates: expressions, exit codes and the markdown report, on real recorded runs and real GPU traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlprof.cli import main
from mlprof.errors import UsageError
from mlprof.gates import parse_budget, parse_fail_on, parse_max_regression
from mlprof.gates.spec import gates_from_config
from mlprof.rules.config import load_config

from conftest import SAMPLES, external

RECORDED = SAMPLES / "scenarios" / "recorded" / "data_starvation"
BAD, FIXED = str(RECORDED / "bad"), str(RECORDED / "fixed")
KINETO_0 = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"
KINETO_4 = "pytorch__kineto/resnet50_num_workers_4/worker0.1623213129365.pt.trace.json.gz"


def test_expressions() -> None:
    g = parse_fail_on("data001>=1.25")
    assert (g.target, g.min_speedup) == ("DATA001", 1.25)
    assert parse_fail_on("comm_not_overlapped").target == "comm_not_overlapped"
    assert parse_fail_on("any >= 1.1x").min_speedup == 1.1
    assert parse_max_regression("5%") == 5.0 and parse_max_regression("2.5") == 2.5
    assert parse_budget("comm_exposed=2ms").ms == 2.0
    assert parse_budget("idle_data = 500us").ms == pytest.approx(0.5)
    assert parse_budget("step=0.12s").ms == pytest.approx(120.0)
    assert parse_budget("idle_sync=5%").pct == 5.0


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_fail_on, "DATA001>=fast", "expected RULE_OR_CATEGORY[>=SPEEDUP]"),
        (parse_fail_on, "NOPE001", "neither a rule id nor a finding category"),
        (parse_fail_on, "DATA001>=0.5", "must be >= 1.0"),
        (parse_max_regression, "five percent", "expected a percentage"),
        (parse_budget, "comm_exposed", "expected CATEGORY=VALUE"),
        (parse_budget, "comm=2ms", "unknown category 'comm'"),
        (parse_budget, "comm_exposed=2", "with a unit"),
        (parse_budget, "step=10%", "needs a time"),
    ],
)
def test_malformed_expressions(parse: object, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(text)  # type: ignore[operator]


def test_regression_above_budget_fails(capsys: pytest.CaptureFixture[str]) -> None:
    # fixed -> bad: the DataLoader fix reverted, median steady step 7.88 -> 18.89 ms.
    assert main(["compare", FIXED, BAD, "--max-regression", "5%", "-f", "json", "-o", "/dev/null"]) == 1
    err = capsys.readouterr().err
    assert "### mlprof gates FAILED: 1 of 1 tripped" in err
    assert "| `--max-regression 5%` | **FAIL** | median steady step 7.88 -> 18.89 ms (+139.7%) | at most +5% |" in err


def test_improvement_passes(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["compare", BAD, FIXED, "--max-regression", "5%", "--budget", "idle_data=1ms", "-f", "markdown"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "### mlprof gates passed: 0 of 2 tripped" in out
    assert "idle_data 0.849 ms per step" in out


def test_regression_threshold_on_real_gpu_traces(capsys: pytest.CaptureFixture[str]) -> None:
    # num_workers 4 -> 0: median steady step 122.53 -> 152.47 ms, +24.4%
    base, new = str(external(KINETO_4)), str(external(KINETO_0))
    assert main(["compare", base, new, "--max-regression", "20%", "-o", "/dev/null"]) == 1
    assert "(+24.4%)" in capsys.readouterr().err
    assert main(["compare", base, new, "--max-regression", "25%", "-o", "/dev/null"]) == 0


def test_budgets_per_category(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", FIXED, BAD, "--budget", "idle_data=12.5ms", "-o", "/dev/null"]) == 0  # 12.21 ms
    assert main(["compare", FIXED, BAD, "--budget", "idle_data=12ms", "-o", "/dev/null"]) == 1
    assert "idle_data 12.212 ms per step" in capsys.readouterr().err
    assert main(["compare", FIXED, BAD, "--budget", "idle_data=60%", "-o", "/dev/null"]) == 1  # 64.4% of the step
    assert "64.4% of 18.97 ms" in capsys.readouterr().err


def test_analyze_fail_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", BAD, "--fail-on", "DATA001", "-o", "/dev/null"]) == 1
    err = capsys.readouterr().err
    assert "| `--fail-on DATA001` | **FAIL** | DATA001 2.69x:" in err
    assert main(["analyze", BAD, "--fail-on", "data_starvation>=3", "-o", "/dev/null"]) == 0  # 2.69x < 3x
    # 1.07x left (replayed; the attribution estimate was 1.12x)
    assert main(["analyze", FIXED, "--fail-on", "DATA001>=1.1", "-o", "/dev/null"]) == 0
    assert main(["analyze", FIXED, "--fail-on", "DATA001>=1.05", "-o", "/dev/null"]) == 1
    # AMP001 replays to ~1.01x on this host-paced step (1.27x by attribution): the gate stays quiet.
    assert main(["analyze", str(external(KINETO_0)), "--fail-on", "precision>=1.25", "-o", "/dev/null"]) == 0
    assert main(["analyze", str(external(KINETO_0)), "--fail-on", "data_starvation>=1.25", "-o", "/dev/null"]) == 1
    assert main(["analyze", str(external(KINETO_4)), "--fail-on", "DATA001", "-o", "/dev/null"]) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", BAD, "--fail-on", "DATA001>=x"],
        ["analyze", BAD, "--fail-on", "bogus"],
        ["compare", BAD, FIXED, "--max-regression", "lots"],
        ["compare", BAD, FIXED, "--budget", "idle_data"],
        ["compare", BAD, FIXED, "--budget", "nope=2ms"],
    ],
)
def test_malformed_gates_exit_2_with_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mlprof: error: ") and captured.err.count("\n") == 1


def test_gates_from_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "mlprof.toml"
    cfg.write_text('[gates]\nfail_on = ["data_starvation>=2"]\nmax_regression = "5%"\n')
    assert main(["analyze", BAD, "--config", str(cfg), "-o", "/dev/null"]) == 1
    assert main(["analyze", FIXED, "--config", str(cfg), "-o", "/dev/null"]) == 0
    assert main(["compare", FIXED, BAD, "--config", str(cfg), "-o", "/dev/null"]) == 1
    err = capsys.readouterr().err
    assert "`--max-regression 5%` | **FAIL**" in err
    # the command line replaces the file's max_regression
    cfg.write_text('[gates]\nmax_regression = "5%"\nbudgets = {idle_data = "1ms"}\n')
    assert main(["compare", BAD, FIXED, "--config", str(cfg), "--max-regression", "200%", "-o", "/dev/null"]) == 0
    # budgets from the file apply to a single analysed run too
    cfg.write_text('[gates]\nbudgets = {idle_data = "10ms", step = "25ms"}\n')
    assert main(["analyze", BAD, "--config", str(cfg), "-o", "/dev/null"]) == 1  # idle_data 12.21 ms
    err = capsys.readouterr().err
    assert "| `--budget idle_data=10ms` | **FAIL** | idle_data 12.212 ms per step |" in err
    assert "| `--budget step=25ms` | pass | step 18.970 ms per step |" in err
    assert main(["analyze", FIXED, "--config", str(cfg), "-o", "/dev/null"]) == 0
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.mlprof.gates]\nbudgets = {idle_data = "2ms"}\n')
    gates = gates_from_config(load_config(pyproject))
    assert gates.budgets["idle_data"].ms == 2.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[gates]\nfail_fast = true\n", "unknown key 'gates.fail_fast'"),
        ('[gates]\nfail_on = ["NOPE"]\n', "neither a rule id nor a finding category"),
        ("[gates]\nbudgets = {idle_data = 2}\n", "must be a string such as"),
        ('[gates]\nmax_regression = "a lot"\n', "expected a percentage"),
    ],
)
def test_bad_gate_config(tmp_path: Path, body: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "mlprof.toml"
    cfg.write_text(body)
    assert main(["analyze", BAD, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
