"""``nvidia-smi --query-gpu=... --format=csv[,nounits][,noheader]`` logs -> counters.

A log is what ``nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used
--format=csv -l 1 >> log.csv`` leaves behind: one row per GPU per sample, GPUs
interleaved, values with units (``37 %``, ``1234 MiB``) unless ``nounits``, missing
values as ``[N/A]`` / ``[Not Supported]``, and the header again each time the
command was restarted. Hand-rolled loggers (epoch-seconds ``timestamp``, no units)
are read the same way.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from mlprof.counters.metrics import MIB, make_counters
from mlprof.counters.text import epoch_ns, hex_or_float, to_float
from mlprof.errors import BadInputError

# query field -> (canonical metric, scale to canonical unit)
FIELDS: dict[str, tuple[str, float]] = {
    "utilization.gpu": ("gpu_util_pct", 1.0),
    "utilization.memory": ("mem_util_pct", 1.0),
    "memory.used": ("mem_used_bytes", MIB),
    "memory.total": ("mem_total_bytes", MIB),
    "memory.free": ("mem_free_bytes", MIB),
    "clocks.sm": ("sm_clock_mhz", 1.0),
    "clocks.current.sm": ("sm_clock_mhz", 1.0),
    "clocks.mem": ("mem_clock_mhz", 1.0),
    "clocks.current.memory": ("mem_clock_mhz", 1.0),
    "power.draw": ("power_w", 1.0),
    "power.draw.instant": ("power_w", 1.0),
    "temperature.gpu": ("temp_c", 1.0),
    "clocks_throttle_reasons.active": ("throttle_reasons", 1.0),
    "clocks_event_reasons.active": ("throttle_reasons", 1.0),
}
_UNIT_SCALE = {"MiB": MIB, "GiB": float(1 << 30), "KiB": 1024.0, "B": 1.0}
_DEVICE_FIELDS = ("index", "uuid", "pci.bus_id", "gpu_bus_id", "gpu_uuid")


def looks_like_nvidia_smi(header: str) -> bool:
    names = {_field(c) for c in header.split(",")}
    return bool(names & FIELDS.keys()) and not header.startswith("ts,device,metric")


def _field(column: str) -> str:
    """``memory.used [MiB]`` -> ``memory.used``."""
    return column.strip().split(" [", 1)[0].strip().lower()


def _unit(column: str) -> str | None:
    column = column.strip()
    return column[column.index("[") + 1 : column.rindex("]")] if "[" in column and column.endswith("]") else None


def parse_nvidia_smi(text: str, path: Path) -> pd.DataFrame:
    """Counters from an nvidia-smi CSV log (see module docstring)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = lines[0]
    columns = [c.strip() for c in header.split(",")]
    body = [ln for ln in lines[1:] if ln.strip() != header.strip()]  # header repeated on restart
    try:
        frame = pd.read_csv(io.StringIO("\n".join(body)), header=None, names=columns, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable nvidia-smi CSV log ({str(exc).splitlines()[0]})") from None
    fields = {_field(c): c for c in columns}
    if "timestamp" not in fields:
        raise BadInputError(f"{path}: nvidia-smi log without a timestamp column; add timestamp to --query-gpu")
    # a header line repeated mid-file with other spacing, or cut lines: drop rows whose time is not a time
    ts, base = epoch_ns(frame[fields["timestamp"]])
    ok = ts >= 0
    frame, ts = frame[ok].reset_index(drop=True), ts[ok]
    device = _devices(frame, fields, ts)
    out_ts, out_dev, out_metric, out_value = [], [], [], []
    for field, column in fields.items():
        if field not in FIELDS:
            continue
        metric, scale = FIELDS[field]
        unit = _unit(column)
        if unit in _UNIT_SCALE and metric.endswith("_bytes"):
            scale = _UNIT_SCALE[unit]
        raw = frame[column]
        values = hex_or_float(raw) if metric == "throttle_reasons" else to_float(raw) * scale
        out_ts.append(ts)
        out_dev.append(device)
        out_metric.append(np.full(len(frame), metric, dtype=object))
        out_value.append(values)
    if not out_ts:
        raise BadInputError(f"{path}: nvidia-smi log has no known metric columns ({', '.join(columns)})")
    counters = make_counters(
        np.concatenate(out_ts),
        np.concatenate(out_dev),
        np.concatenate(out_metric),
        np.concatenate(out_value),
        "nvidia-smi",
    )
    counters.attrs["time_base"] = base
    return counters


def _devices(frame: pd.DataFrame, fields: dict[str, str], ts: np.ndarray) -> np.ndarray:
    """GPU index per row: the ``index`` column, else ids in first-seen order, else position within a sample."""
    if "index" in fields:
        idx = pd.to_numeric(frame[fields["index"]], errors="coerce").fillna(-1)
        return idx.to_numpy(np.int64)
    for name in _DEVICE_FIELDS[1:]:
        if name in fields:
            codes, _ = pd.factorize(frame[fields[name]].astype(str).str.strip())
            return codes.astype(np.int64)
    # no id column: nvidia-smi prints the GPUs of one sample in index order, one row each, within a
    # few ms (each row is stamped when it is read): the rows of one sampling burst are the GPUs
    memory = to_float(frame[fields["memory.used"]]) if "memory.used" in fields else None
    return gpu_index_from_bursts(ts, memory)


BURST_SPLIT_RATIO = 3.0
"""A gap between rows this many times longer than the gaps inside a burst starts a new sample."""
MAX_GPUS = 16
"""More rows than this per burst is not one sample of a node's GPUs (a single GPU's log with a pause in it)."""


def gpu_index_from_bursts(ts: np.ndarray, memory: np.ndarray | None = None) -> np.ndarray:
    """GPU index of each row of a log without an index column, rows in file order.

    Rows of one sample come in a burst (gaps of microseconds to milliseconds, or equal
    timestamps), samples are the sampling interval apart: the gap that splits the sorted
    gaps with the largest ratio separates the two. A burst with as many rows as the usual
    burst is numbered in order; a shorter one (a GPU's row missing, a line cut) is matched
    to GPUs by memory used, nearest to each GPU's last value, so one missing row does not
    shift the others onto the wrong GPU.
    """
    n = len(ts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    gaps: np.ndarray = np.diff(ts.astype(np.int64)).astype(np.float64)
    threshold = _burst_gap(gaps)
    if threshold is None:  # no burst structure: one GPU, or no way to tell
        return np.zeros(n, dtype=np.int64)
    new_sample = (gaps > threshold) | (gaps < 0)
    burst = np.concatenate([np.zeros(1, np.int64), np.cumsum(new_sample, dtype=np.int64)])
    sizes = np.bincount(burst)
    gpus = int(np.bincount(sizes).argmax())
    if gpus < 2 or gpus > MAX_GPUS:  # one GPU (its samples merely uneven in time), or not bursts at all
        return np.zeros(n, dtype=np.int64)
    starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)[:-1]])
    position = np.arange(n) - starts[burst]
    out = np.where(sizes[burst] >= gpus, position % gpus, -1).astype(np.int64)
    short = np.flatnonzero(sizes < gpus)
    if len(short) and memory is not None:
        # Each GPU's memory as of its full bursts, looked up just before each short burst.
        by_gpu = [np.flatnonzero(out == g) for g in range(gpus)]
        for b in short.tolist():
            rows = np.arange(starts[b], starts[b] + sizes[b])
            last = np.full(gpus, np.nan)
            for g, done in enumerate(by_gpu):
                before = np.searchsorted(done, rows[0]) - 1
                if before >= 0:
                    last[g] = memory[done[before]]
            out[rows] = _match_by_memory(memory[rows], last)
    elif len(short):
        out[out < 0] = position[out < 0]
    return out


