"""FUSE002: the optimizer updates parameters one tensor (and one kernel) at a time."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from mlprof.analyzers.kernels import in_windows
from mlprof.rules._kernels import kernel_facts, top_names
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, ms, top_ranges
from mlprof.trace.vocabulary import DISPATCH_CATS, OPTIMIZER_STEP, names_matching


class UnfusedOptimizer(Rule):
    id = "FUSE002"
    name = "unfused-optimizer"
    category = "unfused_kernels"
    summary = "per-parameter optimizer kernels (foreach/fused implementation not used)"
    claims = ("compute.optimizer", "launch.optimizer", "other.optimizer")
    defaults: ClassVar[dict[str, float]] = {"min_share": 0.02, "min_kernels_per_step": 8}
    needs_device = False
    doc = RuleDoc(
        what="`optimizer.step()` launches several small elementwise kernels per parameter tensor "
        "(the `foreach=False` loop), instead of a few multi-tensor kernels.",
        why="Adam does about ten elementwise operations per parameter; looped per tensor, a model "
        "with 200 parameter tensors launches ~2,000 kernels per step, each reading and writing "
        "the parameter, gradient and two moments. The GPU waits for the launches and re-reads "
        "the same memory many times.",
        detection="Memory-bound kernels launched (by CUPTI correlation) from inside an "
        "`Optimizer.step` range that are not multi-tensor kernels (`multi_tensor_apply`, "
        "`fused_adam`). The time lost is the host time inside the optimizer step while the "
        "device is idle (`launch.optimizer`: dispatching ops; `other.optimizer`: the Python loop "
        "between them) plus the fusion saving of those kernels (chain time minus its longest "
        "kernel) on the critical path (`compute.optimizer`). On a CPU-only trace the rule fires "
        "when `Optimizer.step` runs per-tensor ops and no `_foreach_`/`_fused_` op, and the time "
        "lost is the optimizer's host time.",
        fix="Use the fused or foreach implementation (the default is foreach only when all "
        "parameters are on CUDA and no option disables it):\n\n"
        "    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)\n"
        "    # or foreach=True; for SGD: torch.optim.SGD(..., foreach=True)",
        false_alarms="Optimizers without a fused/foreach path (some third-party ones) can only be "
        "fixed by compiling the step (`torch.compile(opt.step)`). Parameters on different devices "
        "or with sparse gradients force the per-tensor loop.",
    )

    def check(self, ctx: RankContext, cfg: dict[str, float]) -> list[Finding]:
        host = ctx.trace.host
        steps = host[names_matching(host["name"], OPTIMIZER_STEP)]
        steps = steps[ctx.in_windows(steps["ts"].to_numpy(np.int64))]
        if len(steps) == 0:
            return []
        n_steps = max(ctx.n_windows, 1)
        launch = ctx.per_step("launch.optimizer", "other.optimizer")
        if ctx.has_device:
            k = kernel_facts(ctx).kernels
            opt = k[k["optimizer"]]
            if len(opt) / n_steps < cfg["min_kernels_per_step"]:
                return []
            saving = float(opt["saving"].sum()) / n_steps
            compute = min(saving, ctx.per_step("compute.optimizer"))
            units = "per-parameter kernels"
            count = len(opt)
            extra = {
                "multi_tensor_kernels_per_step": round(float(k["foreach"].sum()) / n_steps, 1),
                "optimizer_kernel_ms_per_step": ms(float(opt["dur"].sum()) / n_steps),
                "top_kernels": top_names(opt, n_steps),
            }
        else:
            ops = _ops_inside(host, steps)
            names = ops["name"].astype(str)
            if names.str.contains(FOREACH_OP).any():
                return []
            if len(ops) / n_steps < cfg["min_kernels_per_step"]:
                return []
            compute = 0.0
            units = "per-tensor ops"
            count = len(ops)
            extra = {"top_ops": names.value_counts().head(5).to_dict()}
        lost = compute + launch
        if ctx.step_ns <= 0 or lost / ctx.step_ns < cfg["min_share"]:
            return []
        title = (
            f"Optimizer runs {count / n_steps:.0f} {units} per step; a fused optimizer saves ~{ms(lost)} ms per step"
        )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=lost,
                confidence="high" if launch >= compute else "medium",
                confidence_reason="host time inside Optimizer.step with the device idle is measured"
                + ("; kernel fusion saving is estimated" if compute else ""),
                evidence={
                    "optimizer_ranges": sorted(set(steps["name"].astype(str).tolist()))[:3],
                    f"{units.replace(' ', '_').replace('-', '_')}_per_step": round(count / n_steps, 1),
                    "optimizer_step_ms": ms(float(steps["dur"].sum()) / n_steps),
                    "idle_in_optimizer_ms_per_step": ms(launch),
                    **extra,
                },
                fix="torch.optim.AdamW(params, fused=True)  # or foreach=True",
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                time_ranges_ns=top_ranges(steps["ts"].to_numpy(np.int64), steps["end"].to_numpy(np.int64)),
                claimed={
                    "compute.optimizer": compute,
                    "launch.optimizer": ctx.per_step("launch.optimizer"),
                    "other.optimizer": ctx.per_step("other.optimizer"),
                },
            )
        ]


FOREACH_OP = r"_foreach_|_fused_"
"""ATen ops of the multi-tensor optimizer implementations."""


def _ops_inside(host: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    ops = host[host["cat"].isin(DISPATCH_CATS)]
    ops = ops[~names_matching(ops["name"], OPTIMIZER_STEP)]
    inside = in_windows(
        ops["ts"].to_numpy(np.int64), windows["ts"].to_numpy(np.int64), windows["end"].to_numpy(np.int64)
    )
    return ops[inside]
