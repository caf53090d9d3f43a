"""The replay graph of one rank, built from the trace model.

Host side: the runtime calls of every thread that launches or waits for device work,
merged into one sequence ordered by start time (the training thread and the autograd
thread take turns; they do not run at once). Between two calls the host is busy with
something (framework ops, Python, the DataLoader): that *gap* is host time and is
kept, as is each call's own duration. A call that waits for the device (stream,
device or event synchronize, a blocking or pageable copy, the copy inside ``.item()``)
waits for the specific GPU op it waited for in the recording: the one that ended last
before the call returned among the ops launched before the call started.

Device side: every kernel, memcpy and memset, one FIFO queue per (device, stream).
An op starts at ``max(launch + latency, previous op on its stream ends,
cross-stream predecessor ends + delay) + residual``. The launch latency is the
recorded launch-to-start delay, capped at the trace's typical latency when the queue
was empty; a cross-stream edge is added where an op started right after an op of
another stream ended and nothing else explains its start (``cudaStreamWaitEvent``
ordering as observed); the residual is what no edge explains. With these values the
unmodified replay gives the recorded times back; what-if transformations edit the
arrays (durations, gaps, waits, edges) and the simulator
(:mod:`mlprof.whatif.simulate`) recomputes every time.

All times are int64 ns relative to :attr:`ReplayGraph.origin`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlprof.analyzers.attention import chain_spans
from mlprof.analyzers.attribution import sync_launch_drain
from mlprof.analyzers.causes import h2d_sync_mask
from mlprof.analyzers.compiled import compile_facts, eager_spans
from mlprof.analyzers.copies import copy_table, runtime_copy_direction
from mlprof.analyzers.data_parallel import overhead_spans as dp_overhead_spans
from mlprof.analyzers.intervals import merge
from mlprof.analyzers.kernels import is_foreach_optimizer_kernel, is_misaligned_gemm, kernel_classes
from mlprof.trace.model import Trace
from mlprof.trace.numbers import in_sorted, sorted_inverse, sorted_unique
from mlprof.trace.vocabulary import (
    ALLOC_RUNTIME,
    DATALOADER,
    DISPATCH_CATS,
    LAUNCH_RUNTIME,
    OPTIMIZER_STEP,
    PROFILER_STEP,
    SYNC_RUNTIME,
    name_mask,
)

NONE = -(1 << 48)
"""'No time' (no wait, no launch): far below any relative time of a trace."""

DEFAULT_LATENCY_NS = 5_000
"""Launch latency used when no op in the trace was launched onto an empty queue."""

DEP_TOLERANCE_NS = 2_000
"""A start delay no edge explains is looked up as a cross-stream wait above this."""

PAGEABLE, HTOD, MULTI_TENSOR, MISALIGNED = 1, 2, 4, 8

KIND_OTHER, KIND_LAUNCH, KIND_SYNC, KIND_BLOCKING_COPY, KIND_ALLOC = 0, 1, 2, 3, 4


@dataclass
class ReplayGraph:
    """Arrays of the host sequence (``h_*``) and device ops (``g_*``; sorted by stream, then start)."""

    origin: int
    # host sequence
    h_ts: np.ndarray
    """Recorded start (relative)."""
    h_end: np.ndarray
    h_gap: np.ndarray
    """Host time before the call: its start minus the end of everything before it (may be < 0 on overlap)."""
    h_base: np.ndarray
    """The call's own duration when it does not wait (a waiting call: its floor)."""
    h_wait: np.ndarray
    """Index of the GPU op the call waits for, or -1."""
    h_tail: np.ndarray
    """Time from that op's end to the call's return (a blocking copy's may be negative, see :data:`COPY_SKEW_NS`)."""
    h_kind: np.ndarray
    h_row: np.ndarray
    """Row of the call in ``trace.runtime``."""
    # device ops
    g_ts: np.ndarray
    g_dur: np.ndarray
    g_stream: np.ndarray
    """Dense stream index (device and stream)."""
    g_launch: np.ndarray
    """Host item that launched the op, or -1."""
    g_lat: np.ndarray
    g_gap: np.ndarray
    """Residual start delay no edge explains."""
    g_dep: np.ndarray
    """Op on another stream this op waits for (observed ordering), or -1."""
    g_dep_delay: np.ndarray
    g_anchor: np.ndarray
    """Earliest start of an op without a launch and without a predecessor (recorded start), else NONE."""
    g_row: np.ndarray
    """Row of the op in ``trace.gpu``."""
    g_klass: np.ndarray
    """Kernel class (:func:`mlprof.analyzers.kernels.kernel_classes`), ``memcpy``/``memset`` for copies."""
    latency_ns: int
    turnaround_ns: int = 0
    """Median gap between two ops queued back to back on a stream (the device's own turnaround)."""
    g_name: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Code of the op's name (equal codes, equal names)."""
    g_flags: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Bits :data:`PAGEABLE`, :data:`HTOD`, :data:`MULTI_TENSOR`, :data:`MISALIGNED` (SHAPE001's kernels)."""
    h_h2d_sync: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """Sync calls issued by an op that copies host-to-device (the causes' ``sync.h2d``)."""
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Host ranges the fixes edit (relative): ``dataloader``, ``optimizer``, ``attention``, ``graph_break``
    (eager code at torch.compile graph breaks), ``compiling``, ``data_parallel`` (replicate/scatter/gather),
    ``recorded`` (union of every recorded op and runtime call)."""
    removals: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """Host time removed by transformations: cumulative-removal curves (x, removed ns up to x)."""
    applied: list[str] = field(default_factory=list)
    """Names of the transformations applied, in order."""

    @property
    def n_host(self) -> int:
        return len(self.h_ts)

    @property
    def n_gpu(self) -> int:
        return len(self.g_ts)

    def copy(self, *edit: str) -> ReplayGraph:
        """A new graph for a transformation to edit; the graph it was made from is not changed.

        The arrays named in ``edit`` are copied (the caller edits them in place); every other array is
        shared and made read-only in both graphs (a transformation replaces such an array, it does not
        edit it: an edit in place raises instead of changing the other graph). A full copy per fix
        was 21 MB on a 217 MB trace, several alive at once in the plan. ``ranges`` and ``removals``
        are never edited in place, only replaced or appended to, so their arrays are shared too."""
        out = copy.copy(self)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                if f.name in edit:
                    setattr(out, f.name, value.copy())
                else:
                    value.flags.writeable = False
        unknown = set(edit) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"no such graph arrays: {sorted(unknown)}")
        out.ranges = dict(self.ranges)
        out.removals = list(self.removals)
        out.applied = list(self.applied)
        return out

    def rel(self, t: np.ndarray | int) -> np.ndarray:
        """Recorded absolute ns to graph-relative ns."""
        return np.asarray(t, dtype=np.int64) - self.origin

    def removed_before(self, x: np.ndarray) -> np.ndarray:
        """Host time removed by transformations before relative time ``x`` (float ns)."""
        out = np.zeros(len(x), dtype=np.float64)
        for xs, rs in self.removals:
            out += np.interp(x.astype(np.float64), xs, rs, left=0.0, right=float(rs[-1]) if len(rs) else 0.0)
        return out


def build_graph(trace: Trace) -> ReplayGraph:
    """The replay graph of one rank's trace (see the module docstring)."""
    runtime = trace.runtime
    gpu = trace.gpu
    dev = (gpu["kind"] != "sync").to_numpy(dtype=bool) if len(gpu) else np.zeros(0, dtype=bool)
    g_rows = np.flatnonzero(dev)
    origin = _origin(trace)

    # --- device ops, sorted by (stream, ts) ---
    g_ts_abs = gpu["ts"].to_numpy(np.int64)[g_rows]
    g_dur = np.maximum(gpu["dur"].to_numpy(np.int64)[g_rows], 0)
    stream_key = gpu["device"].to_numpy(np.int64)[g_rows] * 1_000_003 + gpu["stream"].to_numpy(np.int64)[g_rows]
    _, g_stream = sorted_inverse(stream_key)
    order = np.lexsort((g_ts_abs, g_stream))
    g_rows, g_ts_abs, g_dur, g_stream = g_rows[order], g_ts_abs[order], g_dur[order], g_stream[order].astype(np.int64)
    g_ts = g_ts_abs - origin
    g_end = g_ts + g_dur
    g_corr = gpu["correlation"].to_numpy(np.int64)[g_rows]
    kinds = _labels(gpu["kind"], g_rows)
    klass = kernel_classes(gpu)[g_rows] if len(gpu) else np.empty(0, dtype=object)
    g_klass = np.where(kinds == "kernel", klass, kinds).astype(object)

    # --- host items: runtime calls of threads that launch or wait ---
    names = runtime["name"] if len(runtime) else None
    r_ts = runtime["ts"].to_numpy(np.int64)
    r_end = runtime["end"].to_numpy(np.int64)
    r_tid = runtime["tid"].to_numpy(np.int64) * 1_000_003 + runtime["pid"].to_numpy(np.int64)
    r_corr = runtime["correlation"].to_numpy(np.int64)
    is_sync = name_mask(names, SYNC_RUNTIME) if names is not None else np.zeros(0, dtype=bool)
    is_launch = name_mask(names, LAUNCH_RUNTIME) if names is not None else np.zeros(0, dtype=bool)
    is_alloc = name_mask(names, ALLOC_RUNTIME) if names is not None else np.zeros(0, dtype=bool)
    # sorted_unique, not np.unique: numpy's hash-based unique took 0.23 s for the 423 k ids of a 1 GB trace
    launched_corr = sorted_unique(g_corr[g_corr > 0])
    has_op = (r_corr > 0) & in_sorted(r_corr, launched_corr)
    active_threads = sorted_unique(r_tid[has_op | is_sync])
    keep = np.isin(r_tid, active_threads)
    h_row = np.flatnonzero(keep)
    h_row = h_row[np.lexsort((r_end[h_row], r_ts[h_row]))]
    h_ts = r_ts[h_row] - origin
    h_end = np.maximum(r_end[h_row] - origin, h_ts)
    n_h = len(h_row)
    h_kind = np.full(n_h, KIND_OTHER, dtype=np.int64)
    h_kind[is_launch[h_row] | has_op[h_row]] = KIND_LAUNCH
    h_kind[is_alloc[h_row]] = KIND_ALLOC
    h_kind[is_sync[h_row]] = KIND_SYNC

    # launch edges: GPU op -> host item (first call of each correlation id)
    g_launch = np.full(len(g_rows), -1, dtype=np.int64)
    if n_h and len(g_rows):
        h_corr = r_corr[h_row]
        pos_sorted = np.argsort(h_corr, kind="stable")
        sorted_corr = h_corr[pos_sorted]
        idx = np.searchsorted(sorted_corr, g_corr)
        idx_c = np.clip(idx, 0, n_h - 1)
        found = (g_corr > 0) & (sorted_corr[idx_c] == g_corr)
        g_launch[found] = pos_sorted[idx_c[found]]

    # frontier gaps
    frontier = np.maximum.accumulate(h_end) if n_h else h_end
    prev_front = np.concatenate([[0], frontier[:-1]]) if n_h else frontier  # the first gap is from the origin
    h_gap = h_ts - prev_front
    h_base = h_end - h_ts
    h_wait = np.full(n_h, -1, dtype=np.int64)
    h_tail = np.zeros(n_h, dtype=np.int64)

    # --- device-side timing parameters ---
    first_in_stream = np.ones(len(g_rows), dtype=bool)
    first_in_stream[1:] = g_stream[1:] != g_stream[:-1]
    prev_end = np.where(first_in_stream, NONE, np.concatenate([[NONE], g_end[:-1]]))
    launched = g_launch >= 0
    launch_ts = np.where(launched, h_ts[np.clip(g_launch, 0, max(n_h - 1, 0))] if n_h else 0, NONE)
    delay = g_ts - launch_ts
    idle_at_launch = launched & (prev_end < launch_ts)
    # Launch latency: an op launched onto an empty queue keeps its own delay up to the 90th percentile of
    # such delays (above it, it waited for something else: another stream); a queued op gets the median.
    if idle_at_launch.any():
        latency = max(int(np.median(delay[idle_at_launch])), 0)
        ceiling = max(int(np.percentile(delay[idle_at_launch], 90)), latency)
    else:
        latency = ceiling = DEFAULT_LATENCY_NS
    g_lat = np.where(launched, np.minimum(delay, np.where(idle_at_launch, ceiling, latency)), 0)
    g_anchor = np.where(~launched & first_in_stream, g_ts, NONE)
    ready = np.where(launched, launch_ts + g_lat, g_anchor)
    explained = np.maximum(ready, prev_end)
    residual = g_ts - explained
    # cross-stream waits: the latest op of any other stream that ended inside the unexplained delay
    g_dep = np.full(len(g_rows), -1, dtype=np.int64)
    g_dep_delay = np.zeros(len(g_rows), dtype=np.int64)
    candidates = np.flatnonzero(residual > DEP_TOLERANCE_NS)
    if len(candidates):
        by_end = np.argsort(g_end, kind="stable")
        ends_sorted = g_end[by_end]
        j = np.searchsorted(ends_sorted, g_ts[candidates], side="right") - 1
        ok = j >= 0
        jj = by_end[np.clip(j, 0, None)]
        ok &= g_stream[jj] != g_stream[candidates]
        ok &= g_end[jj] > explained[candidates]
        c, d = candidates[ok], jj[ok]
        g_dep[c] = d
        g_dep_delay[c] = g_ts[c] - g_end[d]
        residual[c] = 0
    g_gap = residual
    # Stream turnaround: the device's own gap between two ops queued back to back (median over queued ops).
    queued = (prev_end >= ready) & (prev_end != NONE) & (g_ts >= prev_end)
    turnaround = int(np.median(g_ts[queued] - prev_end[queued])) if queued.any() else 0

    # Name codes and name flags from the distinct names (classified once each, then indexed by row).
    categories, codes = _categories(gpu["name"], g_rows)
    g_name = sorted_inverse(codes)[1] if len(g_rows) else np.zeros(0, np.int64)
    flags = np.zeros(len(g_rows), dtype=np.int64)
    if len(g_rows):
        text = categories.astype(str)
        name_flags = np.where(np.char.find(text, "Pageable") >= 0, PAGEABLE, 0)
        name_flags |= np.where(np.char.find(text, "HtoD") >= 0, HTOD, 0)
        flags |= name_flags[codes]
        flags |= np.where(is_foreach_optimizer_kernel(gpu["name"])[g_rows], MULTI_TENSOR, 0)
        flags |= np.where(is_misaligned_gemm(gpu["name"])[g_rows], MISALIGNED, 0)

    # --- host waits ---
    if n_h and len(g_rows):
        call_names, call_codes = _categories(runtime["name"], h_row)
        sync_copy_api = np.asarray([re.fullmatch(SYNC_COPY_API, n) is not None for n in call_names])[call_codes]
        _host_waits(
            h_ts,
            h_end,
            h_kind,
            h_wait,
            h_tail,
            h_base,
            g_ts,
            g_end,
            g_launch,
            g_klass,
            launch_ts,
            prev_end,
            sync_copy_api,
            (flags & (PAGEABLE | HTOD)) == (PAGEABLE | HTOD),
        )

    return ReplayGraph(
        g_name=g_name,
        g_flags=flags,
        h_h2d_sync=_h2d_syncs(trace, h_row),
        ranges=_ranges(trace, origin),
        origin=origin,
        h_ts=h_ts,
        h_end=h_end,
        h_gap=h_gap,
        h_base=h_base,
        h_wait=h_wait,
        h_tail=h_tail,
        h_kind=h_kind,
        h_row=h_row,
        g_ts=g_ts,
        g_dur=g_dur,
        g_stream=g_stream,
        g_launch=g_launch,
        g_lat=g_lat,
        g_gap=g_gap,
        g_dep=g_dep,
        g_dep_delay=g_dep_delay,
        g_anchor=g_anchor,
        g_row=g_rows,
        g_klass=g_klass,
        latency_ns=latency,
        turnaround_ns=turnaround,
    )


def _categories(column: pd.Series, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a column (as an object array) and each selected row's index into them."""
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(str).astype("category")
    cats = np.asarray([*column.cat.categories.astype(str), ""], dtype=object)
    codes = column.cat.codes.to_numpy()[rows].astype(np.int64)
    codes[codes < 0] = len(cats) - 1  # a missing value reads as ""
    return cats, codes


def _labels(column: pd.Series, rows: np.ndarray) -> np.ndarray:
    """The selected rows of a column as strings (object array), converted once per distinct value."""
    if len(rows) == 0:
        return np.empty(0, dtype=object)
    cats, codes = _categories(column, rows)
    return cats[codes]


SYNC_FLOOR_NS = 2_000
"""Own duration of a sync call that waited (what it costs once the device is done)."""

SYNC_COPY_API = r"(cuda|hip)Memcpy(2D|3D)?(ToSymbol|FromSymbol|ToArray|FromArray)?(_v\d+)?"
"""Runtime calls that copy synchronously (no ``Async``): they return once the copy is done."""

COPY_SKEW_NS = 50_000
"""A copy call counts as waiting for its op when the op started during the call and ended at most this long
after the call returned (see :func:`_host_waits`)."""


def _host_waits(
    h_ts: np.ndarray,
    h_end: np.ndarray,
    h_kind: np.ndarray,
    h_wait: np.ndarray,
    h_tail: np.ndarray,
    h_base: np.ndarray,
    g_ts: np.ndarray,
    g_end: np.ndarray,
    g_launch: np.ndarray,
    g_klass: np.ndarray,
    launch_ts: np.ndarray,
    prev_end: np.ndarray,
    sync_copy_api: np.ndarray,
    pageable_h2d: np.ndarray,
) -> None:
    """Fill the wait edges in place: each blocking call waits for the op it waited for in the recording."""
    # A copy whose op ended inside its own launch call (pageable or blocking memcpy) waited for it; so did one
    # whose op started while the call ran and ended at most COPY_SKEW_NS after it returned (a pageable
    # cudaMemcpyAsync waits for its stream to drain, stages the data and returns as the last DMA is
    # under way; host and device clocks also differ by some microseconds). Its tail is then negative.
    copies = np.flatnonzero((g_launch >= 0) & np.isin(g_klass, ["memcpy", "memset"]))
    call = g_launch[copies]
    inside = (g_end[copies] <= h_end[call]) & (g_end[copies] > h_ts[call])
    skewed = (g_ts[copies] >= h_ts[call]) & (g_ts[copies] < h_end[call]) & (g_end[copies] > h_end[call])
    skewed &= g_end[copies] <= h_end[call] + COPY_SKEW_NS
    # ... if the call is a synchronous copy API, or a pageable host-to-device copy queued behind earlier work
    # when the call began (CUDA syncs the stream before such a copy: it waited for the drain). An asynchronous
    # copy can also start during its call and end just after it (19 device-to-device copies in the B200
    # trace start 11.8 us into 12 us calls): it did not wait.
    skewed &= sync_copy_api[call] | (pageable_h2d[copies] & (prev_end[copies] > h_ts[call]))
    own = copies[inside | skewed]
    for op in own:
        item = g_launch[op]
        h_wait[item] = op
        h_kind[item] = KIND_BLOCKING_COPY
    # Sync calls: the op that ended last before the call returned, among ops launched before it started.
    syncs = np.flatnonzero((h_kind == KIND_SYNC) & (h_wait < 0))
    if len(syncs) == 0 and len(own) == 0:
        return
    by_end = np.argsort(g_end, kind="stable")
    ends_sorted = g_end[by_end]
    launch_sorted = np.where(launch_ts[by_end] == NONE, g_ts[by_end], launch_ts[by_end])
    hi = np.searchsorted(ends_sorted, h_end[syncs], side="right") - 1
    for item, j in zip(syncs.tolist(), hi.tolist(), strict=True):
        start = h_ts[item]
        k = j
        steps = 0
        while k >= 0 and launch_sorted[k] >= start and steps < 64:
            k -= 1
            steps += 1
        if k >= 0 and ends_sorted[k] > start and launch_sorted[k] < start:
            h_wait[item] = by_end[k]
    waiting = np.flatnonzero(h_wait >= 0)
    target_end = g_end[h_wait[waiting]]
    tail = h_end[waiting] - target_end
    copy_call = h_kind[waiting] == KIND_BLOCKING_COPY
    h_tail[waiting] = np.where(copy_call, np.maximum(tail, -COPY_SKEW_NS), np.maximum(tail, 0))
    h_base[waiting] = np.minimum(h_base[waiting], SYNC_FLOOR_NS)


def _h2d_syncs(trace: Trace, h_row: np.ndarray) -> np.ndarray:
    runtime = trace.runtime
    sync_rt, _, _ = sync_launch_drain(runtime)
    out = np.zeros(len(h_row), dtype=bool)
    if len(sync_rt) == 0 or len(h_row) == 0:
        return out
    directions = runtime_copy_direction(runtime, copy_table(trace.gpu))
    rows = np.asarray(runtime.index.get_indexer(sync_rt.index), dtype=np.int64)
    mask = h2d_sync_mask(trace, sync_rt, directions[rows])
    return np.isin(h_row, rows[mask])


def _ranges(trace: Trace, origin: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    host = trace.host
    h_s = host["ts"].to_numpy(np.int64) - origin
    h_e = host["end"].to_numpy(np.int64) - origin
    names = host["name"]
    data = name_mask(names, DATALOADER)
    opt = name_mask(names, OPTIMIZER_STEP)
    ops = (host["cat"].isin(DISPATCH_CATS).to_numpy(dtype=bool) | data) & ~name_mask(names, PROFILER_STEP)
    rs = np.concatenate([h_s[ops], trace.runtime["ts"].to_numpy(np.int64) - origin])
    re_ = np.concatenate([h_e[ops], trace.runtime["end"].to_numpy(np.int64) - origin])
    a_s, a_e = chain_spans(trace)
    b_s, b_e = eager_spans(trace)
    d_s, d_e = dp_overhead_spans(trace)
    c_s, c_e = compile_facts(trace).compiling
    return {
        "dataloader": (h_s[data], h_e[data]),
        "optimizer": (h_s[opt], h_e[opt]),
        "attention": (a_s - origin, a_e - origin),
        "graph_break": (b_s - origin, b_e - origin),
        "compiling": (c_s - origin, c_e - origin),
        "data_parallel": (d_s - origin, d_e - origin),
        "recorded": merge(rs, re_),
    }


def _origin(trace: Trace) -> int:
    starts = [int(t["ts"].min()) for t in (trace.runtime, trace.gpu, trace.host, trace.steps) if len(t)]
    return min(starts) if starts else 0
