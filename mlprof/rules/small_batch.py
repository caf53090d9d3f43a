"""BATCH001: the GPU is barely used per step: little memory, short kernels, the host sets the pace."""

from __future__ import annotations

import re

import numpy as np

from mlprof.rules._kernels import kernel_facts
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, ms, option
from mlprof.trace.vocabulary import OPTIMIZER_STEP, name_mask

MIB = 1 << 20
TRAINING = re.compile(r"Backward|^autograd::engine|^Optimizer\.step")
"""Host ranges that only training records (the backward pass, the optimizer)."""


class SmallBatchOptions(RuleOptions, frozen=True):
    """BATCH001's thresholds (``[tool.mlprof.rules.BATCH001]``, ``mlprof explain BATCH001``)."""

    max_busy_share: float = option(
        0.5, "share of the step (0-1)", 0.0, 1.0, "fire only when the GPU is busy under this share"
    )
    max_median_kernel_us: float = option(20.0, "us", 0.0, 1e6, "fire only when the median kernel is shorter than this")
    max_memory_share: float = option(
        0.1,
        "share of device memory (0-1)",
        0.0,
        1.0,
        "fire only when peak allocated memory is under this share of the device (when [memory] events exist)",
    )
    min_host_share: float = option(
        0.3,
        "share of the step (0-1)",
        0.0,
        1.0,
        "fire only when the host dispatches (GPU idle) at least this share of the step",
    )


