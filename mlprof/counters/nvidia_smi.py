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
    # no id column: nvidia-smi prints the GPUs of one sample in index order with one timestamp
    return pd.Series(ts).groupby(ts).cumcount().to_numpy(np.int64)
