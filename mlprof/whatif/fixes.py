"""Each rule's fix as an edit of the replay graph, keyed by rule id.

A fix is a function ``(FixContext) -> ReplayGraph | None`` registered with
:func:`fix`; it selects what it changes from the graph's recorded arrays (inside the
analysed steps only, so one-off start-up work is never "fixed") and composes the
edits of :mod:`mlprof.whatif.transforms`. ``None`` means the fix cannot be expressed
on this trace; the finding then keeps the attribution estimate. The ``doc`` of each
fix is printed by ``mlprof explain``; its parameters are the rule's typed options
(``[tool.mlprof.rules.ID]``, ``--set ID.name=value``): the same :class:`RuleOptions`
object the rule's detection reads, as ``ctx.opts.name``, so a threshold goes from the
config to the computation through one checked, typed path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic

import msgspec
import numpy as np

from mlprof.analyzers.gpu_specs import GpuSpec
from mlprof.rules.data_loader_wait import DataLoaderWaitOptions
from mlprof.rules.fp32_matmul import Fp32MatmulOptions
from mlprof.rules.host_gaps import HostGapsOptions
from mlprof.rules.launch_bound import LaunchBoundOptions
from mlprof.rules.shape_alignment import ShapeAlignmentOptions
from mlprof.rules.spec import OptionsT
from mlprof.rules.unfused_elementwise import UnfusedElementwiseOptions
from mlprof.rules.unfused_optimizer import UnfusedOptimizerOptions
from mlprof.whatif.graph import (
    HTOD,
    KIND_ALLOC,
    KIND_BLOCKING_COPY,
    KIND_LAUNCH,
    MISALIGNED,
    MULTI_TENSOR,
    PAGEABLE,
    ReplayGraph,
)
from mlprof.whatif.transforms import (
    detach_ops,
    drop_waits,
    merge_intervals,
    merge_ops,
    remove_host_time,
    set_latency,
    set_op_durations,
)


class FixContext(msgspec.Struct, Generic[OptionsT]):
    """What a fix reads: the graph to edit (already carrying earlier fixes of a plan), the trace, and the
    rule's typed options (``FixContext[XOptions]`` for the rule's ``XOptions``)."""

    graph: ReplayGraph
    win_starts: np.ndarray
    """Analysed steps, relative to ``graph.origin``."""
    win_ends: np.ndarray
    opts: OptionsT
    """The rule's thresholds, as its detection read them (:meth:`RuleConfig.options`)."""
    spec: GpuSpec | None = None
    evidence: dict[str, Any] = msgspec.field(default_factory=dict)
    """The finding's evidence on this rank (measured ratios a fix may reuse)."""

    def in_windows(self, t_rel: np.ndarray) -> np.ndarray:
        return self.window_of(t_rel) >= 0

    def window_of(self, t_rel: np.ndarray) -> np.ndarray:
        """Index of the analysed step each time falls in, else -1."""
        pos = np.searchsorted(self.win_starts, t_rel, side="right") - 1
        if len(self.win_starts) == 0:
            return pos
        # the last step starting at or before each time, if the time is before its end (a gather from the few
        # steps' ends for every time: no masked copies of the times)
        return np.where(t_rel < self.win_ends[np.maximum(pos, 0)], pos, -1)

    def host_rows(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Relative (start, end) of the graph's host ranges of a kind (``dataloader``, ``optimizer``) in the steps."""
        s, e = self.graph.ranges.get(kind, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        keep = self.in_windows(s)
        return s[keep], e[keep]

    @property
    def launch_cost_ns(self) -> int:
        """Median own time of a launch call that does not wait (what an asynchronous call costs)."""
        g = self.graph
        sel = (g.h_kind == KIND_LAUNCH) & (g.h_wait < 0)
        return int(np.median(g.h_end[sel] - g.h_ts[sel])) if sel.any() else 5_000


Fix = Callable[[FixContext[Any]], "ReplayGraph | None"]


class FixSpec(msgspec.Struct, frozen=True):
    """A rule's fix as the replay applies it to the recorded graph."""

    rule: str
    apply: Fix
    doc: str
    unclaimed: bool = False
    """The rule claims no time of its own (what it costs is not a cause the attribution measures: a slow
    kernel variant, DataParallel's phases): its finding is replayed even though it lost no time."""


FIXES: dict[str, FixSpec] = {}


def fix(rule: str, doc: str, *, unclaimed: bool = False) -> Callable[[Fix], Fix]:
    """Register ``function`` as the graph edit of ``rule``'s fix; ``doc`` is shown by ``mlprof explain``."""

    def register(function: Fix) -> Fix:
        FIXES[rule] = FixSpec(rule, function, doc, unclaimed)
        return function

    return register


def _ops_in_windows(ctx: FixContext, mask: np.ndarray) -> np.ndarray:
    g = ctx.graph
    return np.flatnonzero(mask & ctx.in_windows(g.g_ts))


@fix(
    "DATA001",
    "Host time inside each DataLoader `__next__` of the analysed steps is removed except the cost of "
    "taking a batch that is already prepared (`ready_batch_ms`, default 0.3 ms: what `__next__` costs with "
    "prefetching workers, as measured on the Kineto ResNet-50 num_workers=4 trace), or the shortest "
    "`__next__` in the trace if that is shorter. The replay then says how much of it the step gains.",
)
def _data_loader(ctx: FixContext[DataLoaderWaitOptions]) -> ReplayGraph | None:
    s, e = ctx.host_rows("dataloader")
    if len(s) == 0:
        return None
    keep = min(ctx.opts.ready_batch_ms * 1e6, float((e - s).min()))
    return remove_host_time(ctx.graph, s, e, int(keep))


@fix(
    "DATA002",
    "Pageable host-to-device copies run at the pinned bandwidth (the pinned/pageable ratio measured in the "
    "trace, else 2x) and their launch calls no longer wait for them (`non_blocking=True`): each costs what "
    "an asynchronous launch costs in this trace; the stream synchronize issued by the same copy op is removed.",
)
def _h2d(ctx: FixContext) -> ReplayGraph | None:
    g = ctx.graph
    pageable = (g.g_flags & PAGEABLE) > 0
    h2d = (g.g_flags & HTOD) > 0
    ops = _ops_in_windows(ctx, (g.g_klass == "memcpy") & pageable & h2d)
    ratio = ctx.evidence.get("bandwidth_ratio_used") or 2.0
    out = set_op_durations(g, ops, g.g_dur[ops] / float(ratio)) if len(ops) else g
    items = g.g_launch[ops]
    items = items[(items >= 0)]
    items = items[out.h_wait[items] >= 0]
    syncs = _h2d_sync_items(ctx)
    if len(items) == 0 and len(syncs) == 0 and len(ops) == 0:
        return None
    if len(items):
        out = drop_waits(out, items, ctx.launch_cost_ns)
    if len(syncs):
        out = drop_waits(out, syncs, 0)
    return out


def _h2d_sync_items(ctx: FixContext) -> np.ndarray:
    """Waiting sync calls that wait for a host-to-device copy (the causes' ``sync.h2d``)."""
    g = ctx.graph
    items = np.flatnonzero(g.h_h2d_sync & (g.h_wait >= 0))
    return items[ctx.in_windows(g.h_ts[items])]


@fix(
    "SYNC001",
    "Every host call in the analysed steps that waits for the device (synchronize calls, the blocking copy "
    "inside `.item()`/`.cpu()`), other than those waiting for host-to-device copies (DATA002), stops waiting: "
    "the value stays on the device. The call itself costs nothing; a blocking copy costs an asynchronous launch.",
)
def _sync(ctx: FixContext) -> ReplayGraph | None:
    g = ctx.graph
    waiting = np.flatnonzero((g.h_wait >= 0) & ctx.in_windows(g.h_ts))
    h2d_syncs = _h2d_sync_items(ctx)
    copies_h2d = np.zeros(len(waiting), dtype=bool)
    if len(waiting):
        copies_h2d = (g.h_kind[waiting] == KIND_BLOCKING_COPY) & ((g.g_flags[g.h_wait[waiting]] & HTOD) > 0)
    waiting = waiting[~copies_h2d & ~np.isin(waiting, h2d_syncs)]
    if len(waiting) == 0:
        return None
    own = np.where(g.h_kind[waiting] == KIND_BLOCKING_COPY, ctx.launch_cost_ns, 0)
    return drop_waits(g, waiting, own)


@fix(
    "AMP001",
    "FP32 matmul/convolution kernels of the analysed steps are divided by the device's tensor-core ratio "
    "(dense FP16/BF16 tensor-core peak over FP32 peak, from the GPU spec table), capped at `local_speedup` "
    "(default 2.0: what matmuls and convolutions gain in practice once memory traffic counts). On Volta and "
    "Turing there is no TF32 or bf16: the ratio is the FP16 one and the fix is autocast(float16) + GradScaler.",
)
def _amp(ctx: FixContext[Fp32MatmulOptions]) -> ReplayGraph | None:
    g = ctx.graph
    ops = _ops_in_windows(ctx, g.g_klass == "gemm_fp32")
    if len(ops) == 0:
        return None
    cap = ctx.opts.local_speedup
    spec = ctx.spec
    ratio = spec.tensor_tflops / spec.fp32_tflops if spec and spec.tensor_tflops else cap
    factor = max(min(ratio, cap), 1.0)
    return set_op_durations(g, ops, g.g_dur[ops] / factor)


@fix(
    "COMM001",
    "Communication kernels of the analysed steps leave their stream: no compute kernel queued behind them or "
    "waiting for them on another stream waits any more, so they overlap with whatever compute the replay can "
    "run meanwhile; host calls that waited for them still do. The gain is bounded by their own time.",
)
def _comm(ctx: FixContext) -> ReplayGraph | None:
    g = ctx.graph
    ops = _ops_in_windows(ctx, g.g_klass == "comm")
    if len(ops) == 0:
        return None
    return detach_ops(g, ops)


@fix(
    "LAUNCH001",
    "Each stretch of the analysed steps between two kernel launches with no wait for the device and no "
    "DataLoader call in between is replayed as a captured CUDA graph would run it: the host time between the "
    "launches shrinks to `graph_node_us` per launch (default 2 us), and on the device each captured op costs "
    "`graph_node_us` before it starts (the per-node cost of a graph) instead of its recorded launch latency. "
    "A stretch longer than `max_dispatch_gap_us` (default 1000 us) between two launches is host work a graph "
    "does not capture (Python between iterations, a harness's own work) and is kept as recorded.",
)
def _launch(ctx: FixContext[LaunchBoundOptions]) -> ReplayGraph | None:
    g = ctx.graph
    window = ctx.window_of(g.h_ts)
    launches = np.flatnonzero((g.h_kind == KIND_LAUNCH) & (g.h_wait < 0) & (window >= 0))
    if len(launches) < 2:
        return None
    node = int(ctx.opts.graph_node_us * 1000)
    a, b = launches[:-1], launches[1:]
    waits_before = np.cumsum(g.h_wait >= 0)
    same = (waits_before[b] == waits_before[a]) & (window[a] == window[b])
    # A longer stretch between two launches is host work a graph does not capture (Python between
    # iterations, a harness's own work), not the dispatch of the next op: it is kept.
    same &= (g.h_ts[b] - g.h_ts[a]) <= int(ctx.opts.max_dispatch_gap_us * 1000)
    ds, de = ctx.host_rows("dataloader")
    if len(ds):
        ms_, me_, _ = merge_intervals(ds, de, np.zeros(len(ds), dtype=np.int64))
        first_after = np.searchsorted(me_, g.h_ts[a], side="right")
        clear = (first_after >= len(ms_)) | (ms_[np.clip(first_after, 0, len(ms_) - 1)] >= g.h_ts[b])
        same &= clear
    a, b = a[same], b[same]
    if len(a) == 0:
        return None
    out = remove_host_time(g, g.h_ts[a], g.h_ts[b], node)
    ops = np.flatnonzero(np.isin(out.g_launch, np.concatenate([a, b])))
    return set_latency(out, ops, node, node)


@fix(
    "FUSE001",
    "Runs of memory-bound kernels (outside the optimizer) that follow each other on a stream inside one "
    "analysed step, with at most `max_gap_us` (default 5 us) of idle device between two of them, become one "
    "kernel launched once: the other launch calls cost nothing. A fused kernel reads its inputs and writes its "
    "output once; its time is estimated as the run's longest kernel (one kernel's worth of bytes at the "
    "bandwidth each kernel already reaches). A run is cut at step boundaries and wherever the device waited "
    "for the host between two kernels: that time is the launches' (LAUNCH001), not the kernels'. With no "
    "such run the replay gains nothing.",
)
def _fuse(ctx: FixContext[UnfusedElementwiseOptions]) -> ReplayGraph | None:
    g = ctx.graph
    member = (g.g_klass == "memory_bound") & ~_optimizer_ops(ctx) & ctx.in_windows(g.g_ts)
    groups = _runs(ctx, member, int(ctx.opts.max_gap_us * 1000), ctx.opts.min_chain)
    if not groups:
        return g
    sizes = np.array([len(m) for m in groups], dtype=np.int64)
    longest = np.maximum.reduceat(g.g_dur[np.concatenate(groups)], np.cumsum(sizes) - sizes)  # runs: 2 ops or more
    return merge_ops(g, groups, longest.astype(np.float64))


def _runs(ctx: FixContext, member: np.ndarray, max_gap: int, min_len: int) -> list[np.ndarray]:
    """Runs of member ops adjacent on a stream, in one step, with at most ``max_gap`` recorded idle between."""
    g = ctx.graph
    idx = np.flatnonzero(member)
    if len(idx) < 2:
        return []
    a, b = idx[:-1], idx[1:]
    joined = (b == a + 1) & (g.g_stream[a] == g.g_stream[b])
    window = ctx.window_of(g.g_ts[idx])
    joined &= window[:-1] == window[1:]
    joined &= g.g_ts[b] - (g.g_ts[a] + g.g_dur[a]) <= max_gap
    run_id = np.concatenate([[0], np.cumsum(~joined)])
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], run_id, [run_id[-1] + 1]])))
    long = np.flatnonzero(np.diff(bounds) >= min_len)  # only these become slices (most runs are one op)
    return [idx[lo:hi] for lo, hi in zip(bounds[long].tolist(), bounds[long + 1].tolist(), strict=True)]


