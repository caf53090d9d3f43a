"""FUSE001: chains of short memory-bound kernels that a compiler would fuse into one."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlprof.analyzers.framework import is_pytorch
from mlprof.rules._kernels import kernel_facts, top_names
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option


class UnfusedElementwiseOptions(RuleOptions, frozen=True):
    """FUSE001's thresholds (``[tool.mlprof.rules.FUSE001]``, ``mlprof explain FUSE001``)."""

    min_share: float = common("min_share", 0.03)
    min_chain: int = option(
        2,
        "kernels",
        2.0,
        1e6,
        "only chains of at least this many back-to-back memory-bound kernels are counted and claimed",
    )
    max_gap_us: float = option(
        5.0,
        "us",
        0.0,
        1e6,
        "what-if replay: a fused run is cut where the device sat idle longer than this between two kernels",
    )


class UnfusedElementwise(Rule[UnfusedElementwiseOptions]):
    id = "FUSE001"
    options_class = UnfusedElementwiseOptions
    name = "unfused-elementwise"
    category = "unfused_kernels"
    summary = "chains of memory-bound kernels (elementwise, norm, softmax) that fusion would merge"
    claims = ("compute.memory_bound",)
    doc = RuleDoc(
        what="Runs of consecutive memory-bound kernels on a stream (elementwise, activation, "
        "normalisation, softmax, reductions) that eager PyTorch launches one op at a time.",
        why="A memory-bound kernel's time is the bytes it reads and writes at the device's memory "
        "bandwidth. In a chain, each kernel writes its result to device memory and the next reads "
        "it back; one fused kernel reads the inputs once and writes the output once.",
        detection="Kernels are classified by name (ATen `elementwise_kernel`, `reduce_kernel`, "
        "`layer_norm`, `softmax`, cuDNN batch-norm...; checked against real V100/2080Ti/B200/MI300X "
        "traces). A chain is a maximal run of such kernels on one stream not interrupted by another "
        "kernel. The fused kernel is estimated to take as long as the chain's longest kernel (about "
        "one kernel's worth of traffic), so the saving is the chain's time minus its longest kernel, "
        "capped by the memory-bound time that is on the critical path (`compute.memory_bound`).",
        fix="Compile the model (or the hot function) so that Inductor fuses the chain:\n\n"
        "    model = torch.compile(model)\n\n"
        "or use fused building blocks (`F.scaled_dot_product_attention`, fused LayerNorm/GELU from "
        "apex or Transformer Engine) and write custom elementwise code as one Triton kernel.",
        false_alarms="Chains whose kernels work on different tensors that do not fit one fused "
        "kernel (a reduction followed by a broadcast) fuse partially. Kernels already produced by "
        "torch.compile (`triton_*`) are not counted. Tiny tensors may be bound by launch latency, "
        "not bandwidth: see LAUNCH001.",
    )

    def check(self, ctx: RankContext, opts: UnfusedElementwiseOptions) -> list[Finding]:
        k = kernel_facts(ctx).kernels
        members = k[(k["klass"] == "memory_bound") & ~k["optimizer"]]
        chained = members[members["chain"] >= 0]
        lengths = chained.groupby("chain").size()
        long_enough = lengths[lengths >= opts.min_chain]
        chained = chained[chained["chain"].isin(long_enough.index)]  # min_chain decides what is claimed
        if len(chained) == 0:
            return []
        n_steps = max(ctx.n_windows, 1)
        saving = float(chained["saving"].sum()) / n_steps
        lost = min(saving, ctx.per_step("compute.memory_bound"))
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        lengths = long_enough
        spec = ctx.gpu_spec
        compiled = int((k["klass"] == "compiled").sum())
        title = (
            f"{len(lengths) / n_steps:.1f} chains of memory-bound kernels per step "
            f"(mean {lengths.mean():.1f} kernels): fusing saves ~{ms(lost)} ms per step"
        )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=lost,
                confidence="medium",
                confidence_reason="fused time estimated as the longest kernel of each chain; shapes not used",
                evidence={
                    "memory_bound_kernels_per_step": round(len(members) / n_steps, 1),
                    "memory_bound_ms_per_step": ms(float(members["dur"].sum()) / n_steps),
                    "chains_per_step": round(len(lengths) / n_steps, 1),
                    "mean_chain_length": round(float(lengths.mean()), 2),
                    "longest_chain": int(lengths.max()),
                    "estimated_saving_ms_per_step": ms(saving),
                    "on_critical_path_ms_per_step": ms(ctx.per_step("compute.memory_bound")),
                    "device_bandwidth_gbs": spec.bandwidth_gbs if spec else None,
                    "compiled_kernels_seen": compiled,
                    "top_kernels": top_names(members, n_steps),
                },
                fix="model = torch.compile(model)"
                if is_pytorch(ctx.trace)
                else "fuse the chained kernels into one kernel (one pass over memory instead of one per kernel)",
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                time_ranges_ns=_chain_ranges(chained),
                claimed={"compute.memory_bound": lost},
            )
        ]


def _chain_ranges(chained: pd.DataFrame, n: int = 5) -> list[tuple[int, int]]:
    spans = chained.groupby("chain").agg(ts=("ts", "min"), end=("end", "max"), saving=("saving", "sum"))
    top = spans.sort_values("saving", ascending=False).head(n).sort_values("ts")
    return [(int(a), int(b)) for a, b in zip(top["ts"].to_numpy(np.int64), top["end"].to_numpy(np.int64), strict=True)]
