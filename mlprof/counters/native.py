"""The mlprof collector's own counters file: CSV ``ts,device,metric,value,source`` (possibly gzipped).

Written by :mod:`mlprof.collectors` during a run: times are already epoch ns and
metric names already canonical, so reading it is a type check.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from mlprof.counters.metrics import COLUMNS, METRICS, SOURCES, make_counters
from mlprof.errors import BadInputError

HEADER = ",".join(COLUMNS)


def looks_like_native(first_line: str) -> bool:
    return first_line.strip().replace(" ", "") == HEADER


def parse_native(text: str, path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"metric": str, "source": str}, skipinitialspace=True)
        ts = pd.to_numeric(frame["ts"], errors="coerce")
        device = pd.to_numeric(frame["device"], errors="coerce")
        value = pd.to_numeric(frame["value"], errors="coerce")
    except (pd.errors.ParserError, ValueError, KeyError) as exc:
        raise BadInputError(f"{path}: not a readable mlprof counters file ({str(exc).splitlines()[0]})") from None
    ok = ts.notna() & device.notna() & frame["metric"].isin(METRICS.keys()) & frame["source"].isin(SOURCES)
    dropped = int((~ok).sum())
    out = make_counters(
        ts[ok].to_numpy(np.int64),
        device[ok].to_numpy(np.int64),
        frame.loc[ok, "metric"].to_numpy(dtype=object),
        value[ok].to_numpy(np.float64),
        frame.loc[ok, "source"].to_numpy(dtype=object),
    )
    out.attrs["time_base"] = "epoch"
    if dropped:
        out.attrs["notes"] = [f"{dropped} rows with an unknown metric/source or unreadable ts/device were skipped"]
    return out
