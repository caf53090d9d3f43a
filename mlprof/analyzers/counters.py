"""Measurements over GPU counters: per-device utilisation, memory growth, throttling, and per-step joins.

Numbers only: no thresholds, no advice (the rules judge). Counters are samples, so
time-weighted figures hold each sample until the next one of the same device and
metric (the last sample is held for the median sampling interval); plain means are
over samples. Inputs are the table of :mod:`mlprof.counters.metrics` and, for the
step join, a steps table with int64 ns ``ts``/``end``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlprof.counters.metrics import THROTTLE_REASONS

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class DeviceCounterSummary:
    """What the counters say about one GPU over the recording (NaN where the metric was not sampled)."""

    device: int
    samples: int
    """Rows of the counters table for this device (all metrics)."""
    span_ns: int
    """First to last sample of any metric."""
    util_mean_pct: float
    util_p5_pct: float
    util_p95_pct: float
    util_below_frac: float
    """Share of sampled time with ``gpu_util_pct`` below the ``low_util_pct`` argument."""
    low_util_pct: float
    mem_growth_bytes_per_s: float
    """Least-squares slope of ``mem_used_bytes`` over time."""
    mem_growth_r2: float
    """How well a straight line explains memory use (1 = steady growth, 0 = no trend)."""
    mem_used_max_bytes: float
    mem_total_bytes: float
    mem_used_max_frac: float
    """``mem_used_max_bytes / mem_total_bytes``."""
    sm_active_mean: float
    """Mean DCGM/nsys SM active ratio (0..1)."""
    throttle_frac: dict[str, float] = field(default_factory=dict)
    """Share of sampled time each throttle reason bit was set, by reason name (only reasons seen)."""


def hold_ns(ts: np.ndarray) -> np.ndarray:
    """How long each sample stands for: until the next one; the last for the median interval."""
    if len(ts) == 0:
        return np.empty(0, np.int64)
    gaps = np.diff(ts)
    last = int(np.median(gaps)) if len(gaps) else 0
    return np.append(gaps, last).astype(np.int64)


def _series(counters: pd.DataFrame, device: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    rows = counters[(counters["device"] == device) & (counters["metric"] == metric)]
    order = np.argsort(rows["ts"].to_numpy(), kind="stable")
    return rows["ts"].to_numpy(np.int64)[order], rows["value"].to_numpy(np.float64)[order]


def linear_trend(ts_ns: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares slope (value units per second) and r² of ``values`` over time; NaN below 2 points."""
    if len(values) < 2:
        return float("nan"), float("nan")
    t = (ts_ns - ts_ns[0]).astype(np.float64) / NS_PER_S
    t_mean, v_mean = t.mean(), values.mean()
    sxx = float(((t - t_mean) ** 2).sum())
    if sxx == 0:
        return float("nan"), float("nan")
    sxy = float(((t - t_mean) * (values - v_mean)).sum())
    slope = sxy / sxx
    ss_tot = float(((values - v_mean) ** 2).sum())
    ss_res = float(((values - (v_mean + slope * (t - t_mean))) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return slope, r2


def _throttle_shares(ts: np.ndarray, values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    hold = hold_ns(ts).astype(np.float64)
    total = hold.sum()
    if total <= 0:
        hold, total = np.ones(len(values)), float(len(values))
    bits = np.array(list(THROTTLE_REASONS), dtype=np.int64)
    masks = (values.astype(np.int64)[:, None] & bits[None, :]) != 0
    shares = (masks * hold[:, None]).sum(axis=0) / total
    return {THROTTLE_REASONS[int(b)]: float(s) for b, s in zip(bits, shares, strict=True) if masks[:, bits == b].any()}


def summarize_devices(counters: pd.DataFrame, *, low_util_pct: float = 10.0) -> list[DeviceCounterSummary]:
    """One :class:`DeviceCounterSummary` per device in the counters table, sorted by device."""
    out: list[DeviceCounterSummary] = []
    for device, rows in counters.groupby("device", sort=True):
        dev = int(device)
        u_ts, util = _series(rows, dev, "gpu_util_pct")
        hold = hold_ns(u_ts).astype(np.float64)
        below = float((hold * (util < low_util_pct)).sum() / hold.sum()) if hold.sum() > 0 else float("nan")
        m_ts, mem = _series(rows, dev, "mem_used_bytes")
        slope, r2 = linear_trend(m_ts, mem)
        _, total = _series(rows, dev, "mem_total_bytes")
        mem_max = float(mem.max()) if len(mem) else float("nan")
        total_max = float(total.max()) if len(total) else float("nan")
        _, sm = _series(rows, dev, "sm_active")
        t_ts, throttle = _series(rows, dev, "throttle_reasons")
        ts_all = rows["ts"].to_numpy(np.int64)
        out.append(
            DeviceCounterSummary(
                device=dev,
                samples=len(rows),
                span_ns=int(ts_all.max() - ts_all.min()) if len(ts_all) else 0,
                util_mean_pct=float(util.mean()) if len(util) else float("nan"),
                util_p5_pct=float(np.percentile(util, 5)) if len(util) else float("nan"),
                util_p95_pct=float(np.percentile(util, 95)) if len(util) else float("nan"),
                util_below_frac=below,
                low_util_pct=low_util_pct,
                mem_growth_bytes_per_s=slope,
                mem_growth_r2=r2,
                mem_used_max_bytes=mem_max,
                mem_total_bytes=total_max,
                mem_used_max_frac=mem_max / total_max if total_max > 0 else float("nan"),
                sm_active_mean=float(sm.mean()) if len(sm) else float("nan"),
                throttle_frac=_throttle_shares(t_ts, throttle),
            )
        )
    return out


def summaries_frame(summaries: list[DeviceCounterSummary]) -> pd.DataFrame:
    """The summaries as a table (throttle shares as ``throttle_<reason>_frac`` columns)."""
    rows = []
    for s in summaries:
        row = {k: v for k, v in s.__dict__.items() if k != "throttle_frac"}
        row.update({f"throttle_{k}_frac": v for k, v in s.throttle_frac.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _window_means(ts: np.ndarray, values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mean of the samples with ``start <= ts < end`` for each window; NaN for windows without samples."""
    lo = np.searchsorted(ts, starts, side="left")
    hi = np.searchsorted(ts, ends, side="left")
    sums = np.concatenate([[0.0], np.cumsum(values)])
    n = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def _value_at(ts: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The last sample at or before each time (NaN before the first sample)."""
    idx = np.searchsorted(ts, at, side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)] if len(values) else np.nan, np.nan)


def counters_per_step(counters: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Join counter samples to step windows, per device.

    Returns one row per (step, device): ``step``, ``device``, ``ts``, ``end``,
    ``util_mean_pct`` and ``sm_active_mean`` (mean of samples inside ``[ts, end)``),
    ``util_samples`` (how many), ``mem_used_at_start_bytes`` (last sample at or
    before the step start). Counters and steps must share a clock (both epoch ns).
    """
    columns = [
        "step",
        "device",
        "ts",
        "end",
        "util_mean_pct",
        "util_samples",
        "sm_active_mean",
        "mem_used_at_start_bytes",
    ]
    if len(steps) == 0 or len(counters) == 0:
        return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in columns})
    starts = steps["ts"].to_numpy(np.int64)
    ends = steps["end"].to_numpy(np.int64)
    frames = []
    for device in np.unique(counters["device"].to_numpy(np.int64)):
        dev = int(device)
        u_ts, util = _series(counters, dev, "gpu_util_pct")
        s_ts, sm = _series(counters, dev, "sm_active")
        m_ts, mem = _series(counters, dev, "mem_used_bytes")
        frames.append(
            pd.DataFrame(
                {
                    "step": steps["step"].to_numpy(),
                    "device": np.full(len(steps), dev, np.int64),
                    "ts": starts,
                    "end": ends,
                    "util_mean_pct": _window_means(u_ts, util, starts, ends),
                    "util_samples": np.searchsorted(u_ts, ends) - np.searchsorted(u_ts, starts),
                    "sm_active_mean": _window_means(s_ts, sm, starts, ends),
                    "mem_used_at_start_bytes": _value_at(m_ts, mem, starts),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[columns]


__all__ = [
    "DeviceCounterSummary",
    "counters_per_step",
    "linear_trend",
    "summaries_frame",
    "summarize_devices",
]
