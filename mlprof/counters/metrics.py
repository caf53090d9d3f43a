"""The counters table: one row per (time, device, metric) sample, canonical names and units.

NVML, DCGM, nvidia-smi and Nsight Systems name the same quantity differently and
in different units (MiB vs bytes, percent vs ratio, KB/s vs bytes/s). Every parser
converts to the canonical metric names below, in the units stated here, once; the
analyzers and rules only ever see these names.

Columns (:data:`COLUMNS`): ``ts`` int64 ns since the Unix epoch (or since the start
of the recording when the source carries no wall clock; ``frame.attrs["time_base"]``
says which), ``device`` int64 GPU index, ``metric`` categorical, ``value`` float64,
``source`` categorical (``nvml``, ``dcgm``, ``nvidia-smi``, ``nsys``).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import pandas as pd

COLUMNS: tuple[str, ...] = ("ts", "device", "metric", "value", "source")
SOURCES: tuple[str, ...] = ("nvml", "dcgm", "nvidia-smi", "nsys")
MIB = 1 << 20


class Metric(msgspec.Struct, frozen=True):
    """A canonical counter: its unit and what it means."""

    name: str
    unit: str
    help: str


_METRICS: tuple[Metric, ...] = (
    Metric("gpu_util_pct", "%", "share of the sample period a kernel was running (NVML utilization.gpu)"),
    Metric("mem_util_pct", "%", "share of the sample period device memory was read or written (NVML)"),
    Metric("mem_used_bytes", "bytes", "device memory in use (all processes)"),
    Metric("mem_total_bytes", "bytes", "device memory capacity"),
    Metric("mem_free_bytes", "bytes", "device memory free"),
    Metric("sm_clock_mhz", "MHz", "SM clock"),
    Metric("mem_clock_mhz", "MHz", "memory clock"),
    Metric("power_w", "W", "board power draw"),
    Metric("temp_c", "°C", "GPU core temperature"),
    Metric("pcie_tx_bytes_per_s", "bytes/s", "PCIe transmit throughput (device to host)"),
    Metric("pcie_rx_bytes_per_s", "bytes/s", "PCIe receive throughput (host to device)"),
    Metric("nvlink_tx_bytes_per_s", "bytes/s", "NVLink transmit throughput, all links"),
    Metric("nvlink_rx_bytes_per_s", "bytes/s", "NVLink receive throughput, all links"),
    Metric("throttle_reasons", "bitmask", "NVML clocks event (throttle) reasons; bits in THROTTLE_REASONS"),
    Metric("gr_engine_active", "ratio", "share of time the graphics/compute engine was active (DCGM 1001)"),
    Metric("sm_active", "ratio", "share of cycles an SM had at least one warp, averaged over SMs (DCGM 1002)"),
    Metric("sm_occupancy", "ratio", "resident warps over the maximum, averaged over SMs (DCGM 1003)"),
    Metric("tensor_active", "ratio", "share of cycles the tensor pipe was active (DCGM 1004)"),
    Metric("dram_active", "ratio", "share of cycles the memory interface was busy (DCGM 1005)"),
)

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}
"""Canonical metric name -> :class:`Metric`."""

THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
"""NVML ``nvmlClocksEventReasons`` bits (``clocks_event_reasons.active`` in nvidia-smi)."""


def empty_counters() -> pd.DataFrame:
    """A counters table with no rows and the right dtypes."""
    return make_counters(np.empty(0, np.int64), np.empty(0, np.int64), [], np.empty(0), [])


def make_counters(
    ts: np.ndarray,
    device: np.ndarray,
    metric: Sequence[str] | np.ndarray,
    value: np.ndarray,
    source: Sequence[str] | np.ndarray | str,
) -> pd.DataFrame:
    """Assemble a counters table: drops NaN values, sorts by (ts, device, metric).

    ``metric`` must hold canonical names (a ``KeyError`` otherwise: a parser bug).
    """
    metric_arr = np.asarray(metric, dtype=object)
    unknown = set(pd.unique(metric_arr)) - METRICS.keys()
    if unknown:
        raise KeyError(f"not canonical metric names: {sorted(unknown)}")
    n = len(metric_arr)
    source_arr = np.full(n, source, dtype=object) if isinstance(source, str) else np.asarray(source, dtype=object)
    frame = pd.DataFrame(
        {
            "ts": np.asarray(ts, dtype=np.int64),
            "device": np.asarray(device, dtype=np.int64),
            "metric": pd.Categorical(metric_arr, categories=sorted(METRICS)),
            "value": np.asarray(value, dtype=np.float64),
            "source": pd.Categorical(source_arr, categories=list(SOURCES)),
        }
    )
    frame = frame[np.isfinite(frame["value"].to_numpy())]
    return frame.sort_values(["ts", "device", "metric"], kind="stable", ignore_index=True)


def concat_counters(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several counters tables as one (e.g. NVML and DCGM samples of the same run)."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_counters()
    out = pd.concat(frames, ignore_index=True)
    for col in ("metric", "source"):
        out[col] = pd.Categorical(out[col].astype(object), categories=frames[0][col].cat.categories)
    return out.sort_values(["ts", "device", "metric"], kind="stable", ignore_index=True)
