"""ALLOC001: cudaMalloc/cudaFree inside steps (empty_cache churn, allocator thrash)."""

from __future__ import annotations

import numpy as np

from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, top_ranges
from mlprof.trace.vocabulary import ALLOC_RUNTIME, names_matching


class AllocatorChurnOptions(RuleOptions, frozen=True):
    """ALLOC001's thresholds (``[tool.mlprof.rules.ALLOC001]``, ``mlprof explain ALLOC001``)."""

    min_share: float = common("min_share", 0.02)


class AllocatorChurn(Rule[AllocatorChurnOptions]):
    id = "ALLOC001"
    options_class = AllocatorChurnOptions
    name = "allocator-churn"
    category = "allocator"
    summary = "device malloc/free calls inside steps (torch.cuda.empty_cache, fragmentation)"
    claims = ("launch.alloc",)
    doc = RuleDoc(
        what="`cudaMalloc`/`cudaFree` (or `hipMalloc`/`hipFree`) run inside training steps while the device is idle.",
        why="PyTorch's caching allocator should serve every allocation after the first steps from "
        "its pool. Calls to the driver allocator in steady state mean the pool is being emptied "
        "(`torch.cuda.empty_cache()` in the loop) or is fragmented; `cudaFree` also waits for the "
        "whole device to finish.",
        detection="Attribution cause `launch.alloc`: the device is idle while the host is inside a "
        "device allocator call within an analysed step.",
        fix="Remove `torch.cuda.empty_cache()` from the training loop; if memory is tight, reduce "
        "fragmentation instead:\n\n"
        "    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python train.py\n\n"
        "and keep tensor shapes stable across steps (pad variable-length batches to buckets).",
        false_alarms="The first steps after start-up legitimately grow the pool; analyse later "
        "steps with `--steps`. cuDNN/cuBLAS workspace allocations on the first use of a shape are "
        "one-off.",
    )

    def check(self, ctx: RankContext, opts: AllocatorChurnOptions) -> list[Finding]:
        lost = ctx.per_step("launch.alloc")
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        runtime = ctx.trace.runtime
        calls = runtime[names_matching(runtime["name"], ALLOC_RUNTIME)]
        calls = calls[ctx.in_windows(calls["ts"].to_numpy(np.int64))]
        n_steps = max(ctx.n_windows, 1)
        counts = calls["name"].astype(str).value_counts()
        return [
            self.finding(
                ctx,
                title=f"Device allocator calls inside steps idle the GPU {ms(lost)} ms per step",
                time_lost_ns_per_step=lost,
                confidence="medium",
                confidence_reason="allocator time is measured; whether it recurs beyond the profiled steps is not",
                evidence={
                    "calls_per_step": {str(k): round(v / n_steps, 2) for k, v in counts.items()},
                    "host_ms_in_calls_per_step": ms(float(calls["dur"].sum()) / n_steps),
                    "gpu_idle_ms_per_step": ms(lost),
                },
                fix="remove torch.cuda.empty_cache() from the loop; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
                steps=ctx.steps_with("launch.alloc", min_share=opts.min_share),
                time_ranges_ns=top_ranges(calls["ts"].to_numpy(np.int64), calls["end"].to_numpy(np.int64)),
                claimed={"launch.alloc": lost},
            )
        ]
