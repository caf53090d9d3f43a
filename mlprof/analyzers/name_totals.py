"""Device events and CPU ops of the analysed steps, by name: what changed between runs is read from these.

One measurement for every front end that lists kernels and ops by name (``mlprof
compare`` and the run store the dashboard reads), so the two cannot disagree. A
kernel, memcpy or memset belongs to the step in which it was *launched* (the runtime
call with the same correlation id), or, when the launch was not recorded, to the step
in which it started, as HTA's ``TraceDiff`` assigns GPU events to iterations. A CPU op
(``cpu_op``/``Operator`` range, ``ProfilerStep#N`` itself excluded) belongs to the step
in which it started. Without steps, the analysed window is the one the attribution
uses (:func:`mlprof.analyzers.windows.step_windows`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from mlprof.analyzers.enclosing import RangeIndex
from mlprof.analyzers.kernels import kernel_classes, launch_times, uses_tensor_cores
from mlprof.trace.model import Trace
from mlprof.trace.vocabulary import DISPATCH_CATS, PROFILER_STEP, names_matching


class AnalysedRank(Protocol):
    """What this measurement reads of a rank's analysis (:class:`mlprof.results.RankAnalysis`)."""

    @property
    def full_trace(self) -> Trace: ...

    def analysed_windows(self) -> tuple[np.ndarray, np.ndarray]: ...


def rank_events(ra: AnalysedRank) -> tuple[pd.DataFrame, int]:
    """kind, klass, name, dur of the device activity and CPU ops inside this rank's analysed windows."""
    starts, ends = ra.analysed_windows()
    trace = ra.full_trace
    gpu = trace.gpu[trace.gpu["kind"] != "sync"].reset_index(drop=True)
    gpu_kind = gpu["kind"].astype(str).to_numpy()
    gpu_class = np.where(gpu_kind == "kernel", kernel_classes(gpu), gpu_kind)
    host = trace.host
    ops = host[host["cat"].isin(DISPATCH_CATS) & ~names_matching(host["name"], PROFILER_STEP)]
    op_kind = np.full(len(ops), "op", dtype=object)
    parts = []
    for frame, kind, klass, when in (
        (gpu, gpu_kind, gpu_class, launch_times(gpu, trace.runtime)),
        (ops, op_kind, op_kind, ops["ts"].to_numpy(np.int64)),
    ):
        inside = _inside(when, starts, ends)
        parts.append(
            pd.DataFrame(
                {
                    "kind": kind[inside],
                    "klass": klass[inside],
                    "name": frame["name"].astype(str).to_numpy()[inside],
                    "dur": frame["dur"].to_numpy(np.int64)[inside],
                }
            )
        )
    return pd.concat(parts, ignore_index=True), len(starts)


