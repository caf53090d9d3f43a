"""`mlprof analyze` as a user runs it: output contract, options, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.cli import main

from conftest import external

RESNET0 = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["analyze", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_contract_on_a_real_trace(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, str(external(RESNET0)))
    assert data["schema_version"] == "1.5"
    assert {"schema_version", "tool", "trace", "steps", "breakdown", "ranks", "findings", "notes"} <= set(data)
    assert data["trace"]["devices"][0]["name"] == "Tesla V100-DGXS-32GB"
    assert data["trace"]["step_source"] == "ProfilerStep"
    assert [s["step"] for s in data["steps"]] == [16, 17, 18, 19, 20, 21]
    first = data["steps"][0]
    assert first["dur_ms"] == pytest.approx(159.363)
    assert sum(first[f"{c}_ms"] for c in CATEGORIES) == pytest.approx(first["dur_ms"], abs=1e-5)
    cats = data["breakdown"]["categories"]
    assert sum(c["pct"] for c in cats.values()) == pytest.approx(100.0, abs=0.01)
    assert cats["idle_data"]["pct"] > 18  # CATALOG: DataLoader ~30% of step time
    assert data["breakdown"]["trace_level"]["idle_pct"] == pytest.approx(31.27, abs=0.01)  # HTA: 31.27
    data_finding = next(f for f in data["findings"] if f["rule"] == "DATA001")
    assert data_finding["claimed_ms_per_step"]["data.loader"] == pytest.approx(
        cats["idle_data"]["ms_per_step"], abs=1e-5
    )
    assert data_finding["speedup_source"] == "replay"
    assert data["whatif"]["trusted"] and abs(data["whatif"]["replay_error_pct"]) < 1


def test_directory_job_per_rank_and_rank_filter(capsys: pytest.CaptureFixture[str]) -> None:
    job = str(external("facebookresearch__param/dlrm_kineto"))
    data = _json(capsys, job)
    assert data["trace"]["ranks"] == list(range(8))
    exposed = {r["rank"]: r["breakdown"]["categories"]["comm_exposed"]["ms"] for r in data["ranks"]}
    assert exposed[1] == pytest.approx(11.06, abs=0.01)
    assert exposed[7] == pytest.approx(1.58, abs=0.01)
    one = _json(capsys, job, "--rank", "3")
    assert one["trace"]["ranks"] == [3]
    assert one["breakdown"]["categories"]["comm_exposed"]["ms"] == pytest.approx(9.45, abs=0.01)


def test_steps_filter(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, str(external(RESNET0)), "--steps", "17-18")
    assert [s["step"] for s in data["steps"]] == [17, 18]


def test_fallback_steps_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, str(external("facebookresearch__param/resnet_kineto.json.gz")))
    assert data["trace"]["step_source"].startswith("DataLoader __next__")
    assert any("no ProfilerStep markers" in n for n in data["notes"])


def test_no_device_activity_is_said_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, str(external("hta/tests/data/cpu_only/rank-34.Jul_15_10_52_41.1074.pt.trace.json.gz")))
    assert data["trace"]["has_device_activity"] is False
    assert data["breakdown"]["gpu_busy_pct"] is None
    assert any("no device (GPU) activity" in n for n in data["notes"])
    assert data["findings"] == []


def test_text_and_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(external(RESNET0))
    assert main(["analyze", path]) == 0
    text = capsys.readouterr().out
    assert "Where the time goes" in text and "idle_data" in text and "median 152.47 ms" in text
    assert main(["analyze", path, "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("## mlprof:") and "| `idle_data` |" in md


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "--format", "xml", "x.json"], "Invalid value for '--format'"),
        (["analyze"], "Missing argument"),
        (["analyze", "x.json", "--step-marker", "("], "--step-marker: not a valid regex"),
        (["analyze", "x.json", "--jobs", "0"], "--jobs 0: must be 1 or more"),
        (["analyze", "x.json", "--engine", "spark"], "--engine spark: choose one of"),
        (["analyze", "x.json", "--scheduler", "tcp://h:8786"], "--scheduler needs --engine dask"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlprof: error:") and message in err[0]


def test_bad_steps_and_rank(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(external(RESNET0))
    assert main(["analyze", path, "--steps", "99"]) == 2
    assert "no such step; the trace has steps 16..21" in capsys.readouterr().err
    assert main(["analyze", path, "--rank", "5"]) == 2
    assert "--rank 5: no such rank" in capsys.readouterr().err


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "mlprof", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("mlprof ")


def _busy_per_step(data: dict) -> list[float]:
    return [
        100 * sum(s[f"{c}_ms"] for c in ("compute", "comm_exposed", "memcpy_exposed")) / s["dur_ms"]
        for s in data["steps"]
    ]


def test_gpu_busy_matches_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    # CATALOG rows 1-2: GPU busy in steps 0.54-0.66 (num_workers=0); 0.80-0.84 with first/last 0.56/0.50 (4).
    starved = _json(capsys, str(external(RESNET0)))
    assert all(52 <= b <= 69 for b in _busy_per_step(starved))
    assert starved["breakdown"]["gpu_busy_pct"] == pytest.approx(64.401, abs=0.01)
    fed_path = str(external(RESNET0.replace("_0/worker0.1623143566756", "_4/worker0.1623213129365")))
    fed = _busy_per_step(_json(capsys, fed_path, "--steps", "16-21"))  # every step, warm-up and outlier too
    assert fed[0] == pytest.approx(56, abs=3) and fed[-1] == pytest.approx(50, abs=3)
    assert all(80 <= b <= 87 for b in fed[1:-1])
    steady = _json(capsys, fed_path)  # by default the first (warm-up) and last (outlier) steps are set aside
    assert [s["step"] for s in steady["steps"]] == [17, 18, 19, 20]
    assert all(80 <= b <= 87 for b in _busy_per_step(steady))


def test_job_breakdown_is_the_mean_over_ranks_with_the_rank_shape(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, str(external("facebookresearch__param/dlrm_kineto")))
    job, ranks = data["breakdown"], data["ranks"]
    assert job["aggregation"] == "mean over ranks"
    assert main(["analyze", str(external("facebookresearch__param/dlrm_kineto"))]) == 0
    assert "job figures below: mean over ranks" in capsys.readouterr().out
    assert set(job) - {"aggregation"} == set(ranks[0]["breakdown"])
    per_rank = [r["breakdown"]["categories"]["comm_exposed"]["ms_per_step"] for r in ranks]
    assert job["categories"]["comm_exposed"]["ms_per_step"] == pytest.approx(sum(per_rank) / 8, abs=1e-5)
    assert job["categories"]["comm_exposed"]["ms_per_step"] == pytest.approx(5.861, abs=0.001)
    assert job["step_time_ms"]["median"] == pytest.approx(
        sum(r["breakdown"]["step_time_ms"]["median"] for r in ranks) / 8, abs=1e-3
    )


def test_steps_on_a_trace_without_steps_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(external("AMD-AGI__TraceLens/b200/eager_trace.json.gz"))  # no step markers at all
    assert main(["analyze", path, "--steps", "3"]) == 2
    assert "the trace has no steps to select" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_low_confidence_speedup_is_written_as_an_upper_bound(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """B200 eager inference: HOST001 (low confidence) reads "≤N.NNx"; LAUNCH001 (medium) a plain figure."""
    path = str(external("AMD-AGI__TraceLens/b200/eager_trace.json.gz"))
    assert main(["analyze", path, "--format", "json"]) == 0
    findings = {f["rule"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    host, launch = findings["HOST001"], findings["LAUNCH001"]
    assert host["confidence"] == "low" and launch["confidence"] != "low"
    assert main(["analyze", path, "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert f"≤{host['expected_speedup']:.2f}x" in out
    assert f"{launch['expected_speedup']:.2f}x" in out and f"≤{launch['expected_speedup']:.2f}x" not in out


def test_help_imports_no_data_libraries() -> None:
    """``mlprof --help`` lists commands without importing pandas, numpy, plotly, SQLAlchemy or Dask."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mlprof.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "names = ('pandas', 'numpy', 'plotly', 'sqlalchemy', 'dask', 'pyarrow')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out
