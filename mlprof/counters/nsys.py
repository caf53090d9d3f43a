"""Nsight Systems GPU metrics (``nsys profile --gpu-metrics-devices=...``) -> counters.

``GPU_METRICS`` holds (timestamp, typeId, metricId, value) samples on the session
clock; ``TARGET_INFO_GPU_METRICS`` names each (typeId, metricId). The low byte of
``typeId`` is the GPU's ``TARGET_INFO_GPU.id``, mapped to its CUDA ordinal
(``cuDevice``) so counters line up with kernel ``deviceId``. Percent throughputs
become the DCGM-style ratios of :mod:`mlprof.counters.metrics`; metrics with no
canonical counterpart are dropped and listed in ``attrs["dropped_metrics"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlprof.counters.metrics import empty_counters, make_counters
from mlprof.errors import BadInputError
from mlprof.trace.nsys import check_nsys, open_export, session_start_ns, table_columns

if TYPE_CHECKING:  # imported where an export is read
    import sqlite3

NSYS_METRICS: dict[str, tuple[str, float]] = {
    "SMs Active [Throughput %]": ("sm_active", 0.01),
    "SM Active [Throughput %]": ("sm_active", 0.01),
    "Tensor Active [Throughput %]": ("tensor_active", 0.01),
    "Tensor Active / FP16 Active [Throughput %]": ("tensor_active", 0.01),
    "GR Active [Throughput %]": ("gr_engine_active", 0.01),
    "Compute Warps in Flight [Throughput %]": ("sm_occupancy", 0.01),
    "DRAM Bandwidth [Throughput %]": ("dram_active", 0.01),
    "GPC Clock Frequency [MHz]": ("sm_clock_mhz", 1.0),
}
"""nsys metric name -> (canonical metric, scale). Names differ per GPU family; these are the common ones."""


def read_nsys_metrics(path: Path) -> pd.DataFrame:
    """Counters from the GPU metrics of an nsys SQLite export (empty when it has none)."""
    import sqlite3

    try:
        with open_export(path) as con:
            schema = table_columns(con)
            check_nsys(path, schema)
            if not {"GPU_METRICS", "TARGET_INFO_GPU_METRICS"} <= schema.keys():
                out = empty_counters()
                out.attrs["notes"] = ["the nsys export has no GPU metrics (record with --gpu-metrics-devices=all)"]
                return out
            samples = pd.read_sql_query("SELECT timestamp, typeId, metricId, value FROM GPU_METRICS", con)
            info_cols = schema["TARGET_INFO_GPU_METRICS"]
            key = "typeId, metricId" if "typeId" in info_cols else "metricId"
            names = pd.read_sql_query(f"SELECT DISTINCT {key}, metricName FROM TARGET_INFO_GPU_METRICS", con)
            gpus = _gpu_ordinals(con, schema)
            start = session_start_ns(con, schema)
    except sqlite3.Error as exc:
        raise BadInputError(f"{path}: unreadable SQLite file ({exc})") from None
    on = ["typeId", "metricId"] if "typeId" in names else ["metricId"]
    merged = samples.merge(names, on=on, how="left")
    mapped = merged["metricName"].map({k: v[0] for k, v in NSYS_METRICS.items()})
    scale = merged["metricName"].map({k: v[1] for k, v in NSYS_METRICS.items()})
    known = mapped.notna().to_numpy()
    type_id = merged["typeId"].to_numpy(np.int64)
    device = pd.Series(type_id & 0xFF).map(gpus).fillna(pd.Series(type_id & 0xFF)).to_numpy(np.int64)
    ts = merged["timestamp"].to_numpy(np.int64) + (start or 0)
    out = make_counters(
        ts[known],
        device[known],
        mapped[known].to_numpy(dtype=object),
        merged["value"].to_numpy(np.float64)[known] * scale[known].to_numpy(np.float64),
        "nsys",
    )
    out.attrs["time_base"] = "epoch" if start is not None else "relative"
    out.attrs["dropped_metrics"] = sorted(set(merged.loc[~known, "metricName"].dropna().astype(str)))
    return out


def _gpu_ordinals(con: sqlite3.Connection, schema: dict[str, set[str]]) -> dict[int, int]:
    """nsys GPU id -> CUDA ordinal (they differ: the real 4x A100 export maps id 0 to cuDevice 3)."""
    if not {"id", "cuDevice"} <= schema.get("TARGET_INFO_GPU", set()):
        return {}
    return {int(i): int(c) for i, c in con.execute("SELECT id, cuDevice FROM TARGET_INFO_GPU") if c is not None}