def _optimizer_ops(ctx: FixContext) -> np.ndarray:
    g = ctx.graph
    s, e = ctx.host_rows("optimizer")
    if len(s) == 0 or g.n_host == 0:
        return np.zeros(g.n_gpu, dtype=bool)
    ms_, me_, _ = merge_intervals(s, e, np.zeros(len(s), dtype=np.int64))
    return _inside(ms_, me_, _launch_ts(g))


def _launch_ts(g: ReplayGraph) -> np.ndarray:
    """Each device op's launch call start (its own start if no launch call was recorded)."""
    return np.where(g.g_launch >= 0, g.h_ts[np.clip(g.g_launch, 0, None)], g.g_ts)


def _inside(ms_: np.ndarray, me_: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Whether each time in ``ts`` lies in one of the sorted, disjoint intervals ``[ms_, me_)``."""
    if len(ms_) == 0:
        return np.zeros(len(ts), dtype=bool)
    pos = np.searchsorted(ms_, ts, side="right") - 1
    return (pos >= 0) & (ts < me_[np.clip(pos, 0, None)])


@fix(
    "FUSE002",
    "Inside each `Optimizer.step` of the analysed steps, the per-parameter kernels of one name become one "
    "multi-tensor kernel whose time is their total minus the fixed cost of all but one launch on the device "
    "(`kernel_floor_us`, default 2 us each), and the host time of the step shrinks to `foreach_launch_us` "
    "(default 30 us) per multi-tensor kernel. On a CPU-only trace the host time the rule measured in the "
    "optimizer is removed.",
)
def _optimizer(ctx: FixContext[UnfusedOptimizerOptions]) -> ReplayGraph | None:
    g = ctx.graph
    s, e = ctx.host_rows("optimizer")
    if len(s) == 0:
        return None
    foreach = (g.g_flags & MULTI_TENSOR) > 0
    member = _optimizer_ops(ctx) & (g.g_klass == "memory_bound") & ~foreach & ctx.in_windows(g.g_ts)
    idx = np.flatnonzero(member)
    if len(idx) == 0:
        if g.n_gpu:
            return None
        per_step = float(ctx.evidence.get("idle_in_optimizer_ms_per_step", 0.0)) * 1e6
        n_ranges_per_step = len(s) / max(len(ctx.win_starts), 1)
        keep = np.maximum((e - s) - per_step / max(n_ranges_per_step, 1), 0)
        return remove_host_time(g, s, e, keep.astype(np.int64))
    floor = ctx.opts.kernel_floor_us * 1000
    rng = np.searchsorted(s, _launch_ts(g)[idx], side="right") - 1
    out = g.copy("g_dur", "g_gap")
    codes = g.g_name[idx]
    key = rng.astype(np.int64) * (int(codes.max()) + 1) + codes
    order = np.argsort(key, kind="stable")
    groups = np.split(idx[order], np.flatnonzero(np.diff(key[order])) + 1)
    for sel in groups:
        sel = np.sort(sel)
        total = float(out.g_dur[sel].sum())
        fused = max(total - (len(sel) - 1) * floor, float(out.g_dur[sel].max()))
        out.g_dur[sel[0]] = int(fused)
        out.g_dur[sel[1:]] = 0
        out.g_gap[sel[1:]] = 0
    per_range = max(len(groups) / max(len(s), 1), 1.0)
    keep = int(per_range * ctx.opts.foreach_launch_us * 1000)
    return remove_host_time(out, s, e, keep)


@fix(
    "ALLOC001",
    "`cudaMalloc`/`cudaFree` calls inside the analysed (steady-state) steps are removed: the caching allocator "
    "keeps its blocks once `empty_cache()` is gone. Start-up allocations outside those steps stay.",
)
def _alloc(ctx: FixContext) -> ReplayGraph | None:
    g = ctx.graph
    items = np.flatnonzero((g.h_kind == KIND_ALLOC) & ctx.in_windows(g.h_ts))
    if len(items) == 0:
        return None
    return drop_waits(g, items, 0)


@fix(
    "HOST001",
    "Not a fix (the trace cannot say what the host did): an upper bound. `removable_share` (default 0.5) "
    "of the host time of the analysed steps outside every recorded op and runtime call is removed; the "
    "finding's speedup is never above this replay, and it stays low confidence.",
)
def _host_gaps(ctx: FixContext[HostGapsOptions]) -> ReplayGraph | None:
    cs, ce = ctx.graph.ranges.get("recorded", (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    gaps_s: list[np.ndarray] = []
    gaps_e: list[np.ndarray] = []
    for ws, we in zip(ctx.win_starts.tolist(), ctx.win_ends.tolist(), strict=True):
        inside = (ce > ws) & (cs < we)
        gaps_s.append(np.concatenate([[ws], np.clip(ce[inside], ws, we)]))
        gaps_e.append(np.concatenate([np.clip(cs[inside], ws, we), [we]]))
    if not gaps_s:
        return None
    gs, ge = np.concatenate(gaps_s), np.concatenate(gaps_e)
    ok = ge > gs
    keep = ((ge[ok] - gs[ok]) * (1.0 - ctx.opts.removable_share)).astype(np.int64)
    return remove_host_time(ctx.graph, gs[ok], ge[ok], keep)


@fix(
    "ATTN001",
    "Each unfused attention chain of the analysed steps becomes one fused kernel: the kernels launched from "
    "inside its host span (on its main stream) merge into one op lasting the fused cost ATTN001 estimated "
    "(the chain's FLOPs at the GPU's peak x `fused_efficiency`, or its Q/K/V/output bytes at the bandwidth; "
    "without shapes its matmul kernels' time), and the chain's host time other than its two matmul ops is "
    "removed (on a CPU trace: all but the fused op's estimated time).",
)
def _attention(ctx: FixContext) -> ReplayGraph | None:
    g = ctx.graph
    s, e = ctx.host_rows("attention")
    if len(s) == 0:
        return None
    ev = ctx.evidence
    chain_host = float(ev.get("chain_host_ms_per_step") or 0.0)
    fused_host = float(ev.get("fused_op_host_estimate_ms_per_step") or 0.0)
    host_keep = min(fused_host / chain_host, 1.0) if chain_host > 0 else 1.0
    out = g
    chain_dev = float(ev.get("chain_kernel_ms_per_step") or 0.0)
    if chain_dev > 0 and g.n_gpu:
        dev_keep = min(float(ev.get("fused_kernel_estimate_ms_per_step") or chain_dev) / chain_dev, 1.0)
        launched = g.g_launch >= 0
        at = np.where(launched, g.h_ts[np.clip(g.g_launch, 0, None)], -1)
        chain = np.searchsorted(s, at, side="right") - 1
        inside = launched & (chain >= 0) & (at < e[np.clip(chain, 0, None)])
        groups, durations = [], []
        for c in np.unique(chain[inside]).tolist():
            ops = np.flatnonzero(inside & (chain == c))
            main = np.bincount(g.g_stream[ops]).argmax() if len(ops) else 0
            ops = ops[g.g_stream[ops] == main]
            ops = ops[np.argsort(g.g_ts[ops], kind="stable")]
            if len(ops):
                groups.append(ops)
                durations.append(float(g.g_dur[ops].sum()) * dev_keep)
        if groups:
            out = merge_ops(out, groups, np.asarray(durations))
    return remove_host_time(out, s, e, ((e - s) * host_keep).astype(np.int64))


@fix(
    "SHAPE001",
    "Misaligned tensor-core GEMM kernels of the analysed steps (`align1`/`align2` variants) are divided by the "
    "aligned/misaligned throughput ratio: the one measured in this trace when `record_shapes` gives the FLOPs "
    "of the ops launching aligned and misaligned tensor-core GEMMs of similar size (achieved FLOP/s of the "
    "aligned ones over the misaligned ones; SHAPE001's `aligned_speedup_measured`), "
    "else `aligned_speedup` (default 1.5). The default is an assumption, not a measurement: the reference "
    "notes (ml-perf-notes.md, R09) give no number and say to measure aligned against misaligned GEMMs of "
    "similar size in the same trace; the finding then stays low confidence. Everything else is unchanged "
    "(padding adds a little work: not counted).",
    unclaimed=True,
)
def _shape(ctx: FixContext[ShapeAlignmentOptions]) -> ReplayGraph | None:
    g = ctx.graph
    ops = _ops_in_windows(ctx, (g.g_flags & MISALIGNED) > 0)
    if len(ops) == 0:
        return None
    ratio = ctx.evidence.get("aligned_speedup_measured") or ctx.opts.aligned_speedup
    return set_op_durations(g, ops, g.g_dur[ops] / max(float(ratio), 1.0))


@fix(
    "DP001",
    "DistributedDataParallel does no per-step replicate, scatter or gather: the host time of the analysed "
    "steps inside `torch/nn/parallel` replicate / scatter / gather frames (and comm's broadcast/scatter/gather, "
    "not `reduce_add`) is removed, and the device ops launched from inside them (the parameter broadcast and "
    "the batch and output copies) take no time. `parallel_apply` (each process still runs its replica) and the "
    "gradient reduction (an all-reduce under DDP) stay as recorded, and so does the GIL contention of the "
    "replica threads, which the graph cannot separate: the gain is bounded by the time in those phases. "
    "Needs `with_stack=True` (the frames); with only the `DataParallel.forward` range nothing is edited.",
    unclaimed=True,
)
def _data_parallel(ctx: FixContext) -> ReplayGraph | None:
    s, e = ctx.host_rows("data_parallel")
    if len(s) == 0:
        return None
    g = ctx.graph
    ops = _launched_inside(g, s, e)
    out = set_op_durations(g, ops, np.zeros(len(ops))) if len(ops) else g
    return remove_host_time(out, s, e, 0)


def _launched_inside(g: ReplayGraph, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Device ops whose launch call starts inside one of the (relative) host intervals."""
    if g.n_gpu == 0 or g.n_host == 0 or len(s) == 0:
        return np.zeros(0, dtype=np.int64)
    ms_, me_, _ = merge_intervals(s, e, np.zeros(len(s), dtype=np.int64))
    launched = g.g_launch >= 0
    return np.flatnonzero(launched & _inside(ms_, me_, g.h_ts[np.clip(g.g_launch, 0, None)]))


@fix(
    "COMPILE001",
    "Graph breaks removed (`fullgraph=True`): at each break of the analysed steps, the host time between the "
    "two compiled graphs (from the end of the outer graph's last op to the resume region's first graph op: the "
    "condition read, Python, the resume frame's cache lookup, guards and prologue) is removed except "
    "the own time of its kernel launch calls (compiled code still launches each kernel; as LAUNCH001 does for "
    "a captured region, dispatch is what goes). Where the break is on a tensor value (`.item()`, `if t > 0`), "
    "host calls in that stretch stop waiting for the device (the condition becomes `torch.where`/`torch.cond`). "
    "Recompilation seen in two or more analysed steps is removed too (`mark_dynamic`); a stretch that holds "
    "a one-off compilation (the resume frame compiled on entry) is left as recorded. The eager ops' "
    "kernels keep their time: fusion across the break is not counted.",
    unclaimed=True,
)
def _compile(ctx: FixContext) -> ReplayGraph | None:
    g = ctx.graph
    s, e = ctx.host_rows("graph_break")
    cs, ce = ctx.host_rows("compiling")
    recurring = len(ctx.evidence.get("steps_with_compilation") or []) >= 2
    # A stretch holding compilation (the resume frame compiled on entry) is a recompiling step's, not the
    # break's steady cost: it is left as recorded, unless the recompilation recurs (then both go).
    m_s, m_e, _ = merge_intervals(cs, ce, np.zeros(len(cs), dtype=np.int64))
    if recurring:
        s, e = _subtract(s, e, m_s, m_e)
    elif len(m_s) and len(s):
        pos = np.searchsorted(m_s, e, side="left") - 1
        compiling = (pos >= 0) & (m_e[np.clip(pos, 0, None)] > s)
        s, e = s[~compiling], e[~compiling]
    out: ReplayGraph | None = None
    if len(s):
        ms_, me_, _ = merge_intervals(s, e, np.zeros(len(s), dtype=np.int64))
        launches = np.flatnonzero((g.h_kind == KIND_LAUNCH) & (g.h_wait < 0))
        pos = np.searchsorted(ms_, g.h_ts[launches], side="right") - 1
        ok = (pos >= 0) & (g.h_end[launches] <= me_[np.clip(pos, 0, None)])
        keep = np.zeros(len(ms_), dtype=np.int64)
        np.add.at(keep, pos[ok], (g.h_end - g.h_ts)[launches[ok]])
        out = remove_host_time(g, ms_, me_, keep)
        if ctx.evidence.get("break_on_tensor_value"):
            waits = np.flatnonzero(g.h_wait >= 0)
            waits = waits[_inside(ms_, me_, g.h_ts[waits])]
            if len(waits):
                out = drop_waits(out, waits, 0)
    if len(cs) and recurring:
        out = remove_host_time(out if out is not None else g, cs, ce, 0)
    return out


def _subtract(s: np.ndarray, e: np.ndarray, cs: np.ndarray, ce: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parts of the intervals ``[s, e)`` outside the sorted, disjoint intervals ``[cs, ce)``."""
    if len(cs) == 0 or len(s) == 0:
        return s, e
    out_s: list[int] = []
    out_e: list[int] = []
    for a, b in zip(s.tolist(), e.tolist(), strict=True):  # few intervals: one per graph break
        hit = np.flatnonzero((ce > a) & (cs < b))
        edges = [a, *np.ravel(np.column_stack([cs[hit], ce[hit]])).tolist(), b]
        for lo, hi in zip(edges[0::2], edges[1::2], strict=True):
            lo, hi = max(lo, a), min(hi, b)
            if hi > lo:
                out_s.append(lo)
                out_e.append(hi)
    return np.asarray(out_s, dtype=np.int64), np.asarray(out_e, dtype=np.int64)
