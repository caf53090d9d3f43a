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
    copies = gpu[gpu["kind"] == "memcpy"]
    names = copies["name"].astype("category")
    cats = [str(c) for c in names.cat.categories]
    direction_of = np.array([_direction(c) for c in cats] + [""], dtype=object)
    pageable_of = np.array([bool(_PAGEABLE.search(c)) for c in cats] + [False])
    codes = names.cat.codes.to_numpy()
    return pd.DataFrame(
        {
            "ts": copies["ts"].to_numpy(np.int64),
            "end": copies["end"].to_numpy(np.int64),
            "dur": copies["dur"].to_numpy(np.int64),
            "bytes": copies["bytes"].to_numpy(np.int64),
            "direction": direction_of[codes],
            "pageable": pageable_of[codes],
            "correlation": copies["correlation"].to_numpy(np.int64),
            "name": names.astype(str).to_numpy(),
        }
    )


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
    keyed = copies[copies["correlation"] > 0].drop_duplicates("correlation")
    lookup = pd.Series(keyed["direction"].to_numpy(), index=keyed["correlation"].to_numpy())
    corr = runtime["correlation"].to_numpy(np.int64)
    hit = pd.Series(corr).map(lookup)
    mask = hit.notna().to_numpy()
    out[mask] = hit[mask].to_numpy()
    return out
