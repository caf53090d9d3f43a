"""Team thresholds from pyproject.toml / mlprof.toml, and the rules/explain commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlprof.cli import main
from mlprof.rules.config import find_config, load_config
from mlprof.rules.registry import BY_ID, RULES

from conftest import SAMPLES

STARVED = str(SAMPLES / "synthetic" / "data_starvation.json.gz")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rules_in(out: str) -> set[str]:
    return {f["rule"] for f in json.loads(out)["findings"]}


def test_pyproject_tool_mlprof_is_found_from_a_subfolder(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.mlprof.rules.DATA001]\nmin_share = 0.5\n')
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    assert find_config(sub) == tmp_path / "pyproject.toml"
    cfg = load_config(start=sub)
    assert cfg.thresholds("DATA001") == {"min_share": 0.5, "ready_batch_ms": 0.3}
    assert cfg.thresholds("SYNC001") == {"min_share": 0.02}


def test_pyproject_without_tool_mlprof_stops_the_search(tmp_path: Path) -> None:
    (tmp_path / "mlprof.toml").write_text("min_speedup = 2.0\n")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config(project) is None
    assert find_config(tmp_path) == tmp_path / "mlprof.toml"


def test_config_changes_what_analyze_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "json")
    assert code == 0 and "DATA001" in rules_in(out)
    (tmp_path / "mlprof.toml").write_text('disable = ["DATA001"]\n')
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "json")
    assert code == 0 and "DATA001" not in rules_in(out)
    other = tmp_path / "team.toml"
    other.write_text("[rules.DATA001]\nmin_share = 0.99\n")
    os.remove(tmp_path / "mlprof.toml")
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "json", "--config", str(other))
    assert code == 0 and "DATA001" not in rules_in(out)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("min_speedupp = 1.1\n", "'min_speedupp'"),
        ("[rules.DATA001]\nmin_shar = 0.1\n", "'rules.DATA001.min_shar'"),
        ("[rules.DATA999]\nmin_share = 0.1\n", "'rules.DATA999'"),
        ('disable = ["NOPE001"]\n', "'NOPE001'"),
        ('[rules.DATA001]\nmin_share = "high"\n', "'rules.DATA001.min_share' must be a number"),
        ("min_speedup = 0.5\n", "must be >= 1.0"),
        ("min_speedup = \n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    cfg = tmp_path / "mlprof.toml"
    cfg.write_text(text)
    code, out, err = run(capsys, "analyze", STARVED, "--config", str(cfg))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and named in err and "Traceback" not in err


def test_unknown_key_in_pyproject_is_named_with_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text("[tool.mlprof]\nthreshold = 3\n")
    code, _, err = run(capsys, "rules", "--config", str(cfg))
    assert code == 2 and "'tool.mlprof.threshold'" in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "analyze", STARVED, "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "not found" in err


def test_rules_lists_every_rule_with_thresholds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "rules")
    assert code == 0
    for rule in RULES:
        assert rule.id in out and rule.name in out
    assert "min_share=0.03" in out


@pytest.mark.parametrize("rule_id", [r.id for r in RULES])
def test_explain_prints_every_section(capsys: pytest.CaptureFixture[str], rule_id: str) -> None:
    code, out, _ = run(capsys, "explain", rule_id.lower())
    assert code == 0
    for heading in ("What it detects", "Why it costs time", "How it is detected", "Fix", "When it is a false alarm"):
        assert heading in out
    assert "Thresholds" in out


def test_explain_by_name_and_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "dataloader-wait")
    assert code == 0 and out.startswith("DATA001")
    code, out, err = run(capsys, "explain", "XYZ")
    assert code == 2 and "no rule 'XYZ'" in err


def test_json_findings_carry_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "analyze", STARVED, "-f", "json")
    data = json.loads(out)
    f = data["findings"][0]
    for key in (
        "rule",
        "category",
        "severity",
        "title",
        "steps",
        "time_ranges_ns",
        "evidence",
        "time_lost_ms_per_step",
        "expected_speedup",
        "confidence",
        "fix",
    ):
        assert key in f
    assert f["category"] == "data_starvation"
    assert data["plan"][0]["rule"] == "DATA001"
    assert data["plan"][0]["cumulative_speedup"] == pytest.approx(f["expected_speedup"], abs=1e-3)
    assert data["checks"]["rules_run"]


def test_text_and_markdown_show_findings_and_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "markdown")
    assert code == 0 and "| DATA001 |" in out and "num_workers" in out
    code, out, _ = run(capsys, "analyze", STARVED)
    assert code == 0 and "DATA001" in out and "fix:" in out


def test_set_overrides_a_threshold_for_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # DATA001 fires on the starved trace at its default (the loader wait is ~40% of the step);
    # --set raises its bar above what it measures
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "json")
    assert code == 0 and "DATA001" in rules_in(out)
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "json", "--set", "data001.min_share=0.9")
    assert code == 0 and "DATA001" not in rules_in(out)
    # --set wins over the config file's value
    cfg = tmp_path / "mlprof.toml"
    cfg.write_text("[rules.DATA001]\nmin_share = 0.99\n")
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "json", "--config", str(cfg), "--set", "DATA001.min_share=0")
    assert code == 0 and "DATA001" in rules_in(out)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("DATA001.min_share=2", "'DATA001.min_share' = 2 is outside 0..1"),
        ("FUSE001.min_chain=2.5", "'FUSE001.min_chain' = 2.5 must be a whole number"),
        ("GPU002.include_power_cap=yes", "'GPU002.include_power_cap' must be true or false"),
        ("DATA001.min_shar=0.1", "unknown key 'DATA001.min_shar'"),
        ("DATA999.min_share=0.1", "unknown rule 'DATA999'"),
        ("DATA001", "expected RULE.option=value"),
        ('DATA001.min_share="high"', "'DATA001.min_share' must be a number"),
    ],
)
def test_bad_set_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], setting: str, named: str) -> None:
    code, out, err = run(capsys, "analyze", STARVED, "--set", setting)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and named in err and "Traceback" not in err


def test_config_types_whole_numbers_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "mlprof.toml"
    cfg.write_text("[rules.FUSE001]\nmin_chain = 3.0\n[rules.GPU002]\ninclude_power_cap = true\n")
    loaded = load_config(cfg)
    fuse = loaded.options("FUSE001", BY_ID["FUSE001"].options_class)
    gpu = loaded.options("GPU002", BY_ID["GPU002"].options_class)
    assert fuse.min_chain == 3 and type(fuse.min_chain) is int  # type: ignore[attr-defined]
    assert gpu.include_power_cap is True  # type: ignore[attr-defined]
    cfg.write_text("[rules.GPU002]\ninclude_power_cap = 1\n")
    assert load_config(cfg).thresholds("GPU002")["include_power_cap"] is True


BIG = "1" + "0" * 400  # an int TOML reads exactly, too large for a float
HUGE = "9" * 5000  # more digits than Python converts from a string


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        (f"DATA001.min_share={BIG}", "'DATA001.min_share' = inf is outside 0..1"),
        (f"DATA001.min_share=-{BIG}", "'DATA001.min_share' = -inf is outside 0..1"),
        (f"MEM001.min_steps={BIG}", "'MEM001.min_steps' = inf is outside 2..1e+09"),
        (f"GPU002.include_power_cap={BIG}", "'GPU002.include_power_cap' = inf is outside 0..1"),
        (f"DATA001.min_share={HUGE}", "'DATA001.min_share' must be a number, got '999"),
    ],
)
def test_set_with_an_integer_too_large_for_a_float_is_one_line(
    capsys: pytest.CaptureFixture[str], setting: str, words: str
) -> None:
    # Was exit 3: OverflowError (int too large to convert to float) or ValueError (over 4300 digits).
    code, _, err = run(capsys, "analyze", STARVED, "--set", setting)
    assert code == 2 and err.count("\n") == 1 and words in err


@pytest.mark.parametrize("text", [f"min_speedup = {HUGE}", f"[rules.MEM001]\nmin_steps = {BIG}"])
def test_config_with_an_integer_too_large_for_a_float_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    cfg = tmp_path / "mlprof.toml"
    cfg.write_text(text + "\n")
    code, _, err = run(capsys, "analyze", STARVED, "--config", str(cfg))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"mlprof: error: {cfg}")


def test_min_speedup_too_large_for_a_float_is_infinite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was exit 3 (OverflowError); now read like min_speedup = inf: no finding passes the bar.
    cfg = tmp_path / "mlprof.toml"
    cfg.write_text(f"min_speedup = {BIG}\n")
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "json", "--config", str(cfg))
    assert code == 0 and rules_in(out) == set()


@pytest.mark.parametrize(
    "text",
    [
        '[project]\nname = "x\n\n[tool.mlprof]\nmin_speedup = 2.0\n',  # unterminated string above our table
        "[tool.mlprof.rules.DATA001]\nmin_share = = 0.5\n",
    ],
)
def test_broken_pyproject_with_our_table_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    # The team's thresholds must not be dropped in silence: analysing with the defaults would
    # report findings the team configured away (or hide ones it asked for).
    (tmp_path / "pyproject.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "analyze", STARVED, "-f", "json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "pyproject.toml" in err and "not valid TOML" in err and "Traceback" not in err


def test_broken_pyproject_without_our_table_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another tool's broken file is not ours to judge: the defaults apply, as with no config.
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x\n[tool.ruff]\nline-length = 1\n')
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "analyze", STARVED, "-f", "json")
    assert code == 0 and "DATA001" in rules_in(out)
    assert find_config(tmp_path) is None


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ("DA\x1b[31mTA001.min_share=0.5", r"unknown rule 'DA\x1b[31mTA001'"),
        ("DATA001.min\x1b[31m_share=0.5", r"unknown key 'DATA001.min\x1b[31m_share'"),
    ],
)
def test_set_names_with_escapes_are_quoted_visibly(
    capsys: pytest.CaptureFixture[str], setting: str, shown: str
) -> None:
    # The error printer removes escape sequences (they must not reach the terminal); a rule id
    # quoted raw then read 'unknown rule DATA001', naming a rule that exists.
    code, out, err = run(capsys, "analyze", STARVED, "--set", setting)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert shown in err and "\x1b" not in err
