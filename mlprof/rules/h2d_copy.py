"""DATA002: host-to-device copies from pageable memory, or blocking ones, stall the step."""

from __future__ import annotations

import numpy as np

from mlprof.analyzers.copies import bandwidth_gbs, copy_table
from mlprof.analyzers.framework import is_pytorch
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, top_ranges

PINNED_OVER_PAGEABLE = 2.0
"""Assumed pinned/pageable bandwidth ratio when the trace has no pinned copy to measure."""


class HostToDeviceCopyOptions(RuleOptions, frozen=True):
    """DATA002's thresholds (``[tool.mlprof.rules.DATA002]``, ``mlprof explain DATA002``)."""

    min_share: float = common("min_share", 0.02)


class HostToDeviceCopy(Rule[HostToDeviceCopyOptions]):
    id = "DATA002"
    options_class = HostToDeviceCopyOptions
    name = "blocking-h2d-copy"
    category = "data_starvation"
    summary = "pageable or blocking host-to-device copies on the critical path"
    claims = ("copy.h2d", "sync.h2d", "launch.h2d")
    doc = RuleDoc(
        what="Batches are copied to the GPU from pageable (not pinned) host memory, or with a "
        "blocking copy, so the copy cannot overlap compute and the host waits for it.",
        why="A copy from pageable memory is staged by the driver through a pinned bounce buffer "
        "at a fraction of PCIe bandwidth and returns only when done; `tensor.to('cuda')` without "
        "`non_blocking=True` then synchronises the stream. The GPU sits idle for the transfer and "
        "for the host to come back and launch the next kernel.",
        detection="Copies named `Memcpy HtoD (Pageable -> Device)` and the attribution causes "
        "`copy.h2d` (the device does only the copy), `launch.h2d` (host inside the memcpy call "
        "while the device is idle) and `sync.h2d` (a sync issued by the op that launched an "
        "HtoD copy, plus the drained queue after it). The time lost counts the blocking parts in "
        "full and the exposed copy time reduced by the pinned/pageable bandwidth ratio (measured "
        "when the trace also has pinned copies, else 2x). A pageable `cudaMemcpyAsync` first waits "
        "for its stream to drain: the host sits in the call while the GPU finishes earlier work. "
        "The attribution does not count that wait (the GPU is busy), the what-if replay does (the "
        "host could prepare the next batch meanwhile): the evidence's "
        "`host_in_pageable_copy_calls_ms_per_step` is the time inside those calls, and the title "
        "names it when it is more than twice the time lost above.",
        fix="Pin the batch in the DataLoader and copy without blocking; copy the next batch on a "
        "side stream while this one computes:\n\n"
        "    loader = DataLoader(ds, ..., pin_memory=True)\n"
        "    x = x.to('cuda', non_blocking=True)\n"
        "    y = y.to('cuda', non_blocking=True)",
        false_alarms="A one-off copy of weights or a lookup table at start-up is not per-step "
        "work (restrict `--steps`). On systems with coherent memory (Grace Hopper) pageable "
        "copies are fast.",
    )

    def check(self, ctx: RankContext, opts: HostToDeviceCopyOptions) -> list[Finding]:
        copies = copy_table(ctx.trace.gpu)
        h2d = copies[(copies["direction"] == "HtoD") & ctx.in_windows(copies["ts"].to_numpy(np.int64))]
        if len(h2d) == 0:
            return []
        pageable = h2d[h2d["pageable"]]
        pinned = h2d[~h2d["pageable"]]
        blocking = ctx.per_step("sync.h2d", "launch.h2d")
        exposed_copy = ctx.per_step("copy.h2d")
        bw_pageable = bandwidth_gbs(pageable)
        bw_pinned = bandwidth_gbs(pinned)
        if len(pageable) and bw_pageable:
            ratio = (bw_pinned / bw_pageable) if bw_pinned and bw_pinned > bw_pageable else PINNED_OVER_PAGEABLE
            pageable_share = float(pageable["dur"].sum()) / max(float(h2d["dur"].sum()), 1.0)
            copy_saving = exposed_copy * pageable_share * (1.0 - 1.0 / ratio)
        else:
            ratio = None
            copy_saving = 0.0
        lost = blocking + copy_saving
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        n_steps = max(ctx.n_windows, 1)
        # Host time inside the pageable copies' own calls: such a cudaMemcpyAsync first waits for its stream to
        # drain, then stages the data; the what-if replay counts the wait (the attribution only the GPU's idle part).
        runtime = ctx.trace.runtime
        corr = pageable["correlation"].to_numpy(np.int64)
        in_calls = runtime["correlation"].isin(corr[corr > 0]).to_numpy(dtype=bool) if len(corr) else []
        host_in_calls = float(runtime["dur"].to_numpy(np.int64)[in_calls].sum()) / n_steps if len(corr) else 0.0
        title = (
            f"Host-to-device copies block the step: {ms(lost)} ms per step "
            f"({len(pageable)} of {len(h2d)} copies from pageable memory)"
        )
        if host_in_calls > 2 * lost:
            title += f"; the host waits {ms(host_in_calls)} ms per step inside those copy calls"
        evidence = {
            "h2d_copies": len(h2d),
            "pageable_copies": len(pageable),
            "h2d_bytes_per_step": int(h2d["bytes"].clip(lower=0).sum() / n_steps),
            "pageable_bandwidth_gbs": round(bw_pageable, 2) if bw_pageable else None,
            "pinned_bandwidth_gbs": round(bw_pinned, 2) if bw_pinned else None,
            "bandwidth_ratio_used": round(ratio, 2) if ratio else None,
            "blocked_host_ms_per_step": ms(blocking),
            "exposed_copy_ms_per_step": ms(exposed_copy),
            "host_in_pageable_copy_calls_ms_per_step": ms(host_in_calls),
        }
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=lost,
                confidence="high" if blocking >= copy_saving else "medium",
                confidence_reason="blocking time is measured; the copy speed-up from pinning is "
                + ("measured from pinned copies in this trace" if bw_pinned else "assumed 2x"),
                evidence=evidence,
                fix="DataLoader(..., pin_memory=True) and x.to('cuda', non_blocking=True)"
                if is_pytorch(ctx.trace)
                else "allocate host buffers pinned (cudaMallocHost / cudaHostAlloc) and copy with cudaMemcpyAsync on a "
                "stream, overlapping the copy with kernels on another stream",
                steps=ctx.steps_with(*self.claims, min_share=opts.min_share),
                time_ranges_ns=top_ranges(h2d["ts"].to_numpy(np.int64), h2d["end"].to_numpy(np.int64)),
                claimed={
                    "sync.h2d": ctx.per_step("sync.h2d"),
                    "launch.h2d": ctx.per_step("launch.h2d"),
                    "copy.h2d": copy_saving,
                },
            )
        ]
