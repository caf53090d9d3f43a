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
    launcher = _launchers(trace, device, n_gpu, ranges)

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
    parent = _op_parents(op_ts, op_end, op_tid, ranges) if ranges is not None else np.full(n_ops, -1, dtype=np.int64)
    del ranges  # its sort and running-maxima table (the views' temporaries are freed as they go: see above)
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


def _launchers(trace: Trace, device: np.ndarray, n_gpu: int, ranges: RangeIndex | None) -> np.ndarray:
    """Per device event (``device`` rows of the gpu table): the op (position in ``ranges``) that launched it, the
    innermost op enclosing the runtime call with its correlation id on its thread; -1 where none."""
    all_gpu = trace.gpu
    runtime = trace.runtime
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
    return launcher


def _op_parents(op_ts: np.ndarray, op_end: np.ndarray, op_tid: np.ndarray, ranges: RangeIndex) -> np.ndarray:
    """Per op, the op it is directly nested in (its position), -1 for none: the innermost op strictly enclosing
    it, queried just outside the op at either end; of ops with the same range, the one recorded first encloses
    the next."""
    n_ops = len(op_ts)
    after = ranges.innermost(op_ts, op_end + 1, op_tid)
    before = ranges.innermost(op_ts - 1, op_end, op_tid)
    low = np.iinfo(np.int64).min
    start_a = np.where(after >= 0, op_ts[np.maximum(after, 0)], low)
    start_b = np.where(before >= 0, op_ts[np.maximum(before, 0)], low)
    end_a, end_b = op_end[np.maximum(after, 0)], op_end[np.maximum(before, 0)]
    inner_b = (start_b > start_a) | ((start_b == start_a) & (before >= 0) & (end_b < end_a))
    parent = np.where(inner_b, before, after)
    del after, before, start_a, start_b, end_a, end_b, inner_b  # (the views' peak memory was this function's)
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
    del group, last_pos
    parent = np.where(parent >= 0, innermost_of[np.maximum(parent, 0)], -1)
    parent[order[same]] = order[np.flatnonzero(same) - 1]
    return parent


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
        # Per op name the value seen most often; of equal counts, the (name, value) pair seen first (what
        # groupby(sort=False).size() then a stable sort by count and drop_duplicates gave, without frames).
        n_values = len(values.categories)
        pair, first, count = np.unique(
            o_codes[known].astype(np.int64) * n_values + codes[known], return_index=True, return_counts=True
        )
        name = pair // n_values
        order = np.lexsort((first, -count, name))
        top = order[np.concatenate([[True], name[order][1:] != name[order][:-1]])]
        labels = values.categories.astype(str).to_numpy()
        out[name[top]] = labels[pair[top] % n_values]
    out[out == ""] = None
    return out


KERNEL_SUMS = ["count", "total_ns"]
KERNEL_FIRSTS = ["klass", "tensor_cores", "launched_by"]
OP_SUMS = ["count", "total_ns", "self_ns", "device_ns"]
OP_FIRSTS = ["call_stack", "input_dims"]


