"""Counter rules (GPU001 idle, GPU002 throttling, GPU003 imbalance, MEM002 memory growth) on counter files
with known ground truth, on the colleague's format samples and on a real nvidia-smi log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlprof.analysis import CounterAnalysis, analyze_counters
from mlprof.counters import load_counters
from mlprof.rules.base import Finding
from mlprof.rules.config import RuleConfig
from mlprof.rules.counter_base import CounterRule
from mlprof.rules.registry import COUNTER_RULES, RULES, TRACE_RULES

from conftest import external

REAL_LOG = "RCKola__Rectified-Point-Flow/gpu_usage.csv"
SAMPLES = Path(__file__).parent / "data" / "counters"
T0 = 1_700_000_000  # epoch seconds
S = 1_000_000_000


def write_smi(path: Path, columns: dict[str, list[list[float]]], times: list[list[float]] | None = None) -> Path:
    """An nvidia-smi ``--format=csv,nounits`` style log: one row per GPU per sample, GPUs interleaved.

    ``columns`` maps a query field to one list of values per GPU; ``times`` (epoch seconds, per GPU)
    default to one sample a second from ``T0``.
    """
    n_gpu = len(next(iter(columns.values())))
    n = len(next(iter(columns.values()))[0])
    times = times or [[T0 + i for i in range(n)] for _ in range(n_gpu)]
    lines = ["timestamp, index, " + ", ".join(columns)]
    for i in range(n):
        for g in range(n_gpu):
            values = ", ".join(_cell(columns[c][g][i]) for c in columns)
            lines.append(f"{times[g][i]:.3f}, {g}, {values}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell(value: float) -> str:
    return f"{value:g}"


def run(path: Path, config: RuleConfig | None = None) -> CounterAnalysis:
    return analyze_counters(load_counters(path), [str(path)], config)


def by_rule(ca: CounterAnalysis) -> dict[str, Finding]:
    return {f.rule: f for f in ca.findings}


def blocks(n: int, idle: range, busy: float = 90.0, low: float = 0.0) -> list[float]:
    return [low if i in idle else busy for i in range(n)]


# ---- the rule set ---------------------------------------------------------------------------


def test_counter_rules_are_registered_documented_and_claim_nothing() -> None:
    ids = {r.id for r in COUNTER_RULES}
    assert ids == {"GPU001", "GPU002", "GPU003", "MEM002"}
    assert set(RULES) == set(TRACE_RULES) | set(COUNTER_RULES)
    for rule in COUNTER_RULES:
        assert isinstance(rule, CounterRule)
        assert rule.claims == ()
        assert "    " in rule.doc.fix
    for rule_id in ("GPU002", "MEM002"):  # costs that are not time say so
        assert "1.0" in next(r for r in COUNTER_RULES if r.id == rule_id).doc.why


# ---- GPU001: every GPU idle at once -------------------------------------------------------------


def test_gpu001_fires_on_one_gpu_idle_30_percent(tmp_path: Path) -> None:
    # GIVEN one GPU sampled every second for 100 s, under 10% for 30 of them
    path = write_smi(tmp_path / "gpu.csv", {"utilization.gpu": [blocks(100, range(40, 70))]})
    # WHEN the counter rules run
    f = by_rule(run(path))["GPU001"]
    # THEN the idle time is 30 s of 100 s and removing it gives 100/70
    assert f.evidence["all_idle_s"] == pytest.approx(30.0)
    assert f.evidence["covered_s"] == pytest.approx(100.0)
    assert f.evidence["all_idle_share"] == pytest.approx(0.30)
    assert f.expected_speedup == pytest.approx(100 / 70)
    assert f.time_lost_ns_per_step == pytest.approx(30 * S) and f.step_ns == pytest.approx(100 * S)
    assert f.severity == "critical"
    assert "GPU003" not in by_rule(run(path))  # one GPU: no imbalance


def test_gpu001_quiet_when_busy_and_says_what_it_measured(tmp_path: Path) -> None:
    path = write_smi(tmp_path / "gpu.csv", {"utilization.gpu": [blocks(100, range(40, 43))]})  # 3% idle
    ca = run(path)
    assert "GPU001" not in by_rule(ca)
    assert "3.0%" in ca.diagnosis.verdicts["GPU001"]


def test_gpu001_threshold_override(tmp_path: Path) -> None:
    path = write_smi(tmp_path / "gpu.csv", {"utilization.gpu": [blocks(100, range(40, 43))]})
    cfg = RuleConfig(overrides={"GPU001": {"min_share": 0.02}}, min_speedup=1.0)
    assert by_rule(run(path, cfg))["GPU001"].evidence["all_idle_share"] == pytest.approx(0.03)


# ---- GPU003: some GPUs idle while others work -------------------------------------------------


def test_gpu003_fires_when_one_of_two_gpus_idles_half_the_time(tmp_path: Path) -> None:
    # GIVEN GPU 0 busy throughout and GPU 1 idle 50 of 100 s
    util = [blocks(100, range(0)), blocks(100, range(25, 75), low=5.0)]
    ca = run(write_smi(tmp_path / "two.csv", {"utilization.gpu": util}))
    found = by_rule(ca)
    f = found["GPU003"]
    # THEN a quarter of the job's GPU time is lost: (0 + 50 s) / 2 GPUs over 100 s
    assert f.evidence["under_used_devices"] == [1]
    assert f.evidence["idle_while_others_busy_share_by_device"] == {"0": 0.0, "1": pytest.approx(0.5)}
    assert f.evidence["job_gpu_time_lost_share"] == pytest.approx(0.25)
    assert f.expected_speedup == pytest.approx(1 / 0.75)
    assert "GPU001" not in found  # never both idle at once


def test_gpu003_with_interleaved_sample_times(tmp_path: Path) -> None:
    # nvidia-smi writes the GPUs of one sample a few ms apart
    util = [blocks(100, range(0)), blocks(100, range(25, 75), low=5.0)]
    times = [[T0 + i for i in range(100)], [T0 + i + 0.004 for i in range(100)]]
    f = by_rule(run(write_smi(tmp_path / "two.csv", {"utilization.gpu": util}, times)))["GPU003"]
    assert f.evidence["job_gpu_time_lost_share"] == pytest.approx(0.25, abs=0.001)


def test_gpu001_and_gpu003_never_count_the_same_time(tmp_path: Path) -> None:
    # both idle 20 s together, GPU 1 idle 30 s more alone
    util = [blocks(100, range(10, 30)), blocks(100, range(10, 60))]
    found = by_rule(run(write_smi(tmp_path / "two.csv", {"utilization.gpu": util})))
    assert found["GPU001"].time_lost_ns_per_step == pytest.approx(20 * S)
    assert found["GPU003"].time_lost_ns_per_step == pytest.approx(15 * S)  # (0 + 30 s) / 2 GPUs


def test_gpu003_quiet_when_gpus_are_balanced(tmp_path: Path) -> None:
    util = [blocks(100, range(0), busy=80.0), blocks(100, range(0), busy=70.0)]
    ca = run(write_smi(tmp_path / "two.csv", {"utilization.gpu": util}))
    assert ca.findings == []
    assert "0.0%" in ca.diagnosis.verdicts["GPU003"]


# ---- GPU002: throttling -----------------------------------------------------------------------


def test_gpu002_fires_on_thermal_slowdown_a_quarter_of_the_time(tmp_path: Path) -> None:
    hot = range(50, 75)
    reasons = [float(0x40 if i in hot else 0x4) for i in range(100)]
    clocks = [1100.0 if i in hot else 1410.0 for i in range(100)]
    cols = {"utilization.gpu": [[95.0] * 100], "clocks.sm": [clocks], "clocks_event_reasons.active": [reasons]}
    f = by_rule(run(write_smi(tmp_path / "hot.csv", cols)))["GPU002"]
    assert f.evidence["throttled_share"] == pytest.approx(0.25)
    assert f.evidence["share_by_reason"] == {"hw_thermal_slowdown": pytest.approx(0.25)}
    assert f.evidence["sm_clock_throttled_mhz"] == 1100 and f.evidence["sm_clock_unthrottled_mhz"] == 1410
    assert f.evidence["sm_clock_ratio_when_throttled"] == pytest.approx(1100 / 1410, abs=1e-3)
    assert f.expected_speedup == 1.0 and f.time_lost_ns_per_step == 0 and f.severity == "warning"
    assert "hw_thermal_slowdown 25%" in f.title


def test_gpu002_ignores_power_cap_unless_asked(tmp_path: Path) -> None:
    cols = {"utilization.gpu": [[95.0] * 100], "clocks_event_reasons.active": [[4.0] * 100]}
    path = write_smi(tmp_path / "capped.csv", cols)
    ca = run(path)
    assert "GPU002" not in by_rule(ca)
    assert "GPU 0 throttled 0.0% of the time" in ca.diagnosis.verdicts["GPU002"]
    cfg = RuleConfig(overrides={"GPU002": {"include_power_cap": 1.0}})
    assert by_rule(run(path, cfg))["GPU002"].evidence["share_by_reason"] == {"sw_power_cap": 1.0}


# ---- MEM002: device memory growth -----------------------------------------------------------------


def test_mem002_fires_on_10_mib_per_second(tmp_path: Path) -> None:
    # GIVEN memory.used rising 10 MiB/s for 300 s (a sample every 5 s), 80 GiB GPU
    t = np.arange(0, 301, 5)
    cols = {"memory.used": [list(2000.0 + 10 * t)], "memory.total": [[81920.0] * len(t)]}
    f = by_rule(run(write_smi(tmp_path / "leak.csv", cols, [list(T0 + t.astype(float))])))["MEM002"]
    assert f.evidence["growth_mib_per_s"] == pytest.approx(10.0)
    assert f.evidence["growth_mib_per_min"] == pytest.approx(600.0)
    assert f.evidence["r2"] == pytest.approx(1.0)
    assert f.evidence["used_last_mib"] == 5000.0
    assert f.evidence["minutes_until_full"] == pytest.approx((81920 - 5000) / 600, abs=0.1)
    assert f.expected_speedup == 1.0 and f.severity == "warning"  # full in ~128 min: not within the hour


def test_mem002_critical_when_full_within_the_hour(tmp_path: Path) -> None:
    t = np.arange(0, 301, 5)
    cols = {"memory.used": [list(2000.0 + 10 * t)], "memory.total": [[24576.0] * len(t)]}
    f = by_rule(run(write_smi(tmp_path / "leak.csv", cols, [list(T0 + t.astype(float))])))["MEM002"]
    assert f.evidence["minutes_until_full"] == pytest.approx((24576 - 5000) / 600, abs=0.1)
    assert f.severity == "critical"


def test_mem002_quiet_on_a_warm_up_ramp_that_levels_off(tmp_path: Path) -> None:
    t = np.arange(0, 301, 5)
    used = np.minimum(2000.0 + 100 * t, 12000.0)  # fills in 100 s, then flat
    cols = {"memory.used": [list(used)], "memory.total": [[81920.0] * len(t)]}
    ca = run(write_smi(tmp_path / "warm.csv", cols, [list(T0 + t.astype(float))]))
    assert "MEM002" not in by_rule(ca)
    assert "GPU 0" in ca.diagnosis.verdicts["MEM002"]


# ---- the colleague's format samples and the real nvidia-smi log --------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.iterdir() if p.name != "README.md"))
def test_every_sample_format_analyses(name: str) -> None:
    ca = run(SAMPLES / name)
    assert ca.summaries and ca.diagnosis.rules_run == ["GPU001", "GPU002", "GPU003", "MEM002"]


def test_nvidia_smi_sample_finds_the_unused_second_gpu() -> None:
    f = by_rule(run(SAMPLES / "nvidia_smi_units.csv"))["GPU003"]
    assert f.evidence["under_used_devices"] == [1]
    assert f.evidence["mean_util_pct_by_device"]["1"] == 0.0
    assert f.expected_speedup == pytest.approx(2.0, abs=1e-3)


def test_dcgmi_dmon_sample_is_quiet() -> None:
    ca = run(SAMPLES / "dcgmi_dmon.txt")
    assert ca.findings == [] and ca.time_base == "relative"


def test_real_nvidia_smi_log() -> None:
    # 90 samples a minute apart over 89 min of training on one 24 GiB GPU: the first 3 samples are at 0%
    ca = run(external(REAL_LOG))
    (summary,) = ca.summaries
    assert summary.util_mean_pct == pytest.approx(57.6, abs=0.1)
    assert summary.util_below_frac == pytest.approx(180 / 5407, abs=1e-4)
    # The 3 idle samples are start-up (before the first busy one): set aside, not idle time to remove.
    assert ca.findings == []  # memory is warm-up, not growth
    verdict = ca.diagnosis.verdicts["GPU001"]
    assert "0.0% of 87.1 min" in verdict and "start-up/shutdown idle 3.0 min set aside" in verdict
    assert "r2 0.10" in ca.diagnosis.verdicts["MEM002"]
    assert "GPU002" in ca.diagnosis.verdicts and "GPU003" not in ca.diagnosis.verdicts
