"""Counter measurements across devices and over time: who is idle when, throttle shares, memory trends.

Numbers only; the counter rules (:mod:`mlprof.rules.gpu_idle` and friends) judge them.
Samples are step functions: a sample holds until the next sample of the same device
and metric, the last one for the median sampling interval (as in
:mod:`mlprof.analyzers.counters`). To compare devices at the same instants, every
device's series is read at the union of all sample times.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pandas as pd

from mlprof.analyzers.counters import hold_ns, linear_trend
from mlprof.counters.metrics import THROTTLE_REASONS
from mlprof.trace.numbers import sorted_unique

NS_PER_S = 1_000_000_000


class UtilOverlap(msgspec.Struct, frozen=True):
    """Low-utilisation time of every device, split by what the other devices did meanwhile (ns)."""

    devices: list[int]
    covered_ns: int
    """Time during which every device has a utilisation sample in force."""
    all_low_ns: int
    """Time every device was under the threshold at once (the whole job waited)."""
    low_ns: dict[int, int] = msgspec.field(default_factory=dict)
    """Per device: time under the threshold."""
    low_while_others_busy_ns: dict[int, int] = msgspec.field(default_factory=dict)
    """Per device: time under the threshold while at least one other device was at or above it."""
    mean_util_pct: dict[int, float] = msgspec.field(default_factory=dict)
    """Per device: time-weighted mean utilisation over the covered time."""
    low_util_pct: float = 10.0
    startup_idle_ns: int = 0
    """Part of ``all_low_ns`` before the first sample in which any device is busy (start-up: loading, compiling)."""
    shutdown_idle_ns: int = 0
    """Part of ``all_low_ns`` after the last sample in which any device is busy (shutdown, the log left running)."""


def _series(counters: pd.DataFrame, metric: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per device: sample times (sorted, int64 ns) and values of one metric."""
    rows = counters[counters["metric"] == metric].sort_values(["device", "ts"], kind="stable")
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if len(rows) == 0:
        return out
    devices = rows["device"].to_numpy(np.int64)
    ts = rows["ts"].to_numpy(np.int64)
    values = rows["value"].to_numpy(np.float64)
    bounds = np.flatnonzero(np.diff(devices)) + 1
    for dev_ts, dev_values, dev in zip(
        np.split(ts, bounds), np.split(values, bounds), devices[np.r_[0, bounds]], strict=True
    ):
        out[int(dev)] = (dev_ts, dev_values)
    return out


def util_overlap(counters: pd.DataFrame, low_util_pct: float = 10.0) -> UtilOverlap | None:
    """When each device's ``gpu_util_pct`` is under ``low_util_pct``, and what the others did then.

    Returns None when no device has a utilisation sample.
    """
    series = _series(counters, "gpu_util_pct")
    if not series:
        return None
    devices = sorted(series)
    grid = sorted_unique(np.concatenate([ts for ts, _ in series.values()]))
    ends = np.empty(len(devices), np.int64)
    matrix = np.empty((len(devices), len(grid)), np.float64)
    for i, dev in enumerate(devices):
        ts, values = series[dev]
        ends[i] = ts[-1] + hold_ns(ts)[-1]
        idx = np.searchsorted(ts, grid, side="right") - 1
        matrix[i] = np.where(idx >= 0, values[np.clip(idx, 0, None)], np.nan)
    stop = int(ends.min())
    width = (np.minimum(np.append(grid[1:], stop), stop) - grid).clip(min=0)
    known = ~np.isnan(matrix).any(axis=0)
    weight = np.where(known, width, 0).astype(np.float64)
    low = matrix < low_util_pct
    busy = ~low & ~np.isnan(matrix)
    all_low = low.all(axis=0)
    busy_count = busy.sum(axis=0)
    covered = float(weight.sum())
    safe = np.nan_to_num(matrix)
    any_busy: np.ndarray = np.asarray(busy.any(axis=0), dtype=bool)
    startup = shutdown = 0
    if any_busy.any():
        first = int(any_busy.argmax())
        last = len(any_busy) - 1 - int(any_busy[::-1].argmax())
        idle_weight: np.ndarray = weight * np.asarray(all_low, dtype=np.float64)
        startup = int(idle_weight[:first].sum())
        shutdown = int(idle_weight[last + 1 :].sum())
    return UtilOverlap(
        devices=devices,
        covered_ns=int(covered),
        all_low_ns=int((weight * all_low).sum()),
        low_ns={d: int((weight * low[i]).sum()) for i, d in enumerate(devices)},
        low_while_others_busy_ns={
            d: int((weight * (low[i] & (busy_count - busy[i] > 0))).sum()) for i, d in enumerate(devices)
        },
        mean_util_pct={
            d: float((weight * safe[i]).sum() / covered) if covered > 0 else float("nan") for i, d in enumerate(devices)
        },
        low_util_pct=low_util_pct,
        startup_idle_ns=startup,
        shutdown_idle_ns=shutdown,
    )


