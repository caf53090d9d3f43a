"""Kernel facts shared by the fusion rules (which kernels, which chains), computed once per rank."""

from __future__ import annotations

import msgspec
import numpy as np
import pandas as pd

from mlprof.analyzers.kernels import (
    chain_savings,
    in_windows,
    is_foreach_optimizer_kernel,
    kernel_classes,
    launch_times,
)
from mlprof.rules.base import RankContext
from mlprof.trace.vocabulary import OPTIMIZER_STEP, name_mask


class KernelFacts(msgspec.Struct):
    """The kernels the fusion rules look at, with their classes and chains (computed once per rank)."""

    kernels: pd.DataFrame
    """Kernels inside the analysed windows: name, ts, end, dur, stream, klass, optimizer (a per-parameter
    kernel launched inside ``Optimizer.step``), foreach, in_optimizer (launched inside it), saving, chain."""


def kernel_facts(ctx: RankContext) -> KernelFacts:
    cached = getattr(ctx, "_kernel_facts", None)
    if cached is not None:
        return cached
    gpu = ctx.trace.gpu
    klass = kernel_classes(gpu)
    host = ctx.trace.host
    is_opt = name_mask(host["name"], OPTIMIZER_STEP)
    launched = launch_times(gpu, ctx.trace.runtime)
    in_opt = (
        in_windows(launched, host["ts"].to_numpy(np.int64)[is_opt], host["end"].to_numpy(np.int64)[is_opt])
        if is_opt.any()
        else np.zeros(len(gpu), dtype=bool)
    )
    foreach = is_foreach_optimizer_kernel(gpu["name"]) if len(gpu) else np.zeros(0, dtype=bool)
    optimizer = (klass == "memory_bound") & in_opt & ~foreach
    stream_key = gpu["device"].to_numpy(np.int64) * 1_000_003 + gpu["stream"].to_numpy(np.int64)
    ts = gpu["ts"].to_numpy(np.int64)
    dur = gpu["dur"].to_numpy(np.int64)
    is_kernel = (gpu["kind"] == "kernel").to_numpy()
    # Chains are cut by any other kernel on the stream, so both member sets are evaluated
    # over all kernels of the stream.
    saving = np.zeros(len(gpu))
    chain = np.full(len(gpu), -1, dtype=np.int64)
    for member in ((klass == "memory_bound") & ~optimizer, optimizer):
        idx = np.flatnonzero(is_kernel)
        s, c = chain_savings(ts[idx], dur[idx], stream_key[idx], member[idx])
        saving[idx] += np.where(member[idx], s, 0.0)
        chain[idx] = np.where(member[idx] & (c >= 0), c + (0 if member is not optimizer else 1 << 40), chain[idx])
    # Kernels inside the analysed windows; rows are chosen before the table is built.
    keep = is_kernel.copy()
    keep[keep] = ctx.in_windows(ts[keep])
    frame = pd.DataFrame(
        {
            # The categorical itself: per-row strings cost ~0.3 s on a 217 MB trace (building, filtering, ranking).
            "name": gpu["name"].array[keep],
            "ts": ts[keep],
            "end": (ts + dur)[keep],
            "dur": dur[keep],
            "stream": stream_key[keep],
            "klass": klass[keep],
            "optimizer": optimizer[keep],
            "foreach": foreach[keep],
            "in_optimizer": in_opt[keep],
            "saving": saving[keep],
            "chain": chain[keep],
        }
    )
    facts = KernelFacts(kernels=frame)
    ctx._kernel_facts = facts  # type: ignore[attr-defined]
    return facts


def totals_by_name(
    names: np.ndarray | pd.Categorical, dur: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct names (sorted), count and total ``dur`` of each, and their order by total, largest first.

    What ``groupby("name").agg(n=size, total=sum).sort_values("total", ascending=False)`` gives on
    the names as strings (ties in the same order: the ranking is the same pandas sort), without
    building frames. A categorical is counted by its codes; only the names present are sorted.
    """
    dur = np.asarray(dur, dtype=np.int64)
    if isinstance(names, pd.Categorical):
        codes = names.codes.astype(np.int64)
        present = codes >= 0  # groupby drops missing names
        count = np.bincount(codes[present], minlength=len(names.categories)).astype(np.int64)
        total = np.zeros(len(count), dtype=np.int64)
        np.add.at(total, codes[present], dur[present])
        used = np.flatnonzero(count)
        labels = np.asarray(names.categories.to_numpy(dtype=object)[used], dtype=object)
        by_name = np.argsort(labels, kind="stable")  # the categories are distinct: np.unique's order
        uniq, count, total = labels[by_name], count[used][by_name], total[used][by_name]
    else:
        names = np.asarray(names, dtype=object)
        present = ~pd.isna(names)
        uniq, inverse = np.unique(names[present], return_inverse=True)
        count = np.bincount(inverse, minlength=len(uniq)).astype(np.int64)
        total = np.zeros(len(uniq), dtype=np.int64)
        np.add.at(total, inverse, dur[present])
    order = pd.Series(total).sort_values(ascending=False).index.to_numpy()
    return uniq, count, total, order


def top_names(frame: pd.DataFrame, n_steps: int, n: int = 5) -> list[dict[str, object]]:
    """The ``n`` kernel names with the most time: count and ms per step."""
    if len(frame) == 0:
        return []
    names = frame["name"].array
    uniq, count, total, order = totals_by_name(
        names if isinstance(names, pd.Categorical) else frame["name"].to_numpy(), frame["dur"].to_numpy(np.int64)
    )
    return [
        {
            "kernel": str(uniq[i])[:160],
            "per_step": round(count[i] / n_steps, 1),
            "ms_per_step": round(total[i] / n_steps / 1e6, 3),
        }
        for i in order[:n]
    ]