def _inside(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which times fall inside one of the (sorted, disjoint) windows."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    pos = np.searchsorted(s, ts, side="right") - 1
    ok = pos >= 0
    ok[ok] &= ts[ok] < e[pos[ok]]
    return ok


KERNEL_VIEW_COLUMNS = ["name", "klass", "count", "total_ns", "tensor_cores", "launched_by"]
OP_VIEW_COLUMNS = ["name", "count", "total_ns", "self_ns", "device_ns", "call_stack", "input_dims"]


def name_views(ra: AnalysedRank) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per kernel name and per CPU op name, the Kernels and Operators views of one rank.

    The same events as :func:`rank_events` (so every total here equals its sum by name):
    kernels launched in the analysed windows, CPU ops started in them.

    Kernels: ``count``, ``total_ns`` (device time), ``tensor_cores`` (the name is a
    tensor-core kernel's: HMMA/WMMA/xmma/``*_h16816*``..., see
    :func:`mlprof.analyzers.kernels.uses_tensor_cores`) and ``launched_by``: the CPU op
    that launched most of that kernel's time (the innermost ``cpu_op`` enclosing the
    launching runtime call on its thread), None when launches were not recorded.

    Ops: ``count``, ``total_ns`` (inclusive host time), ``self_ns`` (minus the time of the
    ops directly nested in it on its thread, at least 0), ``device_ns`` (kernels, copies and memsets
    whose launch falls directly in the op, not in a nested op) and ``call_stack`` (the
    most frequent ``Call stack`` recorded with ``with_stack=True``; None without) and
    ``input_dims`` (the most frequent ``Input Dims`` JSON text, which the reader keeps for
    matmul, softmax and attention ops; None for the others).
    """
    # Columns are selected as arrays from the trace's own tables (no filtered copy of a table:
    # the copies and the per-copy recomputation of launch times and kernel classes were a third
    # of this measurement's time and most of its memory on a 217 MB trace).
    starts, ends = ra.analysed_windows()
    trace = ra.full_trace
    all_gpu = trace.gpu
    device = (all_gpu["kind"] != "sync").to_numpy(dtype=bool)
    host = trace.host
    is_op = (host["cat"].isin(DISPATCH_CATS) & ~names_matching(host["name"], PROFILER_STEP)).to_numpy(dtype=bool)
    op_ts = host["ts"].to_numpy(np.int64)[is_op]
    op_end = op_ts + host["dur"].to_numpy(np.int64)[is_op]
    op_tid = host["tid"].to_numpy(np.int64)[is_op]
    n_ops = len(op_ts)
    op_names = _categorical(host["name"])
    op_codes = op_names.codes[is_op]
    op_cats = op_names.categories.astype(str).to_numpy()
    ranges = RangeIndex(op_ts, op_end, op_tid) if n_ops else None

    # the op each device event was launched from: runtime call (same correlation id) -> innermost op
    runtime = trace.runtime
    n_gpu = int(device.sum())
    launcher = np.full(n_gpu, -1, dtype=np.int64)
    if len(runtime) and n_gpu and ranges is not None:
        rt_corr = runtime["correlation"].to_numpy(np.int64)
        positive = rt_corr > 0
        corr_sorted, first = np.unique(rt_corr[positive], return_index=True)
        rt_rows = np.flatnonzero(positive)[first]
        rt_ts = runtime["ts"].to_numpy(np.int64)[rt_rows]
        rt_parent = ranges.innermost(
            rt_ts,
            rt_ts + runtime["dur"].to_numpy(np.int64)[rt_rows],
            runtime["tid"].to_numpy(np.int64)[rt_rows],
        )
        corr = all_gpu["correlation"].to_numpy(np.int64)[device]
        pos = np.clip(np.searchsorted(corr_sorted, corr), 0, max(len(corr_sorted) - 1, 0))
        found = (corr > 0) & (corr_sorted[pos] == corr) if len(corr_sorted) else np.zeros(n_gpu, bool)
        launcher[found] = rt_parent[pos[found]]

    g_in = _inside(launch_times(all_gpu, runtime)[device], starts, ends)
    gpu_dur = all_gpu["dur"].to_numpy(np.int64)[device]
    k_mask = g_in & (all_gpu["kind"] == "kernel").to_numpy(dtype=bool)[device]
    k_cat = _categorical(all_gpu["name"])
    k_codes = k_cat.codes[device][k_mask]
    k_names = k_cat.categories.astype(str).to_numpy()
    k_dur = gpu_dur[k_mask]
    k_count = np.bincount(k_codes, minlength=len(k_names))
    k_total = np.bincount(k_codes, weights=k_dur, minlength=len(k_names)).round().astype(np.int64)
    k_class = np.full(len(k_names), "", dtype=object)
    k_class[k_codes] = kernel_classes(all_gpu)[device][k_mask]
    present = np.flatnonzero(k_count)
    launched_name = np.full(len(k_names), None, dtype=object)
    k_launcher = launcher[k_mask]
    has = k_launcher >= 0
    if has.any():
        pairs = pd.DataFrame({"k": k_codes[has], "op": op_codes[k_launcher[has]], "dur": k_dur[has]})
        by_op = pairs.groupby(["k", "op"], sort=False)["dur"].sum().reset_index()
        top_op = by_op.sort_values("dur", ascending=False, kind="stable").drop_duplicates("k")
        launched_name[top_op["k"].to_numpy()] = op_cats[top_op["op"].to_numpy()]
    kernels = pd.DataFrame(
        {
            "name": k_names[present],
            "klass": k_class[present],
            "count": k_count[present],
            "total_ns": k_total[present],
            "launched_by": launched_name[present],
        }
    )
    kernels["tensor_cores"] = uses_tensor_cores(kernels["name"])
    kernels = kernels.sort_values("total_ns", ascending=False, kind="stable").reset_index(drop=True)

    # ops: self time = own duration minus the ops directly nested in it (their parent is the
    # innermost op strictly enclosing them: queried just outside the child at either end; of ops
    # with the same range, the one recorded first encloses the next)
    o_in = _inside(op_ts, starts, ends)
    parent = np.full(n_ops, -1, dtype=np.int64)
    if ranges is not None:
        after = ranges.innermost(op_ts, op_end + 1, op_tid)
        before = ranges.innermost(op_ts - 1, op_end, op_tid)
        low = np.iinfo(np.int64).min
        start_a = np.where(after >= 0, op_ts[np.maximum(after, 0)], low)
        start_b = np.where(before >= 0, op_ts[np.maximum(before, 0)], low)
        end_a, end_b = op_end[np.maximum(after, 0)], op_end[np.maximum(before, 0)]
        inner_b = (start_b > start_a) | ((start_b == start_a) & (before >= 0) & (end_b < end_a))
        parent = np.where(inner_b, before, after)
        # ops with the same thread, start and end nest in the order they were recorded: the
        # innermost of such a group encloses what the group encloses, each member the next one
        order = np.lexsort((np.arange(n_ops), -op_end, op_ts, op_tid))
        same = np.zeros(n_ops, dtype=bool)
        same[1:] = (
            (op_tid[order[1:]] == op_tid[order[:-1]])
            & (op_ts[order[1:]] == op_ts[order[:-1]])
            & (op_end[order[1:]] == op_end[order[:-1]])
        )
        group = np.cumsum(~same) - 1
        last_pos = np.zeros(group[-1] + 1, dtype=np.int64)
        np.maximum.at(last_pos, group, np.arange(n_ops))
        innermost_of = np.empty(n_ops, dtype=np.int64)
        innermost_of[order] = order[last_pos[group]]
        parent = np.where(parent >= 0, innermost_of[np.maximum(parent, 0)], -1)
        parent[order[same]] = order[np.flatnonzero(same) - 1]
    child_ns = np.zeros(n_ops, dtype=np.int64)
    has_parent = parent >= 0
    np.add.at(child_ns, parent[has_parent], (op_end - op_ts)[has_parent])
    device_ns = np.zeros(n_ops, dtype=np.int64)
    launched_gpu = g_in & (launcher >= 0)
    np.add.at(device_ns, launcher[launched_gpu], gpu_dur[launched_gpu])
    o_names = op_cats
    o_codes = op_codes[o_in]
    n = len(o_names)
    dur = (op_end - op_ts)[o_in]
    o_count = np.bincount(o_codes, minlength=n)
    present = np.flatnonzero(o_count)
    sums = {
        "total_ns": dur,
        "self_ns": np.maximum(op_end - op_ts - child_ns, 0)[o_in],
        "device_ns": device_ns[o_in],
    }
    operators = pd.DataFrame({"name": o_names[present], "count": o_count[present]})
    for key, values in sums.items():
        operators[key] = np.bincount(o_codes, weights=values, minlength=n).round().astype(np.int64)[present]
    for column in ("call_stack", "input_dims"):
        values = _categorical(host[column]) if column in host else None
        operators[column] = _most_frequent(values, is_op, o_codes, o_in, n)[present]
    operators = operators.sort_values("total_ns", ascending=False, kind="stable").reset_index(drop=True)
    return kernels[KERNEL_VIEW_COLUMNS], operators[OP_VIEW_COLUMNS]


def _categorical(column: pd.Series) -> pd.Categorical:
    """The column's categorical (the reader's tables have one), or one made from it."""
    values = column.array
    return values if isinstance(values, pd.Categorical) else column.astype("category").array


def _most_frequent(
    values: pd.Categorical | None, is_op: np.ndarray, o_codes: np.ndarray, o_in: np.ndarray, n: int
) -> np.ndarray:
    """Per op name (code 0..n-1): the most frequent non-empty value of a host column (a categorical,
    ``is_op`` its op rows) over the ops kept, else None."""
    out = np.full(n, None, dtype=object)
    if values is None or not is_op.any():
        return out
    codes = values.codes[is_op][o_in]
    known = codes >= 0
    if known.any():
        pairs = pd.DataFrame({"o": o_codes[known], "s": codes[known]})
        common = pairs.groupby(["o", "s"], sort=False).size().reset_index(name="n")
        common = common.sort_values("n", ascending=False, kind="stable").drop_duplicates("o")
        labels = values.categories.astype(str).to_numpy()
        out[common["o"].to_numpy()] = labels[common["s"].to_numpy()]
    out[out == ""] = None
    return out
