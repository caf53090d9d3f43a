"""Kernels and ops matched by name across two runs: count and time per step in each.

A kernel, memcpy or memset belongs to the step in which it was *launched* (the CUDA
runtime call with the same correlation id), or, when the launch was not recorded, to
the step in which it started; HTA's ``TraceDiff`` assigns GPU events to iterations
the same way, so the two agree on the same pair (``tests/test_compare.py``). A CPU op
(``cpu_op``/``Operator`` host range, ``ProfilerStep#N`` itself excluded) belongs to the step in
which it started. Counts
and times are totals over the analysed steps divided by the number of steps (for a
job: over all ranks' steps), so runs with different step counts compare fairly.

Time here is the *sum of durations* by name: kernels on parallel streams and nested
ops overlap, so these sums do not add up to the step-time change; the step breakdown
categories do (:mod:`mlprof.compare.steps`).

Kernel names differ between GPU generations (``volta_sgemm_128x32_nt`` on a V100,
``cutlass_80_tensorop_s1688gemm_...`` on an A100), so every device row also carries its
*class* (:func:`mlprof.analyzers.kernels.classify_name`: ``gemm_fp32``, ``gemm_tensor``,
``comm``, ``memory_bound``..., and ``memcpy``/``memset``), and :meth:`NameDiff.by_class`
sums the same figures per class: that view still matches across GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlprof.analysis import Analysis
from mlprof.analyzers.kernels import classify_name
from mlprof.analyzers.name_totals import rank_events

NS_PER_MS = 1_000_000


@dataclass
class NameDiff:
    """One row per (kind, klass, name): ``base_count``/``new_count`` and ``base_ns``/``new_ns`` per step.

    ``kind`` is ``kernel``, ``memcpy``, ``memset`` (device) or ``op`` (host); ``klass`` the
    kernel class (``memcpy``/``memset`` for copies, ``op`` for host ops). Rows are sorted by
    the absolute time change, largest first. A name absent from one run has 0 there.
    """

    table: pd.DataFrame
    base_windows: int
    new_windows: int

    def of(self, *kinds: str) -> pd.DataFrame:
        return self.table[self.table["kind"].isin(kinds)].reset_index(drop=True)

    def totals(self, *kinds: str) -> dict[str, float]:
        """Summed count and time per step over the given kinds, both runs."""
        t = self.of(*kinds)
        return {c: float(t[c].sum()) for c in ("base_count", "new_count", "base_ns", "new_ns")}

    def by_class(self) -> pd.DataFrame:
        """Device rows summed per class (``klass``), largest absolute time change first."""
        dev = self.table[self.table["kind"] != "op"]
        cols = ["base_count", "new_count", "base_ns", "new_ns", "change_ns", "change_count"]
        grouped = dev.groupby("klass", sort=True)[cols].sum().reset_index()
        grouped["base_names"] = (
            dev[dev["base_count"] > 0].groupby("klass").size().reindex(grouped["klass"]).fillna(0).to_numpy(int)
        )
        grouped["new_names"] = (
            dev[dev["new_count"] > 0].groupby("klass").size().reindex(grouped["klass"]).fillna(0).to_numpy(int)
        )
        order = np.argsort(-grouped["change_ns"].abs().to_numpy(), kind="stable")
        return grouped.iloc[order].reset_index(drop=True)


def name_diff(base: pd.DataFrame | None, new: pd.DataFrame | None) -> NameDiff:
    """Per-step count and time of every kernel/copy/op name in two per-name tables.

    Each table (:func:`analysis_names`, :func:`stored_names`) has ``kind``, ``klass``,
    ``name``, ``count`` and ``ns`` per step and ``attrs["windows"]``, the steps it covers.
    """
    b, n = _indexed(base), _indexed(new)
    b.columns = ["base_count", "base_ns"]
    n.columns = ["new_count", "new_ns"]
    table = b.join(n, how="outer").fillna(0.0)
    table = table.reset_index()
    table["change_ns"] = table["new_ns"] - table["base_ns"]
    table["change_count"] = table["new_count"] - table["base_count"]
    order = np.lexsort((table["name"].to_numpy(str), -table["change_ns"].abs().to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    windows = (int((base.attrs if base is not None else {}).get("windows", 0)), 0)
    windows = (windows[0], int((new.attrs if new is not None else {}).get("windows", 0)))
    return NameDiff(table=table, base_windows=windows[0], new_windows=windows[1])


def _indexed(names: pd.DataFrame | None) -> pd.DataFrame:
    if names is None or len(names) == 0:
        index = pd.MultiIndex.from_arrays([[], [], []], names=["kind", "klass", "name"])
        return pd.DataFrame({"count": pd.Series([], dtype=float), "ns": pd.Series([], dtype=float)}, index=index)
    return names.set_index(["kind", "klass", "name"])[["count", "ns"]].astype(float)


def analysis_names(analysis: Analysis) -> pd.DataFrame:
    """count and ns per step by (kind, klass, name) over all ranks' analysed (steady) windows."""
    frames = []
    windows = 0
    for ra in analysis.ranks:
        frame, n = rank_events(ra)
        frames.append(frame)
        windows += n
    events = pd.concat(frames, ignore_index=True)
    grouped = events.groupby(["kind", "klass", "name"], sort=True)["dur"].agg(["count", "sum"])
    per_step = max(windows, 1)
    out = pd.DataFrame({"count": grouped["count"] / per_step, "ns": grouped["sum"] / per_step}).reset_index()
    out.attrs["windows"] = windows
    return out


def stored_names(ops: pd.DataFrame, windows: int = 0) -> pd.DataFrame:
    """The run store's per-name table (``ops``: kind, name, count, total_ns, ns_per_step) in the same shape.

    The store keeps kernels and host ops (not copies), the top names of each and one
    ``(other)`` row, which is left out here; a kernel's class is read from its name.
    """
    if ops is None or len(ops) == 0:
        return _empty_names()
    ops = ops[ops["name"] != "(other)"]
    total = ops["total_ns"].to_numpy(np.float64)
    per_step = ops["ns_per_step"].to_numpy(np.float64)
    scale = np.divide(per_step, total, out=np.zeros_like(per_step), where=total > 0)
    kinds = ops["kind"].astype(str).to_numpy()
    names = ops["name"].astype(str).to_numpy()
    klass = np.array([classify_name(n) if k == "kernel" else k for k, n in zip(kinds, names, strict=True)], object)
    out = pd.DataFrame(
        {
            "kind": kinds,
            "klass": klass,
            "name": names,
            "count": ops["count"].to_numpy(np.float64) * scale,
            "ns": per_step,
        }
    )
    out = out.groupby(["kind", "klass", "name"], sort=True)[["count", "ns"]].sum().reset_index()
    out.attrs["windows"] = windows
    return out


def _empty_names() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "kind": pd.Series([], dtype=object),
            "klass": pd.Series([], dtype=object),
            "name": pd.Series([], dtype=object),
            "count": pd.Series([], dtype=float),
            "ns": pd.Series([], dtype=float),
        }
    )
