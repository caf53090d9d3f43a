"""DCGM output -> counters: ``dcgmi dmon`` text, dcgm-exporter Prometheus text and CSV dumps.

Field names and units follow dcgm-exporter's ``etc/default-counters.csv``
(``DCGM_FI_DEV_FB_USED`` in MiB, ``DCGM_FI_DEV_PCIE_TX_THROUGHPUT`` in KB/s,
``DCGM_FI_PROF_*`` activities as ratios 0..1, ``DCGM_FI_PROF_PCIE_TX_BYTES`` in
bytes/s) and the short column names ``dcgmi dmon -l`` lists (``SMACT``, ``FBUSD``...).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mlprof.counters.metrics import MIB, make_counters
from mlprof.counters.text import epoch_ns, to_float
from mlprof.errors import BadInputError

DCGM_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("gpu_util_pct", 1.0),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("mem_util_pct", 1.0),
    "DCGM_FI_DEV_FB_USED": ("mem_used_bytes", MIB),
    "DCGM_FI_DEV_FB_FREE": ("mem_free_bytes", MIB),
    "DCGM_FI_DEV_FB_TOTAL": ("mem_total_bytes", MIB),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_MEM_CLOCK": ("mem_clock_mhz", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("temp_c", 1.0),
    "DCGM_FI_DEV_PCIE_TX_THROUGHPUT": ("pcie_tx_bytes_per_s", 1024.0),
    "DCGM_FI_DEV_PCIE_RX_THROUGHPUT": ("pcie_rx_bytes_per_s", 1024.0),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("throttle_reasons", 1.0),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("throttle_reasons", 1.0),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gr_engine_active", 1.0),
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_active", 1.0),
    "DCGM_FI_PROF_SM_OCCUPANCY": ("sm_occupancy", 1.0),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("tensor_active", 1.0),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("dram_active", 1.0),
    "DCGM_FI_PROF_PCIE_TX_BYTES": ("pcie_tx_bytes_per_s", 1.0),
    "DCGM_FI_PROF_PCIE_RX_BYTES": ("pcie_rx_bytes_per_s", 1.0),
    "DCGM_FI_PROF_NVLINK_TX_BYTES": ("nvlink_tx_bytes_per_s", 1.0),
    "DCGM_FI_PROF_NVLINK_RX_BYTES": ("nvlink_rx_bytes_per_s", 1.0),
}
"""DCGM field name -> (canonical metric, scale to its unit)."""

DMON_COLUMNS: dict[str, str] = {
    "GPUTL": "DCGM_FI_DEV_GPU_UTIL",
    "MCUTL": "DCGM_FI_DEV_MEM_COPY_UTIL",
    "FBUSD": "DCGM_FI_DEV_FB_USED",
    "FBFRE": "DCGM_FI_DEV_FB_FREE",
    "FBTTL": "DCGM_FI_DEV_FB_TOTAL",
    "SMCLK": "DCGM_FI_DEV_SM_CLOCK",
    "MMCLK": "DCGM_FI_DEV_MEM_CLOCK",
    "POWER": "DCGM_FI_DEV_POWER_USAGE",
    "TMPTR": "DCGM_FI_DEV_GPU_TEMP",
    "GRACT": "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "SMACT": "DCGM_FI_PROF_SM_ACTIVE",
    "SMOCC": "DCGM_FI_PROF_SM_OCCUPANCY",
    "TENSO": "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "DRAMA": "DCGM_FI_PROF_DRAM_ACTIVE",
    "PCITX": "DCGM_FI_PROF_PCIE_TX_BYTES",
    "PCIRX": "DCGM_FI_PROF_PCIE_RX_BYTES",
    "NVLTX": "DCGM_FI_PROF_NVLINK_TX_BYTES",
    "NVLRX": "DCGM_FI_PROF_NVLINK_RX_BYTES",
}
"""``dcgmi dmon`` column -> DCGM field (``dcgmi dmon -l``: long name, short name, field id)."""

DEFAULT_INTERVAL_NS = 1_000_000_000
"""``dcgmi dmon -d`` default (1000 ms); dmon prints no times, so samples are this far apart."""

_PROM_LINE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)(?:\s+(?P<ts>-?\d+))?\s*$"
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def looks_like_dmon(first_line: str) -> bool:
    return first_line.lstrip().lower().startswith(("#entity", "# entity"))


def looks_like_prometheus(lines: list[str]) -> bool:
    for line in lines[:20]:
        if line.startswith(("# HELP DCGM_", "# TYPE DCGM_")) or (
            line.startswith("DCGM_FI_") and _PROM_LINE.match(line)
        ):
            return True
    return False


def _sample_index(keys: pd.Series) -> np.ndarray:
    """Which sample each row belongs to, in files without times: a key seen again starts a new sample."""
    return keys.groupby(keys).cumcount().to_numpy(np.int64)


def parse_dmon(text: str, path: Path, interval_ns: int = DEFAULT_INTERVAL_NS) -> pd.DataFrame:
    """``dcgmi dmon -e ...`` output: ``#Entity`` header, an ``ID`` units line, ``GPU 0  ...`` rows.

    dmon prints no timestamps; sample ``k`` gets ``k * interval_ns`` (time base ``relative``).
    """
    header: list[str] = []
    rows: list[tuple[int, list[str]]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            header = stripped.lstrip("#").split()[1:]  # drop "Entity"
            continue
        parts = stripped.split()
        if len(parts) >= 2 and parts[0].upper() == "GPU" and parts[1].isdigit():
            rows.append((int(parts[1]), parts[2:]))
        # the "ID  W  C" units line, "Id", errors and other entities (switches, links) are skipped
    if not header or not rows:
        raise BadInputError(f"{path}: dcgmi dmon output without a #Entity header or GPU rows")
    known = [(i, DMON_COLUMNS[h]) for i, h in enumerate(header) if h in DMON_COLUMNS]
    if not known:
        raise BadInputError(f"{path}: dcgmi dmon columns not known to mlprof ({' '.join(header)})")
    gpus = pd.Series([g for g, _ in rows])
    ts = _sample_index(gpus) * interval_ns
    cells = pd.DataFrame([vals + [""] * (len(header) - len(vals)) for _, vals in rows]).iloc[:, : len(header)]
    parts_ts, parts_dev, parts_metric, parts_value = [], [], [], []
    for i, field in known:
        metric, scale = DCGM_FIELDS[field]
        parts_ts.append(ts)
        parts_dev.append(gpus.to_numpy(np.int64))
        parts_metric.append(np.full(len(rows), metric, dtype=object))
        parts_value.append(to_float(cells.iloc[:, i]) * scale)
    out = make_counters(
        np.concatenate(parts_ts),
        np.concatenate(parts_dev),
        np.concatenate(parts_metric),
        np.concatenate(parts_value),
        "dcgm",
    )
    out.attrs["time_base"] = "relative"
    return out


def parse_prometheus(text: str, path: Path, interval_ns: int = DEFAULT_INTERVAL_NS) -> pd.DataFrame:
    """dcgm-exporter ``/metrics`` text, one scrape or several appended; optional ms timestamps per sample.

    Samples without a timestamp are numbered by scrape (a (metric, gpu) pair seen again
    starts the next scrape) and spaced ``interval_ns`` apart (time base ``relative``).
    """
    names, gpus, values, stamps = [], [], [], []
    for line in text.splitlines():
        if not line.startswith("DCGM_FI_"):
            continue  # HELP/TYPE comments, other exporters' metrics
        m = _PROM_LINE.match(line.strip())
        if m is None or m.group("name") not in DCGM_FIELDS:
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        gpu = labels.get("gpu", "0")
        names.append(m.group("name"))
        gpus.append(int(gpu) if gpu.isdigit() else -1)
        values.append(m.group("value"))
        stamps.append(m.group("ts"))
    if not names:
        raise BadInputError(f"{path}: no DCGM_FI_* samples in the Prometheus text")
    frame = pd.DataFrame({"name": names, "gpu": gpus, "value": values, "ts": stamps})
    if frame["ts"].notna().all():
        ts = pd.to_numeric(frame["ts"]).to_numpy(np.int64) * 1_000_000  # exposition format: ms
        base = "epoch"
    else:
        ts = _sample_index(frame["name"] + "/" + frame["gpu"].astype(str)) * interval_ns
        base = "relative"
    out = _from_fields(frame["name"], frame["gpu"].to_numpy(np.int64), frame["value"], ts)
    out.attrs["time_base"] = base
    return out


def looks_like_dcgm_csv(header: str) -> bool:
    return "DCGM_FI_" in header or bool(re.search(r"(^|,)\s*(field|metric|metric_name|__name__)\s*(,|$)", header))


def parse_dcgm_csv(text: str, path: Path) -> pd.DataFrame:
    """CSV dumps of exporter samples, either long (``timestamp,gpu,metric,value``) or wide (one DCGM_FI column each).

    There is no standard dump format; these are the two shapes scripts scraping
    dcgm-exporter write (column names matched case-insensitively).
    """
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable DCGM CSV ({str(exc).splitlines()[0]})") from None
    lower = {c.strip().lower(): c for c in frame.columns}
    time_col = next((lower[c] for c in ("timestamp", "time", "ts") if c in lower), None)
    gpu_col = next((lower[c] for c in ("gpu", "gpu_id", "device", "index") if c in lower), None)
    if time_col is None:
        raise BadInputError(f"{path}: DCGM CSV without a timestamp/time column")
    gpu = pd.to_numeric(frame[gpu_col], errors="coerce").fillna(-1) if gpu_col else pd.Series(0, index=frame.index)
    metric_col = next((lower[c] for c in ("field", "metric", "metric_name", "__name__") if c in lower), None)
    if metric_col is not None and "value" in lower:
        ts, base = epoch_ns(frame[time_col])
        out = _from_fields(frame[metric_col].str.strip(), gpu.to_numpy(np.int64), frame[lower["value"]], ts)
    else:
        wide = [c for c in frame.columns if c.strip() in DCGM_FIELDS]
        if not wide:
            raise BadInputError(f"{path}: DCGM CSV with no DCGM_FI_* columns")
        long = frame.melt(id_vars=[time_col], value_vars=wide, var_name="field", value_name="value")
        dev = np.tile(gpu.to_numpy(np.int64), len(wide))
        ts, base = epoch_ns(long[time_col])
        out = _from_fields(long["field"].str.strip(), dev, long["value"], ts)
    out.attrs["time_base"] = base
    return out


def _from_fields(fields: pd.Series, gpu: np.ndarray, raw: pd.Series, ts: np.ndarray) -> pd.DataFrame:
    known = fields.isin(DCGM_FIELDS.keys()).to_numpy() & (ts >= 0)
    fields = fields[known]
    metric = fields.map({f: m for f, (m, _) in DCGM_FIELDS.items()}).to_numpy(dtype=object)
    scale = fields.map({f: s for f, (_, s) in DCGM_FIELDS.items()}).to_numpy(np.float64)
    return make_counters(ts[known], gpu[known], metric, to_float(raw[known]) * scale, "dcgm")
