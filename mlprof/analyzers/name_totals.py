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

from mlprof.analyzers.enclosing import innermost_enclosing
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
    starts, ends = ra.analysed_windows()
    trace = ra.full_trace
    gpu = trace.gpu[trace.gpu["kind"] != "sync"].reset_index(drop=True)
    host = trace.host
    is_op = (host["cat"].isin(DISPATCH_CATS) & ~names_matching(host["name"], PROFILER_STEP)).to_numpy()
    ops = host[is_op].reset_index(drop=True)
    op_ts = ops["ts"].to_numpy(np.int64)
    op_end = op_ts + ops["dur"].to_numpy(np.int64)
    op_tid = ops["tid"].to_numpy(np.int64)
    ranges = pd.DataFrame({"ts": op_ts, "end": op_end, "tid": op_tid})

    # the op each device event was launched from: runtime call (same correlation id) -> innermost op
    runtime = trace.runtime
    launcher = np.full(len(gpu), -1, dtype=np.int64)
    if len(runtime) and len(gpu) and len(ops):
        rt_corr = runtime["correlation"].to_numpy(np.int64)
        positive = rt_corr > 0
        corr_sorted, first = np.unique(rt_corr[positive], return_index=True)
        rt_rows = np.flatnonzero(positive)[first]
        rt_parent = innermost_enclosing(
            runtime["ts"].to_numpy(np.int64)[rt_rows],
            runtime["ts"].to_numpy(np.int64)[rt_rows] + runtime["dur"].to_numpy(np.int64)[rt_rows],
            runtime["tid"].to_numpy(np.int64)[rt_rows],
            ranges,
        )
        corr = gpu["correlation"].to_numpy(np.int64)
        pos = np.clip(np.searchsorted(corr_sorted, corr), 0, max(len(corr_sorted) - 1, 0))
        found = (corr > 0) & (corr_sorted[pos] == corr) if len(corr_sorted) else np.zeros(len(gpu), bool)
        launcher[found] = rt_parent[pos[found]]

    g_in = _inside(launch_times(gpu, runtime), starts, ends)
    gpu_dur = gpu["dur"].to_numpy(np.int64)
    kinds = gpu["kind"].astype(str).to_numpy()
    k_mask = g_in & (kinds == "kernel")
    k_cat = gpu["name"].astype("category")
    k_codes = k_cat.cat.codes.to_numpy()[k_mask]
    k_names = k_cat.cat.categories.astype(str).to_numpy()
    k_dur = gpu_dur[k_mask]
    k_count = np.bincount(k_codes, minlength=len(k_names))
    k_total = np.bincount(k_codes, weights=k_dur, minlength=len(k_names)).round().astype(np.int64)
    k_class = np.full(len(k_names), "", dtype=object)
    k_class[k_codes] = kernel_classes(gpu)[k_mask]
    present = np.flatnonzero(k_count)
    launched_name = np.full(len(k_names), None, dtype=object)
    k_launcher = launcher[k_mask]
    has = k_launcher >= 0
    if has.any():
        pairs = pd.DataFrame({"k": k_codes[has], "op": k_launcher[has], "dur": k_dur[has]})
        pairs["op"] = ops["name"].astype("category").cat.codes.to_numpy()[pairs["op"].to_numpy()]
        by_op = pairs.groupby(["k", "op"], sort=False)["dur"].sum().reset_index()
        top_op = by_op.sort_values("dur", ascending=False, kind="stable").drop_duplicates("k")
        op_cats = ops["name"].astype("category").cat.categories.astype(str).to_numpy()
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
    parent = np.full(len(ops), -1, dtype=np.int64)
    if len(ops):
        after = innermost_enclosing(op_ts, op_end + 1, op_tid, ranges)
        before = innermost_enclosing(op_ts - 1, op_end, op_tid, ranges)
        low = np.iinfo(np.int64).min
        start_a = np.where(after >= 0, op_ts[np.maximum(after, 0)], low)
        start_b = np.where(before >= 0, op_ts[np.maximum(before, 0)], low)
        end_a, end_b = op_end[np.maximum(after, 0)], op_end[np.maximum(before, 0)]
        inner_b = (start_b > start_a) | ((start_b == start_a) & (before >= 0) & (end_b < end_a))
        parent = np.where(inner_b, before, after)
        # ops with the same thread, start and end nest in the order they were recorded: the
        # innermost of such a group encloses what the group encloses, each member the next one
        order = np.lexsort((np.arange(len(ops)), -op_end, op_ts, op_tid))
        same = np.zeros(len(ops), dtype=bool)
        same[1:] = (
            (op_tid[order[1:]] == op_tid[order[:-1]])
            & (op_ts[order[1:]] == op_ts[order[:-1]])
            & (op_end[order[1:]] == op_end[order[:-1]])
        )
        group = np.cumsum(~same) - 1
        last_pos = np.zeros(group[-1] + 1, dtype=np.int64)
        np.maximum.at(last_pos, group, np.arange(len(ops)))
        innermost_of = np.empty(len(ops), dtype=np.int64)
        innermost_of[order] = order[last_pos[group]]
        parent = np.where(parent >= 0, innermost_of[np.maximum(parent, 0)], -1)
        parent[order[same]] = order[np.flatnonzero(same) - 1]
    child_ns = np.zeros(len(ops), dtype=np.int64)
    has_parent = parent >= 0
    np.add.at(child_ns, parent[has_parent], (op_end - op_ts)[has_parent])
    device_ns = np.zeros(len(ops), dtype=np.int64)
    launched_gpu = g_in & (launcher >= 0)
    np.add.at(device_ns, launcher[launched_gpu], gpu_dur[launched_gpu])
    o_cat = ops["name"].astype("category")
    o_names = o_cat.cat.categories.astype(str).to_numpy()
    o_codes = o_cat.cat.codes.to_numpy()[o_in]
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
        operators[column] = _most_frequent(ops, column, o_codes, o_in, n)[present]
    operators = operators.sort_values("total_ns", ascending=False, kind="stable").reset_index(drop=True)
    return kernels[KERNEL_VIEW_COLUMNS], operators[OP_VIEW_COLUMNS]


def _most_frequent(ops: pd.DataFrame, column: str, o_codes: np.ndarray, o_in: np.ndarray, n: int) -> np.ndarray:
    """Per op name (code 0..n-1): the most frequent non-empty value of ``column`` over the ops kept, else None."""
    out = np.full(n, None, dtype=object)
    if column not in ops or len(ops) == 0:
        return out
    cat = ops[column].astype("category")
    codes = cat.cat.codes.to_numpy()[o_in]
    known = codes >= 0
    if known.any():
        pairs = pd.DataFrame({"o": o_codes[known], "s": codes[known]})
        common = pairs.groupby(["o", "s"], sort=False).size().reset_index(name="n")
        common = common.sort_values("n", ascending=False, kind="stable").drop_duplicates("o")
        values = cat.cat.categories.astype(str).to_numpy()
        out[common["o"].to_numpy()] = values[common["s"].to_numpy()]
    out[out == ""] = None
    return out
