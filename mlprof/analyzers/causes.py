"""Step time attribution one level finer: every nanosecond of a category, split by cause.

The seven categories of :mod:`mlprof.analyzers.attribution` say *what* the GPU was
doing; rules need *why*, and they need it exclusive, so that two findings never
claim the same time. Each category is split into causes; an instant keeps its
category (the same priority rules, so each category's causes sum to the category
exactly) and takes the first cause whose intervals cover it, else the category's
last, catch-all cause:

===================  =========================================================
compute              ``compute.attention`` kernels of an unfused attention chain
                     (:mod:`mlprof.analyzers.attention`); ``compute.gemm_fp32`` FP32 matmul/conv kernels without tensor
                     cores; ``compute.optimizer`` memory-bound kernels launched
                     inside ``Optimizer.step`` that are not multi-tensor (foreach /
                     fused) kernels; ``compute.memory_bound`` other elementwise,
                     norm, softmax, reduce kernels; ``compute.other``
comm_exposed         ``comm.wait`` the first part of a collective that on this rank
                     only waits for a later rank (given per rank by the job
                     analysis); ``comm.transfer``
memcpy_exposed       ``copy.h2d`` host-to-device copies; ``copy.other``
idle_data            ``data.loader``
idle_sync            ``sync.h2d`` blocking host-to-device copies (the sync belongs
                     to an op that copies to the device); ``sync.host_read``
                     ``.item()``, ``.cpu()``, explicit synchronize and the like
idle_launch          ``launch.h2d`` the host inside a memcpy call that launched a
                     host-to-device copy (staging pageable memory);
                     ``launch.alloc`` ``cudaMalloc``/``cudaFree``; ``launch.optimizer``
                     host dispatch inside ``Optimizer.step``; ``launch.compile``
                     torch.compile compiling (Dynamo/AOT/Inductor); ``launch.attention``
                     host dispatch inside an unfused attention chain; ``launch.dispatch``
idle_other           ``other.optimizer`` Python inside ``Optimizer.step`` outside
                     any op (the per-parameter loop); ``other.host``
===================  =========================================================
"""

from __future__ import annotations

import msgspec
import numpy as np
import pandas as pd

from mlprof.analyzers.attention import attention_chains, chain_spans
from mlprof.analyzers.attribution import CATEGORIES, Layer, build_layers, sum_by_window, sync_launch_drain
from mlprof.analyzers.compiled import compile_facts
from mlprof.analyzers.copies import copy_table, runtime_copy_direction
from mlprof.analyzers.enclosing import RangeIndex
from mlprof.analyzers.intervals import first_covering
from mlprof.analyzers.kernels import in_windows, is_foreach_optimizer_kernel, kernel_classes, launch_times
from mlprof.trace.memo import forget
from mlprof.trace.model import Trace
from mlprof.trace.numbers import sorted_unique
from mlprof.trace.vocabulary import (
    ALLOC_RUNTIME,
    DISPATCH_CATS,
    LAUNCH_RUNTIME,
    OPTIMIZER_STEP,
    SYNC_OPS,
    SYNC_RUNTIME,
    name_mask,
)

CAUSES: dict[str, tuple[str, ...]] = {
    "compute": ("compute.attention", "compute.gemm_fp32", "compute.optimizer", "compute.memory_bound", "compute.other"),
    "comm_exposed": ("comm.wait", "comm.transfer"),
    "memcpy_exposed": ("copy.h2d", "copy.other"),
    "idle_data": ("data.loader",),
    "idle_sync": ("sync.h2d", "sync.host_read"),
    "idle_launch": (
        "launch.h2d",
        "launch.alloc",
        "launch.optimizer",
        "launch.compile",
        "launch.attention",
        "launch.dispatch",
    ),
    "idle_other": ("other.optimizer", "other.host"),
}
CAUSE_NAMES: tuple[str, ...] = tuple(c for cat in CATEGORIES for c in CAUSES[cat])
PARENT: dict[str, str] = {cause: cat for cat in CATEGORIES for cause in CAUSES[cat]}