def _burst_gap(gaps: np.ndarray) -> float | None:
    """The gap length that separates samples from rows within a sample, or None when there is no such split."""
    positive = np.sort(np.maximum(gaps[gaps >= 0], 0).astype(np.float64))
    if len(positive) < 2:
        return None
    floor = max(float(positive[-1]) * 1e-6, 1_000.0)  # equal timestamps: a 1 us floor keeps ratios finite
    g = np.maximum(positive, floor)
    ratio = g[1:] / g[:-1]
    i = int(ratio.argmax())
    if ratio[i] < BURST_SPLIT_RATIO:
        return None
    return float(np.sqrt(g[i] * g[i + 1]))


def _match_by_memory(values: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Assign the rows of a short burst to distinct GPUs, in order, by memory used nearest each GPU's last value."""
    k, gpus = len(values), len(last)
    if np.isnan(last).all() or np.isnan(values).any():
        return np.arange(k, dtype=np.int64)
    best: tuple[float, tuple[int, ...]] | None = None
    # GPUs keep their order within a burst: choose the k of them (in order) that fit best.
    for combo in itertools.combinations(range(gpus), k):
        ref = last[list(combo)]
        cost = float(np.nansum(np.abs(values - ref))) + (1e18 if np.isnan(ref).any() else 0.0)
        if best is None or cost < best[0]:
            best = (cost, combo)
    assert best is not None
    return np.array(best[1], dtype=np.int64)