class NameTotals:
    """One name view (kernels or ops) summed over a job's ranks as they arrive, in memory flat in the ranks.

    A job's report lists, per name, the sum of ``sums`` over the ranks, the rank with the most
    ``total_ns`` in it (``worst_rank``, ``worst_total_ns``) and that rank's ``firsts``. Folding each
    rank's view in when its task returns keeps one row per name instead of every rank's view
    (the views were a third of what a 1,024-rank job held). The table is the one the
    rank-ordered concatenation of the views gives: names in order of first appearance (lowest
    rank, then row), sums exact (int64), and of equal totals the lowest rank is the worst, so
    the ranks may arrive in any order.
    """

    def __init__(self, sums: list[str], firsts: list[str]) -> None:
        self.sums, self.firsts = sums, firsts
        self.index: dict[object, int] = {}
        self._sum = np.zeros((0, len(sums)), dtype=np.int64)
        self._first = np.zeros(0, dtype=np.int64)
        self._best = np.zeros(0, dtype=np.int64)
        self._best_key = np.zeros(0, dtype=np.int64)
        self._best_rank = np.zeros(0, dtype=object)
        self._best_values = np.zeros((0, len(firsts)), dtype=object)

    def __len__(self) -> int:
        return len(self.index)

    def add(self, rank: int, view: pd.DataFrame, position: int | None = None) -> None:
        """Fold in one rank's view (a frame of ``name``, ``sums`` and ``firsts``).

        ``position``: where the rank comes in the job's rank order (0..2**31-1; default the rank itself, which
        a job's ranks are checked to fit); ``rank`` is only reported (``worst_rank``), whatever its size."""
        if len(view) == 0:
            return
        idx = np.array([self.index.setdefault(n, len(self.index)) for n in view["name"].tolist()], dtype=np.int64)
        self._grow(len(self.index))
        at_rank = rank if position is None else position
        key = (np.int64(at_rank) << np.int64(32)) + np.arange(len(view), dtype=np.int64)
        np.minimum.at(self._first, idx, key)
        sums = np.column_stack([view[c].to_numpy(np.int64) for c in self.sums])  # (view[list]: ~1 ms a call)
        np.add.at(self._sum, idx, sums)
        total = sums[:, self.sums.index("total_ns")]
        order = np.lexsort((key, -total))  # per name, its row with the most time, the first such
        _, first = np.unique(idx[order], return_index=True)
        rows = order[first]
        at = idx[rows]
        better = (total[rows] > self._best[at]) | ((total[rows] == self._best[at]) & (key[rows] < self._best_key[at]))
        rows, at = rows[better], at[better]
        self._best[at] = total[rows]
        self._best_key[at] = key[rows]
        self._best_rank[at] = rank
        for j, column in enumerate(self.firsts):
            values = np.empty(len(view), dtype=object)
            values[:] = view[column].tolist()
            self._best_values[at, j] = values[rows]

    def _grow(self, n: int) -> None:
        have = len(self._first)
        if n <= have:
            return
        cap = max(n, 2 * have, 64)
        extra = cap - have
        self._sum = np.concatenate([self._sum, np.zeros((extra, len(self.sums)), dtype=np.int64)])
        self._first = np.concatenate([self._first, np.full(extra, np.iinfo(np.int64).max, dtype=np.int64)])
        self._best = np.concatenate([self._best, np.full(extra, np.iinfo(np.int64).min, dtype=np.int64)])
        self._best_key = np.concatenate([self._best_key, np.full(extra, np.iinfo(np.int64).max, dtype=np.int64)])
        self._best_rank = np.concatenate([self._best_rank, np.full(extra, None, dtype=object)])
        self._best_values = np.concatenate([self._best_values, np.full((extra, len(self.firsts)), None, dtype=object)])

    def table(self, n_ranks: int) -> pd.DataFrame:
        """Per name: the mean of ``sums`` over ``n_ranks`` ranks (a rank without the name counts 0), ``firsts``,
        ``worst_rank`` and ``worst_total_ns``; most time first (of equal means, the name seen first)."""
        n = len(self.index)
        if n == 0:
            return pd.DataFrame(columns=["name", *self.sums, *self.firsts, "worst_rank", "worst_total_ns"])
        order = np.argsort(self._first[:n], kind="stable")
        names = np.empty(n, dtype=object)
        names[:] = list(self.index)
        table = pd.DataFrame({"name": pd.Series(names[order], dtype=object)})
        for j, column in enumerate(self.sums):
            table[column] = self._sum[:n, j][order] / n_ranks
        for j, column in enumerate(self.firsts):
            table[column] = pd.Series(self._best_values[:n, j][order], dtype=object)
        table["worst_rank"] = pd.Series(self._best_rank[:n][order], dtype=object)
        table["worst_total_ns"] = self._best[:n][order]
        return table.sort_values("total_ns", ascending=False, kind="stable").reset_index(drop=True)

    def nbytes(self) -> int:
        """Bytes held by the arrays (not the names): grows with the names, never with the ranks."""
        return sum(
            a.nbytes for a in (self._sum, self._first, self._best, self._best_key, self._best_rank, self._best_values)
        )


def job_name_totals() -> tuple[NameTotals, NameTotals]:
    """Empty kernel and op totals for a job (:class:`NameTotals` of the kernels and operators views)."""
    return NameTotals(KERNEL_SUMS, KERNEL_FIRSTS), NameTotals(OP_SUMS, OP_FIRSTS)
