"""SYNC001: the host blocks on the GPU inside the step (``.item()``, ``.cpu()``, synchronize)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlprof.analyzers.causes import h2d_sync_mask
from mlprof.analyzers.copies import copy_table, runtime_copy_direction
from mlprof.analyzers.enclosing import innermost_enclosing, source_lines
from mlprof.analyzers.framework import is_pytorch
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, top_ranges
from mlprof.trace.vocabulary import DISPATCH_CATS, PROFILER_STEP, SYNC_RUNTIME, names_matching


class HostSyncOptions(RuleOptions, frozen=True):
    """SYNC001's thresholds (``[tool.mlprof.rules.SYNC001]``, ``mlprof explain SYNC001``)."""

    min_share: float = common("min_share", 0.02)


class HostSync(Rule[HostSyncOptions]):
    id = "SYNC001"
    options_class = HostSyncOptions
    name = "host-device-sync"
    category = "sync_point"
    summary = "host waits for the GPU mid-step (.item(), .cpu(), synchronize) and the queue drains"
    claims = ("sync.host_read",)
    doc = RuleDoc(
        what="The training loop reads a value from the GPU (`loss.item()`, `.cpu()`, `.tolist()`, "
        "`nonzero()`, `print(tensor)`, a Python `if` on a tensor) or calls `synchronize()` inside "
        "the step.",
        why="CUDA runs asynchronously: the host normally queues kernels ahead of the GPU. A read "
        "makes the host wait until every queued kernel has finished; then the queue is empty, and "
        "the GPU idles until the host has dispatched the next kernels. Each sync point costs the "
        "host's wait plus the time to refill the queue.",
        detection="Sync runtime calls (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, "
        "`cudaEventSynchronize`, blocking `cudaMemcpy` device-to-host) and ops such as "
        "`aten::item`/`aten::_local_scalar_dense`, attributed as `idle_sync`: the device is idle "
        "while the host is in the call, and from the call's end until the next kernel launch on "
        "that thread (the drained queue). Syncs that wait for a host-to-device copy belong to "
        "DATA002. The evidence names the op that issued each sync and, when the trace has stacks, "
        "the Python line.",
        fix="Keep values on the device and read them rarely:\n\n"
        "    running = torch.zeros((), device='cuda')\n"
        "    for i, (x, y) in enumerate(loader):\n"
        "        loss = step(x, y)\n"
        "        running += loss.detach()          # no sync\n"
        "        if i % 100 == 0:\n"
        "            print(running.item() / 100)   # one sync per 100 steps\n"
        "            running.zero_()\n\n"
        "Use `non_blocking=True` for device-to-host copies you only need later, and replace "
        "data-dependent Python branches with tensor ops (`torch.where`).",
        false_alarms="One sync at the very end of a step (logging the loss) costs little when the "
        "next step's launches start at once; it shows as small time. Syncs required for "
        "correctness (dynamic shapes from `nonzero`, gradient-scaler checks) can be reduced, not "
        "always removed.",
    )

    def check(self, ctx: RankContext, opts: HostSyncOptions) -> list[Finding]:
        lost = ctx.per_step("sync.host_read")
        if ctx.step_ns <= 0 or lost <= 0 or lost / ctx.step_ns < opts.min_share:
            return []  # nothing lost in the analysed steps (a harness's sync outside them is not theirs)
        trace = ctx.trace
        runtime = trace.runtime
        is_sync = np.asarray(names_matching(runtime["name"], SYNC_RUNTIME))
        sync_rt = runtime[is_sync]
        copies = copy_table(trace.gpu)
        directions = runtime_copy_direction(runtime, copies)[is_sync]
        h2d = h2d_sync_mask(trace, sync_rt, directions)
        keep = ~h2d & ctx.in_windows(sync_rt["ts"].to_numpy(np.int64))
        sync_rt = sync_rt[keep]
        ops = trace.host[trace.host["cat"].isin(DISPATCH_CATS) & ~names_matching(trace.host["name"], PROFILER_STEP)]
        q = (sync_rt["ts"].to_numpy(np.int64), sync_rt["end"].to_numpy(np.int64), sync_rt["tid"].to_numpy(np.int64))
        parent = innermost_enclosing(*q, ops)
        op_names = ops["name"].astype(str).to_numpy()
        issued_by = np.where(parent >= 0, op_names[np.maximum(parent, 0)] if len(op_names) else "", "(no op)")
        lines = source_lines(trace.host, *q)
        frame = pd.DataFrame(
            {
                "call": sync_rt["name"].astype(str).to_numpy(),
                "op": issued_by,
                "line": [ln or "" for ln in lines],
                "dur": sync_rt["dur"].to_numpy(np.int64),
            }
        )
        n_steps = max(ctx.n_windows, 1)
        grouped = (
            frame.groupby(["op", "call", "line"], sort=False)
            .agg(n=("dur", "size"), wait=("dur", "sum"))
            .sort_values("wait", ascending=False)
            .head(5)
            .reset_index()
        )
        sites = [
            {
                "op": r.op,
                "call": r.call,
                "source": r.line or None,
                "per_step": round(r.n / n_steps, 2),
                "host_wait_ms_per_step": ms(r.wait / n_steps),
            }
            for r in grouped.itertuples(index=False)
        ]
        top = sites[0]["op"] if sites else "a sync call"
        has_steps = len(ctx.analysis.steps) > 0
        per = f"{len(frame) / n_steps:.1f}x per step" if has_steps else f"{len(frame)}x in the trace"
        title = f"Host waits for the GPU {per} (top: {top}); GPU idles {ms(lost)} ms per step"
        if is_pytorch(trace):
            fix = "accumulate metrics on the device and call .item() every N steps; non_blocking copies"
            record_next = [] if ctx.has_stacks else ["with_stack=True to see the Python line of each sync"]
        else:  # a CUDA application, not PyTorch: speak CUDA
            calls = sorted(set(frame["call"]))
            title = f"Host waits for the GPU {per} ({', '.join(calls[:3])}); GPU idles {ms(lost)} ms per step"
            fix = (
                "remove device-wide waits between launches: cudaDeviceSynchronize only where the host needs the "
                "result, cudaStreamSynchronize/cudaEventSynchronize on the one stream it needs, "
                "cudaMemcpyAsync on a stream instead of cudaMemcpy, and overlap the next kernels with the wait"
            )
            record_next = []
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=lost,
                confidence="high" if len(frame) else "medium",
                confidence_reason="the device is idle during the sync calls and until the next launch",
                evidence={
                    "sync_calls_per_step": round(len(frame) / n_steps, 2),
                    "gpu_idle_ms_per_step": ms(lost),
                    "sites": sites,
                },
                fix=fix,
                steps=ctx.steps_with("sync.host_read", min_share=opts.min_share),
                time_ranges_ns=top_ranges(q[0], q[1]),
                claimed={"sync.host_read": lost},
                record_next=record_next,
            )
        ]