class ThrottleShare(msgspec.Struct, frozen=True):
    """How long one device's clocks were held down for the given reasons."""

    device: int
    sampled_ns: int
    throttled_ns: int
    """Time with any of the asked-for reason bits set."""
    by_reason_ns: dict[str, int]
    sm_clock_throttled_mhz: float
    """Median SM clock over samples with a reason set (NaN without clock samples)."""
    sm_clock_free_mhz: float
    """Median SM clock over samples without (NaN without clock samples, or none free)."""


def throttle_shares(counters: pd.DataFrame, reasons: tuple[str, ...]) -> list[ThrottleShare]:
    """Per device with a ``throttle_reasons`` series: time with any of ``reasons`` set, and the SM clock then."""
    names = {name: bit for bit, name in THROTTLE_REASONS.items()}
    mask = 0
    for reason in reasons:
        mask |= names[reason]
    clocks = _series(counters, "sm_clock_mhz")
    out = []
    for dev, (ts, values) in sorted(_series(counters, "throttle_reasons").items()):
        bits = values.astype(np.int64)
        hold = hold_ns(ts).astype(np.float64)
        hit = (bits & mask) != 0
        by_reason = {
            name: int((hold * ((bits & bit) != 0)).sum())
            for bit, name in THROTTLE_REASONS.items()
            if (bits & bit).any()
        }
        slow, free = float("nan"), float("nan")
        if dev in clocks:
            c_ts, c_values = clocks[dev]
            idx = np.searchsorted(ts, c_ts, side="right") - 1
            ok = idx >= 0
            flag = hit[np.clip(idx, 0, None)] & ok
            if flag.any():
                slow = float(np.median(c_values[flag]))
            if (ok & ~flag).any():
                free = float(np.median(c_values[ok & ~flag]))
        out.append(
            ThrottleShare(
                device=dev,
                sampled_ns=int(hold.sum()),
                throttled_ns=int((hold * hit).sum()),
                by_reason_ns=by_reason,
                sm_clock_throttled_mhz=slow,
                sm_clock_free_mhz=free,
            )
        )
    return out


class MemoryTrend(msgspec.Struct, frozen=True):
    """Device memory in use over the recording (or a window of it)."""

    device: int
    samples: int
    span_ns: int
    slope_bytes_per_s: float
    r2: float
    late_slope_bytes_per_s: float
    """Slope over the second half of the time: warm-up flattens out, a leak does not."""
    first_bytes: float
    last_bytes: float
    total_bytes: float
    """Device capacity (NaN when the counters do not carry ``mem_total_bytes``)."""


def memory_trends(counters: pd.DataFrame, start_ns: int | None = None, end_ns: int | None = None) -> list[MemoryTrend]:
    """Per device: least-squares trend of ``mem_used_bytes`` (bytes per second), optionally within [start, end)."""
    totals = _series(counters, "mem_total_bytes")
    out = []
    for dev, (ts, values) in sorted(_series(counters, "mem_used_bytes").items()):
        keep = np.ones(len(ts), dtype=bool)
        if start_ns is not None:
            keep &= ts >= start_ns
        if end_ns is not None:
            keep &= ts < end_ns
        ts, values = ts[keep], values[keep]
        if len(ts) == 0:
            continue
        slope, r2 = linear_trend(ts, values)
        mid = ts[0] + (ts[-1] - ts[0]) // 2
        late = ts >= mid
        late_slope, _ = linear_trend(ts[late], values[late])
        total = float(totals[dev][1].max()) if dev in totals else float("nan")
        out.append(
            MemoryTrend(
                device=dev,
                samples=len(ts),
                span_ns=int(ts[-1] - ts[0]),
                slope_bytes_per_s=slope,
                r2=r2,
                late_slope_bytes_per_s=late_slope,
                first_bytes=float(values[0]),
                last_bytes=float(values[-1]),
                total_bytes=total,
            )
        )
    return out


__all__ = ["MemoryTrend", "ThrottleShare", "UtilOverlap", "memory_trends", "throttle_shares", "util_overlap"]
