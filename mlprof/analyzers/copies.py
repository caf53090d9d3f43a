"""Host<->device copies: direction, whether host memory was pageable, bytes and bandwidth.

Kineto and Nsight name copies ``Memcpy HtoD (Pageable -> Device)``; a pageable
source means the driver stages the data through a pinned bounce buffer and the
host call blocks until that is done, so the copy can neither overlap compute nor run
at full PCIe speed. The data-loading rule needs these facts per copy and per launch
call.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from mlprof.trace.memo import cached

_DIRECTION = re.compile(r"\b(HtoD|DtoH|DtoD|HtoH|PtoP)\b")
_PAGEABLE = re.compile(r"Pageable", re.IGNORECASE)


def copy_table(gpu: pd.DataFrame) -> pd.DataFrame:
    """One row per memcpy: ts, end, dur, bytes, direction (HtoD/DtoH/DtoD/...), pageable, correlation.

    Built once per ``gpu`` table (the causes and two rules read it); do not edit the result.
    """
    return cached(gpu, "copy_table", lambda: _copy_table(gpu))


def _copy_table(gpu: pd.DataFrame) -> pd.DataFrame:
    is_copy = (gpu["kind"] == "memcpy").to_numpy(dtype=bool)
    names = gpu["name"]
    if not isinstance(names.dtype, pd.CategoricalDtype):
        names = names.astype("category")
    categorical: pd.Categorical = names.array
    direction_of, pageable_of, name_of = _copy_kinds(categorical.categories)
    codes = categorical.codes[is_copy]

    def col(name: str) -> np.ndarray:
        return gpu[name].to_numpy(np.int64)[is_copy]

    return pd.DataFrame(
        {
            "ts": col("ts"),
            "end": col("end"),
            "dur": col("dur"),
            "bytes": col("bytes"),
            "direction": direction_of[codes],
            "pageable": pageable_of[codes],
            "correlation": col("correlation"),
            "name": name_of[codes],
        }
    )


def _copy_kinds(categories: pd.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction, pageable and the name of each category, then the values for a missing name (code -1)."""

    def compute() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cats = [str(c) for c in categories.tolist()]
        return (
            np.array([_direction(c) for c in cats] + [""], dtype=object),
            np.array([bool(_PAGEABLE.search(c)) for c in cats] + [False]),
            np.array([*cats, np.nan], dtype=object),
        )

    return cached(categories, "copy_kinds", compute)


def _direction(name: str) -> str:
    m = _DIRECTION.search(name)
    if m:
        return m.group(1)
    lowered = name.lower()
    if "host to device" in lowered or "htod" in lowered:
        return "HtoD"
    if "device to host" in lowered or "dtoh" in lowered:
        return "DtoH"
    return "other"


def bandwidth_gbs(copies: pd.DataFrame) -> float | None:
    """Achieved GB/s over copies with known size (10^9 bytes/s), or None."""
    sized = copies[(copies["bytes"] > 0) & (copies["dur"] > 0)]
    if len(sized) == 0:
        return None
    return float(sized["bytes"].sum()) / float(sized["dur"].sum())


def runtime_copy_direction(runtime: pd.DataFrame, copies: pd.DataFrame) -> np.ndarray:
    """For each runtime call, the direction of the copy it launched (joined on correlation), else ``""``."""
    return cached(runtime, "runtime_copy_direction", lambda: _runtime_copy_direction(runtime, copies), copies)


def _runtime_copy_direction(runtime: pd.DataFrame, copies: pd.DataFrame) -> np.ndarray:
    out = np.full(len(runtime), "", dtype=object)
    if len(runtime) == 0 or len(copies) == 0:
        return out
    c_corr = copies["correlation"].to_numpy(np.int64)
    positive = c_corr > 0
    # The first copy of each correlation id, sorted by id.
    keys, first = np.unique(c_corr[positive], return_index=True)
    if len(keys) == 0:
        return out
    direction = np.asarray(copies["direction"].to_numpy(), dtype=object)[positive][first]
    corr = runtime["correlation"].to_numpy(np.int64)
    pos = np.minimum(np.searchsorted(keys, corr), len(keys) - 1)
    hit = keys[pos] == corr
    out[hit] = direction[pos[hit]]
    return out