class SmallBatch(Rule[SmallBatchOptions]):
    id = "BATCH001"
    options_class = SmallBatchOptions
    name = "small-batch"
    category = "small_batch"
    summary = "GPU barely used per step: little device memory, short kernels, the host pacing the step"
    claims = ()
    doc = RuleDoc(
        what="Each step gives the GPU too little work: the memory in use is a small fraction of the "
        "device, the kernels are short, and the GPU is idle most of the step while the host "
        "launches the next ops.",
        why="A GPU is fast only on large operations: with a small batch each kernel finishes in "
        "microseconds, shorter than the host needs to launch it, so the step costs host time, not GPU "
        "time, and most of the device's memory and compute sit unused. A larger batch does more work "
        "per launch at nearly the same step time.",
        detection="All of: GPU busy (compute, exposed communication or copies) under `max_busy_share` "
        "of the step; median kernel under `max_median_kernel_us`; the host dispatching (`idle_launch`) "
        "at least `min_host_share` of the step; and, when the trace has `[memory]` events for the "
        "device, peak allocated memory under `max_memory_share` of the device's memory (without them "
        "the finding has low confidence). No time is claimed: LAUNCH001 owns the dispatch time; this "
        "finding names the cause and the fix that removes it. The what-if replay has no edit for it and "
        "the finding always shows 1.0x: a larger batch lengthens every kernel by an amount the trace does "
        "not record (kernels this short grow far less than in proportion) and changes the data loading "
        "per step, so no step time can be replayed. What the trace does say: the host's dispatch per "
        "step (`host_dispatch_ms_per_step`) does not depend on the batch, so per sample it shrinks in "
        "proportion to the batch, and the GPU's busy time per step (`gpu_busy_ms_per_step`) is what a "
        "larger batch has room to grow into.",
        fix="Training: raise the batch size until memory or throughput stops improving, and scale the "
        "learning rate with it (linearly for SGD, about with the square root for Adam; warm it up). "
        "Inference: batch requests, or replay the step as a CUDA graph:\n\n"
        "    loader = DataLoader(ds, batch_size=4 * old_batch)   # lr = 4 * old_lr (SGD), with warm-up\n"
        "    model = torch.compile(model, mode='reduce-overhead')  # inference: CUDA graphs",
        false_alarms="Latency-bound inference (one request at a time by design) cannot batch: use "
        "CUDA graphs. Models whose memory is mostly weights held elsewhere (offloaded) look small. "
        "Batch size can change convergence; tune the learning rate with it.",
    )

    def check(self, ctx: RankContext, opts: SmallBatchOptions) -> list[Finding]:
        if ctx.step_ns <= 0:
            return []
        busy_causes = [c for c in ctx.causes.columns if str(c).startswith(("compute.", "comm.", "copy."))]
        busy = ctx.per_step(*busy_causes) / ctx.step_ns
        host_causes = [c for c in ctx.causes.columns if str(c).startswith("launch.")]
        host = ctx.per_step(*host_causes) / ctx.step_ns
        k = kernel_facts(ctx).kernels
        if len(k) == 0:
            return []
        median_us = float(np.median(k["dur"].to_numpy())) / 1000
        if busy >= opts.max_busy_share or median_us >= opts.max_median_kernel_us or host < opts.min_host_share:
            return []
        peak, capacity = _peak_memory(ctx)
        memory_share = peak / capacity if peak is not None and capacity else None
        if memory_share is not None and memory_share >= opts.max_memory_share:
            return []
        n_steps = max(ctx.n_windows, 1)
        host_names = ctx.trace.host["name"]
        training = bool(name_mask(host_names, TRAINING).any() or name_mask(host_names, OPTIMIZER_STEP).any())
        device = ctx.trace.meta.devices[0].name if ctx.trace.meta.devices else "the GPU"
        title = (
            f"Small batch: {device} busy {busy:.0%} of the step, {len(k) / n_steps:.0f} kernels per step "
            f"(median {median_us:.1f} us)"
            + (f", {memory_share:.1%} of its memory in use" if memory_share is not None else "")
            + ("; a larger batch (learning rate scaled)" if training else "; batch requests or CUDA graphs")
        )
        fix = (
            "a larger batch per step (e.g. 4x), learning rate scaled with it (linear for SGD, ~sqrt for Adam) "
            "with warm-up; gradient accumulation does not help here, the per-step batch must grow"
            if training
            else "batch more requests per forward, or torch.compile(model, mode='reduce-overhead') (CUDA graphs)"
        )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=0.0,
                confidence="medium" if memory_share is not None else "low",
                confidence_reason="GPU busy share, kernel length and host share measured"
                + ("; memory in use from [memory] events" if memory_share is not None else "; no [memory] events")
                + "; no speedup shown: a larger batch changes kernel times this trace cannot replay",
                evidence={
                    "gpu_busy_share": round(busy, 3),
                    "host_dispatch_share": round(host, 3),
                    "kernels_per_step": round(len(k) / n_steps, 1),
                    "median_kernel_us": round(median_us, 2),
                    "peak_allocated_mib": round(peak / MIB, 1) if peak is not None else None,
                    "device_memory_mib": round(capacity / MIB, 1) if capacity else None,
                    "memory_share": round(memory_share, 4) if memory_share is not None else None,
                    "training": training,
                    "gpu_busy_ms_per_step": ms(busy * ctx.step_ns),
                    "host_dispatch_ms_per_step": ms(host * ctx.step_ns),
                },
                fix=fix,
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                severity_override="warning" if memory_share is not None else "info",
                record_next=[]
                if memory_share is not None
                else ["profile_memory=True to see how much memory a step uses"],
            )
        ]


def _peak_memory(ctx: RankContext) -> tuple[float | None, float | None]:
    """Peak allocated bytes on the GPU inside the analysed windows, and the device's memory."""
    mem = ctx.trace.memory
    capacity = None
    for d in ctx.trace.meta.devices:
        if d.total_memory_bytes:
            capacity = float(d.total_memory_bytes)
            break
    if capacity is None and ctx.gpu_spec is not None:
        capacity = float(ctx.gpu_spec.memory_bytes)
    if len(mem) == 0:
        return None, capacity
    gpu = mem[(mem["device_type"] == 1).to_numpy() & (mem["total_allocated"] >= 0).to_numpy()]
    gpu = gpu[ctx.in_windows(gpu["ts"].to_numpy(np.int64))]
    if len(gpu) == 0:
        return None, capacity
    return float(gpu["total_allocated"].max()), capacity