Intervals = tuple[np.ndarray, np.ndarray]
_EMPTY: Intervals = (np.empty(0, np.int64), np.empty(0, np.int64))


class CauseLayers(msgspec.Struct):
    """Interval sets of every cause but the catch-alls, in priority order within each category."""

    sets: dict[str, Intervals]


def _cols(frame: pd.DataFrame) -> Intervals:
    return frame["ts"].to_numpy(np.int64), frame["end"].to_numpy(np.int64)


def build_cause_layers(trace: Trace, comm_wait: Intervals | None = None) -> CauseLayers:
    # Rows are selected from numpy columns rather than by filtering tables (see build_layers).
    gpu = trace.gpu
    runtime = trace.runtime
    host = trace.host
    klass = kernel_classes(gpu)
    g_s, g_e = _cols(gpu)

    is_opt = name_mask(host["name"], OPTIMIZER_STEP)
    h_s, h_e = _cols(host)
    opt_s, opt_e = h_s[is_opt], h_e[is_opt]
    launched = launch_times(gpu, runtime)
    in_opt = in_windows(launched, opt_s, opt_e) if len(opt_s) else np.zeros(len(gpu), dtype=bool)
    foreach = is_foreach_optimizer_kernel(gpu["name"]) if len(gpu) else np.zeros(0, dtype=bool)
    memory_bound = klass == "memory_bound"
    gemm_fp32 = klass == "gemm_fp32"
    optimizer = memory_bound & in_opt & ~foreach

    copies = copy_table(gpu)
    c_s, c_e = _cols(copies)
    h2d = np.asarray(copies["direction"].to_numpy() == "HtoD", dtype=bool)
    rt_dir = runtime_copy_direction(runtime, copies)
    r_s, r_e = _cols(runtime)
    rt_names = runtime["name"]
    launch_h2d = (rt_dir == "HtoD") & name_mask(rt_names, LAUNCH_RUNTIME)
    alloc = name_mask(rt_names, ALLOC_RUNTIME)

    sync_rt, _, (d_s, d_e, d_row) = sync_launch_drain(runtime)
    sync_is_h2d = h2d_sync_mask(trace, sync_rt, rt_dir[name_mask(rt_names, SYNC_RUNTIME)])
    drain_h2d = sync_is_h2d[d_row] if len(d_row) else np.zeros(0, dtype=bool)
    s_s, s_e = _cols(sync_rt)

    attention = attention_chains(trace)
    in_attention = attention.kernel_in_chain
    a_s, a_e = chain_spans(trace)

    return CauseLayers(
        sets={
            "compute.attention": (g_s[in_attention], g_e[in_attention]),
            "compute.gemm_fp32": (g_s[gemm_fp32], g_e[gemm_fp32]),
            "compute.optimizer": (g_s[optimizer], g_e[optimizer]),
            "compute.memory_bound": (g_s[memory_bound], g_e[memory_bound]),
            "comm.wait": comm_wait if comm_wait is not None else _EMPTY,
            "copy.h2d": (c_s[h2d], c_e[h2d]),
            "sync.h2d": (
                np.concatenate([s_s[sync_is_h2d], d_s[drain_h2d]]),
                np.concatenate([s_e[sync_is_h2d], d_e[drain_h2d]]),
            ),
            "launch.h2d": (r_s[launch_h2d], r_e[launch_h2d]),
            "launch.alloc": (r_s[alloc], r_e[alloc]),
            "launch.optimizer": (opt_s, opt_e),
            "launch.compile": compile_facts(trace).compiling,
            "launch.attention": (a_s, a_e),
            "other.optimizer": (opt_s, opt_e),
        }
    )


