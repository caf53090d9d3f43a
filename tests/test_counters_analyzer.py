"""Counter measurements: per-device summaries and the join to step windows, with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlprof.analyzers.counters import counters_per_step, linear_trend, summaries_frame, summarize_devices
from mlprof.counters import load_counters
from mlprof.counters.metrics import MIB, make_counters

from conftest import external

S = 1_000_000_000
T0 = 1_700_000_000 * S


def table(rows: list[tuple[int, int, str, float]]) -> pd.DataFrame:
    ts, dev, metric, value = zip(*rows, strict=True)
    return make_counters(np.array(ts) + T0, np.array(dev), list(metric), np.array(value, dtype=float), "nvml")


def test_summary_hand_numbers() -> None:
    rows = [(i * S, 0, "gpu_util_pct", v) for i, v in enumerate([0, 100, 50, 5])]
    rows += [(i * S, 0, "mem_used_bytes", 1000.0 + 10 * i) for i in range(4)]  # +10 B/s exactly
    rows += [(0, 0, "mem_total_bytes", 2000.0)]
    rows += [(i * S, 0, "throttle_reasons", v) for i, v in enumerate([0, 4, 4 | 0x40, 0])]
    rows += [(i * S, 0, "sm_active", v) for i, v in enumerate([0.2, 0.4])]
    rows += [(0, 1, "gpu_util_pct", 90.0)]
    (d0, d1) = summarize_devices(table(rows), low_util_pct=10.0)
    assert d0.device == 0 and d1.device == 1
    assert d0.util_mean_pct == pytest.approx(38.75)
    assert d0.util_p5_pct == pytest.approx(np.percentile([0, 100, 50, 5], 5))
    assert d0.util_below_frac == pytest.approx(0.5)  # samples 0 and 5, each held 1 s of 4 s
    assert d0.mem_growth_bytes_per_s == pytest.approx(10.0) and d0.mem_growth_r2 == pytest.approx(1.0)
    assert d0.mem_used_max_bytes == 1030 and d0.mem_used_max_frac == pytest.approx(1030 / 2000)
    assert d0.throttle_frac == {"sw_power_cap": pytest.approx(0.5), "hw_thermal_slowdown": pytest.approx(0.25)}
    assert d0.sm_active_mean == pytest.approx(0.3)
    assert d0.span_ns == 3 * S
    assert np.isnan(d1.mem_growth_bytes_per_s) and np.isnan(d1.sm_active_mean)
    frame = summaries_frame([d0, d1])
    assert frame.loc[0, "throttle_sw_power_cap_frac"] == pytest.approx(0.5)


def test_linear_trend_noise_and_flat() -> None:
    t = np.arange(5, dtype=np.int64) * S
    slope, r2 = linear_trend(t, np.array([1.0, 1.0, 1.0, 1.0, 1.0]))
    assert slope == 0 and r2 == 1.0
    slope, r2 = linear_trend(t, np.array([0.0, 2.0, 0.0, 2.0, 0.0]))
    assert slope == pytest.approx(0.0) and r2 == pytest.approx(0.0)
    assert all(np.isnan(linear_trend(t[:1], np.array([1.0]))))


def test_counters_per_step() -> None:
    rows = [(i * S // 2, 0, "gpu_util_pct", float(10 * i)) for i in range(8)]  # 0,10,..,70 every 0.5 s
    rows += [(0, 0, "mem_used_bytes", 100.0), (int(1.5 * S), 0, "mem_used_bytes", 200.0)]
    rows += [(0, 1, "gpu_util_pct", 99.0)]
    steps = pd.DataFrame({"step": [7, 8, 9], "ts": [T0, T0 + S, T0 + 10 * S], "end": [T0 + S, T0 + 2 * S, T0 + 11 * S]})
    out = counters_per_step(table(rows), steps)
    d0 = out[out["device"] == 0].set_index("step")
    assert d0.loc[7, "util_mean_pct"] == pytest.approx(5.0)  # samples at 0 and 0.5 s
    assert d0.loc[8, "util_mean_pct"] == pytest.approx(25.0)
    assert np.isnan(d0.loc[9, "util_mean_pct"]) and d0.loc[9, "util_samples"] == 0
    assert d0.loc[7, "mem_used_at_start_bytes"] == 100 and d0.loc[8, "mem_used_at_start_bytes"] == 100
    assert d0.loc[9, "mem_used_at_start_bytes"] == 200
    d1 = out[out["device"] == 1].set_index("step")
    assert d1.loc[7, "util_mean_pct"] == 99.0 and np.isnan(d1.loc[8, "util_mean_pct"])
    assert len(counters_per_step(table(rows), steps.iloc[:0])) == 0


def test_real_nvidia_smi_log_summary() -> None:
    counters = load_counters(external("RCKola__Rectified-Point-Flow/gpu_usage.csv"))
    (summary,) = summarize_devices(counters, low_util_pct=10.0)
    assert summary.util_mean_pct == pytest.approx(57.678, abs=1e-3)
    assert summary.mem_used_max_bytes == 10904 * MIB
    assert summary.mem_used_max_frac == pytest.approx(10904 / 24576)
    assert summary.span_ns == 5347 * S  # ~89 minutes at 1/60 Hz
    assert summary.mem_growth_bytes_per_s > 0 and 0 < summary.mem_growth_r2 < 0.2  # ramp then flat: weak trend
    assert summary.throttle_frac == {}
