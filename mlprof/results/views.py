"""The report's Kernels and Operators views: ``kernels`` and ``operators`` of the JSON report (1.4).

Measured per rank by :func:`mlprof.analyzers.name_totals.name_views` (the events the run
store and ``mlprof compare`` total by name, so their figures agree); here they become
JSON rows. For one rank the figures are that rank's; for several, each figure is the
**mean over ranks** (a rank without that name counts as 0) and ``worst_rank`` /
``worst_rank_total_ms`` name the rank with the most time in it. At most :data:`TOP`
names are listed, most time first; the rest add up in one ``(other)`` row, so the rows'
totals are the whole of the analysed steps' kernel (or op) time.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from mlprof.analyzers.name_totals import NameTotals, job_name_totals, name_views
from mlprof.results.measurements import Analysis

TOP = 200
"""Kernel and op names listed in the JSON report; the rest are one ``(other)`` row."""
OTHER = "(other)"


def _round(x: float, digits: int = 6) -> float:
    return round(float(x), digits)


def _job_totals(analysis: Analysis) -> tuple[NameTotals, NameTotals]:
    """The kernel and op views summed over the ranks: folded in as a job's rank tasks returned, else here."""
    if analysis.name_totals is not None:
        return analysis.name_totals
    kernels, ops = job_name_totals()
    for position, ra in enumerate(analysis.ranks):  # in rank order
        k, o = ra.name_views if ra.name_views is not None else name_views(ra)
        kernels.add(ra.rank, k, position)
        ops.add(ra.rank, o, position)
    return kernels, ops


def _shapes(text: Any) -> Any:
    """``Input Dims`` as recorded (a JSON list of shapes), parsed; None when not recorded."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def kernels_and_operators(analysis: Analysis, top: int = TOP) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``kernels`` and ``operators`` lists of the JSON report (see the module doc and the README)."""
    if not analysis.ranks:
        return [], []
    kernel_totals, op_totals = _job_totals(analysis)
    steps = max(len(ra.steps) or 1 for ra in analysis.ranks)
    n_ranks = len(analysis.ranks)
    multi = n_ranks > 1
    kernels = kernel_totals.table(n_ranks)
    ops = op_totals.table(n_ranks)
    all_kernel_ns = float(kernels["total_ns"].sum())

    def head(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series | None]:
        if len(table) <= top:
            return table, None
        return table.iloc[:top], table.iloc[top:][[c for c in table.columns if c != "name"]].sum(numeric_only=True)

    def common(
        name: str, count: float, total: float, worst_rank: Any, worst_ns: Any, total_key: str = "total_ms"
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": name,
            "count": _round(count, 3) if multi else int(count),
            total_key: _round(total / 1e6),
            "mean_us": _round(total / count / 1e3, 3) if count else 0.0,
            "ms_per_step": _round(total / steps / 1e6),
        }
        if multi:
            row["worst_rank"] = None if pd.isna(worst_rank) else int(worst_rank)
            row["worst_rank_total_ms"] = None if pd.isna(worst_ns) else _round(float(worst_ns) / 1e6)
        return row

    kernel_rows: list[dict[str, Any]] = []
    shown, rest = head(kernels)
    cols = {c: shown[c].tolist() for c in shown.columns}
    for i in range(len(shown)):
        row = common(
            cols["name"][i], cols["count"][i], cols["total_ns"][i], cols["worst_rank"][i], cols["worst_total_ns"][i]
        )
        row["share_pct"] = _round(100.0 * cols["total_ns"][i] / all_kernel_ns, 3) if all_kernel_ns else 0.0
        row["class"] = cols["klass"][i]
        row["tensor_cores"] = bool(cols["tensor_cores"][i])
        launched = cols["launched_by"][i]
        row["launched_by"] = (
            None if launched is None or (isinstance(launched, float) and np.isnan(launched)) else str(launched)
        )
        kernel_rows.append(row)
    if rest is not None:
        row = common(OTHER, rest["count"], rest["total_ns"], None, None)
        row.update(
            share_pct=_round(100.0 * rest["total_ns"] / all_kernel_ns, 3),
            **{"class": None},
            tensor_cores=None,
            launched_by=None,
        )
        kernel_rows.append(row)

    op_rows: list[dict[str, Any]] = []
    shown, rest = head(ops)
    cols = {c: shown[c].tolist() for c in shown.columns}
    for i in range(len(shown)):
        row = common(
            cols["name"][i],
            cols["count"][i],
            cols["total_ns"][i],
            cols["worst_rank"][i],
            cols["worst_total_ns"][i],
            "host_total_ms",
        )
        row["host_self_ms"] = _round(cols["self_ns"][i] / 1e6)
        row["device_ms"] = _round(cols["device_ns"][i] / 1e6)
        stack = cols["call_stack"][i]
        row["input_shapes"] = _shapes(cols["input_dims"][i])
        row["call_stack"] = (
            None if stack is None or (isinstance(stack, float) and np.isnan(stack)) else str(stack).split(";")
        )
        op_rows.append(row)
    if rest is not None:
        row = common(OTHER, rest["count"], rest["total_ns"], None, None, "host_total_ms")
        row.update(
            host_self_ms=_round(rest["self_ns"] / 1e6),
            device_ms=_round(rest["device_ns"] / 1e6),
            input_shapes=None,
            call_stack=None,
        )
        op_rows.append(row)
    return kernel_rows, op_rows
