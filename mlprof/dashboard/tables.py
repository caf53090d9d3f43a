"""The Run page's Kernels and Operators tables, from the store's per-run totals by name.

The rows are the ones :func:`mlprof.store.summary.op_rows` stored at ingest, measured by
:mod:`mlprof.analyzers.name_totals` (the same measurement ``mlprof compare`` uses):
device time per kernel name and inclusive host time per op name inside the analysed
steps, mean over ranks for a multi-rank run. When the run's report carries the
``kernels``/``operators`` lists (tensor-core use, launching op, self time, shapes), their
columns are added by name. No Streamlit here: plain frames in, plain frames out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

KERNEL_SORTS = ("total ms", "count", "mean µs", "ms per step", "name")
OP_SORTS = ("total ms", "count", "mean µs", "ms per step", "name")


def _base(ops: pd.DataFrame, kind: str) -> pd.DataFrame:
    rows = ops[ops["kind"] == kind]
    total = rows["total_ns"].to_numpy(np.float64)
    count = rows["count"].to_numpy(np.float64)
    mean_us = np.divide(total, count, out=np.zeros_like(total), where=count > 0) / 1e3
    return pd.DataFrame(
        {
            "name": rows["name"].astype(str).to_numpy(),
            "count": rows["count"].to_numpy(np.int64),
            "total ms": total / 1e6,
            "mean µs": mean_us,
            "ms per step": rows["ns_per_step"].to_numpy(np.float64) / 1e6,
        }
    )


def kernel_table(ops: pd.DataFrame, report: dict[str, Any] | None = None) -> pd.DataFrame:
    """Kernels by total GPU time: count, total, mean, share of all kernel time, ms per step."""
    table = _base(ops, "kernel")
    all_kernels = table["total ms"].sum()
    table.insert(4, "% of kernel time", 100.0 * table["total ms"] / all_kernels if all_kernels > 0 else 0.0)
    extra = pd.DataFrame((report or {}).get("kernels") or [])
    if len(extra) and "name" in extra:
        cols = [c for c in ("tensor_cores", "launched_by") if c in extra]
        if cols:
            extra = extra.drop_duplicates("name").set_index("name")[cols]
            extra = extra.rename(columns={"tensor_cores": "tensor cores", "launched_by": "launched by"})
            table = table.join(extra, on="name")
    return table


def op_table(ops: pd.DataFrame, report: dict[str, Any] | None = None) -> pd.DataFrame:
    """Host ops by inclusive time (children included): count, total, mean, ms per step."""
    table = _base(ops, "op")
    extra = pd.DataFrame((report or {}).get("operators") or [])
    if len(extra) and "name" in extra:
        keep = {
            "host_self_ms": "host self ms",
            "device_ms": "device ms",
            "input_shapes": "input shapes",
            "call_stack": "call stack",
        }
        cols = [c for c in keep if c in extra]
        if cols:
            extra = extra.drop_duplicates("name").set_index("name")[cols].rename(columns=keep)
            for c in ("input shapes", "call stack"):
                if c in extra:
                    extra[c] = extra[c].map(lambda v: v if isinstance(v, str) else "; ".join(map(str, v or [])))
            table = table.join(extra, on="name")
    return table


def search_sort(table: pd.DataFrame, query: str, sort: str, descending: bool = True) -> pd.DataFrame:
    """Rows whose name contains ``query`` (case-insensitive, literal text), sorted by ``sort``."""
    out = table
    if query:
        out = out[out["name"].str.contains(query, case=False, regex=False)]
    if sort in out:
        out = out.sort_values(sort, ascending=not descending, kind="stable")
    return out.reset_index(drop=True)
