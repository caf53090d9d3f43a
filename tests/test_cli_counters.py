"""``mlprof analyze`` with GPU counters: a counters file alone, ``--counters`` next to a trace, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlprof.cli import main

from conftest import SAMPLES, external

REAL_LOG = "RCKola__Rectified-Point-Flow/gpu_usage.csv"
COUNTER_SAMPLES = Path(__file__).parent / "data" / "counters"
TRACE = SAMPLES / "synthetic" / "data_starvation.json.gz"
TRACE_START_NS = 1_712_195_495_505_000_000  # ProfilerStep#2 of data_starvation: 5 steps of ~8 ms
MS = 1_000_000


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    rc = main(["analyze", *[str(a) for a in args]])
    out, err = capsys.readouterr()
    return rc, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: object) -> dict[str, Any]:
    rc, out, err = cli(capsys, *args, "--format", "json")
    assert rc == 0, err
    return json.loads(out)


def one_error_line(rc: int, out: str, err: str) -> str:
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlprof: error:"), err
    return lines[0]


def native_counters(path: Path, start_ns: int, n: int, step_ns: int, util: list[float], mem_mib: list[float]) -> Path:
    """The mlprof collector's counters CSV: one GPU, util and memory every ``step_ns`` from ``start_ns``."""
    ts = start_ns + np.arange(n, dtype=np.int64) * step_ns
    rows = ["ts,device,metric,value,source"]
    rows += [f"{t},0,gpu_util_pct,{u},nvml" for t, u in zip(ts, util, strict=True)]
    rows += [f"{t},0,mem_used_bytes,{m * (1 << 20)},nvml" for t, m in zip(ts, mem_mib, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def two_gpu_log(path: Path) -> Path:
    """nvidia-smi nounits log: GPU 0 busy for 100 s, GPU 1 idle for 50 of them."""
    lines = ["timestamp, index, utilization.gpu, memory.used, memory.total"]
    for i in range(100):
        lines.append(f"{1_700_000_000 + i}, 0, 95, 1000, 40960")
        lines.append(f"{1_700_000_000 + i}, 1, {3 if 25 <= i < 75 else 90}, 1000, 40960")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- counters alone ----------------------------------------------------------------------------


def test_real_nvidia_smi_log_alone_text(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, external(REAL_LOG))
    assert rc == 0 and err == ""
    assert "nvidia-smi, 1 GPU, 89.1 min" in out
    assert "No counter findings (4 counter rules run)" in out
    assert "GPU001: the GPU was under 10% utilisation 0.0%" in out  # its 3 idle samples are start-up


def test_real_nvidia_smi_log_alone_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = as_json(capsys, external(REAL_LOG))
    assert data["schema_version"] == "1.5"
    assert data["trace"] is None and data["ranks"] == [] and data["steps"] == [] and data["findings"] == []
    c = data["counters"]
    assert c["formats"] == ["nvidia-smi"] and c["time_base"] == "epoch" and c["aligned_to_steps"] is False
    (dev,) = c["devices"]
    assert dev["util_below_share"] == pytest.approx(0.0333, abs=1e-4)
    assert dev["util_mean_pct"] == pytest.approx(57.6, abs=0.1)
    assert dev["mem_used_max_mib"] == 10904 and dev["mem_total_mib"] == 24576
    assert dev["mem_growth_r2"] == pytest.approx(0.1, abs=0.01)


def test_two_gpus_one_idle_half_the_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = as_json(capsys, two_gpu_log(tmp_path / "gpu.csv"))
    (f,) = data["findings"]
    assert f["rule"] == "GPU003" and f["expected_speedup"] == pytest.approx(1 / 0.75, abs=1e-4)
    assert data["counters"]["findings"] == data["findings"]
    rc, out, _ = cli(capsys, tmp_path / "gpu.csv", "--format", "markdown")
    assert rc == 0 and "| 1 | GPU003 |" in out and "1.33x" in out


@pytest.mark.parametrize("name", ["dcgmi_dmon.txt", "dcgm_exporter.prom", "mlprof_counters.csv.gz", "dcgm_wide.csv"])
def test_every_counters_format_is_analysed_alone(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = as_json(capsys, COUNTER_SAMPLES / name)
    assert data["counters"]["devices"]
    assert data["counters"]["checks"]["rules_run"] == ["GPU001", "GPU002", "GPU003", "MEM002"]


def test_counters_alone_refuse_trace_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error_line(*cli(capsys, two_gpu_log(tmp_path / "gpu.csv"), "--steps", "3"))
    assert "--steps" in line and "counters file" in line


def test_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = two_gpu_log(tmp_path / "gpu.csv")
    rc, out, _ = cli(capsys, log, "-o", tmp_path / "report.txt")
    assert rc == 0 and out == ""
    assert "GPU003" in (tmp_path / "report.txt").read_text()
    one_error_line(*cli(capsys, TRACE, "--counters", log, "-o", log))  # would overwrite the counters


# ---- bad input stays one line -------------------------------------------------------------------


def test_csv_that_is_not_counters_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gpu.csv").write_text("a,b\n1,2\n")
    one_error_line(*cli(capsys, tmp_path / "gpu.csv"))


def test_broken_nvidia_smi_log_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gpu.csv").write_text("index, utilization.gpu [%]\n0, 50 %\n")  # no timestamp column
    assert "timestamp" in one_error_line(*cli(capsys, tmp_path / "gpu.csv"))


def test_missing_counters_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such file" in one_error_line(*cli(capsys, TRACE, "--counters", tmp_path / "nope.csv"))


# ---- counters next to a trace --------------------------------------------------------------------


def test_counters_joined_to_the_trace_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN NVML samples every ms from 10 ms before the first step to past the last, memory +1 MiB per ms
    n = 70
    path = native_counters(
        tmp_path / "counters.csv", TRACE_START_NS - 10 * MS, n, MS, [50.0] * n, [1000.0 + i for i in range(n)]
    )
    data = as_json(capsys, TRACE, "--counters", path)
    c = data["counters"]
    assert c["aligned_to_steps"] is True
    steps = [s["step"] for s in data["steps"]]
    assert [r["step"] for r in c["per_step"]] == steps
    first = c["per_step"][0]
    assert first["util_samples"] == 9 and first["util_mean_pct"] == 50.0  # 8.1 ms step, samples at whole ms
    assert first["mem_used_at_start_mib"] == 1010.0
    (during,) = c["during_trace"]
    assert during["util_mean_pct"] == 50.0
    # the trace has no allocator events; the leak verdict uses the NVML samples instead
    assert "inside the traced steps GPU 0 +60000.0 MiB/min" in data["checks"]["verdicts"]["MEM001"]
    assert data["findings"] and all(f["rule"] not in {"GPU001", "GPU003"} for f in data["findings"])
    rc, out, _ = cli(capsys, TRACE, "--counters", path)
    assert rc == 0 and "GPU counters" in out and "joined to steps: yes" in out


def test_counters_of_another_run_are_not_joined(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = native_counters(tmp_path / "old.csv", TRACE_START_NS - 3600 * 10**9, 10, 10**9, [0.0] * 10, [1.0] * 10)
    c = as_json(capsys, TRACE, "--counters", path)["counters"]
    assert c["aligned_to_steps"] is False and c["per_step"] == []
    assert any("counters not joined to steps: they end 3,591.0 s before" in n for n in c["notes"])


def test_relative_counters_are_not_joined(capsys: pytest.CaptureFixture[str]) -> None:
    data = as_json(capsys, TRACE, "--counters", COUNTER_SAMPLES / "dcgmi_dmon.txt")
    c = data["counters"]
    assert c["aligned_to_steps"] is False and c["time_base"] == "relative"
    assert any("time base is 'relative'" in n for n in c["notes"])


def test_repeated_counters_option(capsys: pytest.CaptureFixture[str]) -> None:
    c = as_json(
        capsys,
        TRACE,
        "--counters",
        COUNTER_SAMPLES / "dcgmi_dmon.txt",
        "--counters",
        COUNTER_SAMPLES / "nvidia_smi_units.csv",
    )["counters"]
    assert c["formats"] == ["dcgmi-dmon", "nvidia-smi"] and c["time_base"] == "mixed"
    assert any("2 counters files merged" in n for n in c["notes"])


def test_trace_without_counters_has_null_counters(capsys: pytest.CaptureFixture[str]) -> None:
    assert as_json(capsys, TRACE)["counters"] is None