def h2d_sync_mask(trace: Trace, sync_rt: pd.DataFrame, sync_dir: np.ndarray) -> np.ndarray:
    """Which sync calls wait for a host-to-device copy (rather than for a value the host reads).

    A blocking ``cudaMemcpy`` that copies HtoD is one; so is a ``cudaStreamSynchronize``
    issued by the same innermost op (``aten::copy_``) that launched an HtoD copy.
    """
    mask = np.asarray(sync_dir == "HtoD", dtype=bool)
    if len(sync_rt) == 0:
        return mask
    runtime = trace.runtime
    copies = copy_table(trace.gpu)
    rt_dir = runtime_copy_direction(runtime, copies)
    h2d_calls = runtime[rt_dir == "HtoD"]
    if len(h2d_calls) == 0:
        return mask
    host = trace.host
    is_op = host["cat"].isin(DISPATCH_CATS).to_numpy(dtype=bool) & ~name_mask(host["name"], SYNC_OPS)
    # The ops' columns, not a filtered copy of the host table (~20 MB on a 217 MB trace, at the causes' peak).
    ops = RangeIndex(*(host[c].to_numpy(np.int64)[is_op] for c in ("ts", "end", "tid")))
    copy_parent = ops.innermost(*_qcols(h2d_calls))
    parents = sorted_unique(copy_parent[copy_parent >= 0])
    if len(parents) == 0:
        return mask
    sync_parent = ops.innermost(*_qcols(sync_rt))
    return mask | ((sync_parent >= 0) & np.isin(sync_parent, parents))


def _qcols(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return frame["ts"].to_numpy(np.int64), frame["end"].to_numpy(np.int64), frame["tid"].to_numpy(np.int64)


def attribute_causes(
    trace: Trace, win_starts: np.ndarray, win_ends: np.ndarray, comm_wait: Intervals | None = None
) -> pd.DataFrame:
    """ns per cause (columns :data:`CAUSE_NAMES`) for each window; windows must not overlap."""
    layers = build_layers(trace)
    causes = build_cause_layers(trace, comm_wait)
    matrix = _attribute(layers, causes, win_starts.astype(np.int64), win_ends.astype(np.int64))
    # The layers' last reader in the flow (steps -> causes): do not hold them while the rules run.
    forget(trace, "build_layers")
    return pd.DataFrame(matrix, columns=list(CAUSE_NAMES))


def _attribute(layers: list[Layer], causes: CauseLayers, win_starts: np.ndarray, win_ends: np.ndarray) -> np.ndarray:
    n_win = len(win_starts)
    out = np.zeros((n_win, len(CAUSE_NAMES)), dtype=np.int64)
    if n_win == 0:
        return out
    lo, hi = int(win_starts.min()), int(win_ends.max())
    cuts = [win_starts, win_ends]
    all_sets = [(layer.starts, layer.ends) for layer in layers] + list(causes.sets.values())
    for s, e in all_sets:
        inside = (e > lo) & (s < hi)
        cuts.append(np.clip(s[inside], lo, hi))
        cuts.append(np.clip(e[inside], lo, hi))
    points = sorted_unique(np.concatenate(cuts))
    left, right = points[:-1], points[1:]
    width = right - left

    category = first_covering([(layer.starts, layer.ends) for layer in layers], left, len(CATEGORIES) - 1)
    # Each category's causes over its own segments only (covered() answers point by point, so a subset of the
    # points gets the same answers): the segments are read once per cause level, not once per cause.
    cause = np.zeros(len(left), dtype=np.int64)
    first = 0
    for ci, cat in enumerate(CATEGORIES):
        at = np.flatnonzero(category == ci)
        names = CAUSES[cat]
        if len(at):
            within = first_covering([causes.sets[name] for name in names[:-1]], left[at], len(names) - 1)
            cause[at] = first + within
        first += len(names)

    out[:] = sum_by_window(left, width, cause, len(CAUSE_NAMES), win_starts, win_ends)
    return out


def category_totals(causes: pd.DataFrame) -> pd.DataFrame:
    """Sum causes back to their categories (equals the category attribution exactly)."""
    return pd.DataFrame({cat: causes[list(CAUSES[cat])].sum(axis=1) for cat in CATEGORIES})
