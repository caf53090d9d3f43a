"""FUSE002: the optimizer updates parameters one tensor (and one kernel) at a time."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from mlprof.analyzers.kernels import in_windows
from mlprof.rules._kernels import kernel_facts, top_names
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option, top_ranges
from mlprof.trace.vocabulary import DISPATCH_CATS, OPTIMIZER_STEP, names_matching


class UnfusedOptimizerOptions(RuleOptions, frozen=True):
    """FUSE002's thresholds (``[tool.mlprof.rules.FUSE002]``, ``mlprof explain FUSE002``)."""

    min_share: float = common("min_share", 0.02)
    min_kernels_per_step: float = option(
        8.0,
        "kernels per step",
        1.0,
        1e9,
        "an optimizer step must launch at least this many per-parameter kernels to be reported",
    )
    kernel_floor_us: float = option(
        2.0,
        "us",
        0.0,
        1000.0,
        "what-if replay: fixed device cost of each per-parameter kernel that a multi-tensor kernel saves",
    )
    foreach_launch_us: float = option(
        30.0, "us", 0.0, 100000, "what-if replay: host time of one multi-tensor kernel launch inside Optimizer.step"
    )


class UnfusedOptimizer(Rule[UnfusedOptimizerOptions]):
    id = "FUSE002"
    options_class = UnfusedOptimizerOptions
    name = "unfused-optimizer"
    category = "unfused_kernels"
    summary = "per-parameter optimizer kernels (foreach/fused implementation not used)"
    claims = ("compute.optimizer", "launch.optimizer", "other.optimizer")
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
        false_alarms="A job already on a fused or foreach optimizer (multi-tensor kernels launched inside "
        "the step, or a `Fused*` class) is never told to switch: the finding is then about the per-tensor "
        "work beside the update (clipping, EMA). Shampoo and EMA updates are named as what they are, "
        "with their own fix; the fix names the optimizer class found in the trace. "
        "Optimizers without a fused/foreach path (some third-party ones) can only be "
        "fixed by compiling the step (`torch.compile(opt.step)`). Parameters on different devices "
        "or with sparse gradients force the per-tensor loop.",
    )

    def check(self, ctx: RankContext, opts: UnfusedOptimizerOptions) -> list[Finding]:
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
            if len(opt) / n_steps < opts.min_kernels_per_step:
                return []
            saving = float(opt["saving"].sum()) / n_steps
            compute = min(saving, ctx.per_step("compute.optimizer"))
            units = "per-parameter kernels"
            count = len(opt)
            in_step_multi = int((k["foreach"] & k["in_optimizer"]).sum())
            extra = {
                "multi_tensor_kernels_per_step": round(float(k["foreach"].sum()) / n_steps, 1),
                "multi_tensor_kernels_in_optimizer_per_step": round(in_step_multi / n_steps, 1),
                "optimizer_kernel_ms_per_step": ms(float(opt["dur"].sum()) / n_steps),
                "top_kernels": top_names(opt, n_steps),
            }
        else:
            ops = _ops_inside(host, steps)
            names = ops["name"].astype(str)
            if names.str.contains(FOREACH_OP).any():
                return []
            if len(ops) / n_steps < opts.min_kernels_per_step:
                return []
            compute = 0.0
            in_step_multi = 0
            units = "per-tensor ops"
            count = len(ops)
            extra = {"top_ops": names.value_counts().head(5).to_dict()}
        lost = compute + launch
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        ranges = sorted(set(steps["name"].astype(str).tolist()))
        optimizers = sorted({_optimizer_name(r) for r in ranges})
        multi = in_step_multi > 0 or any(FUSED_CLASS.search(n) for n in optimizers)
        kind, fix, advice = _advice(optimizers, multi)
        title = f"Optimizer ({', '.join(optimizers)}) runs {count / n_steps:.0f} {units} per step; " + advice.format(
            ms(lost)
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
                    "optimizer_ranges": ranges[:3],
                    "optimizer": optimizers,
                    "diagnosis": kind,
                    f"{units.replace(' ', '_').replace('-', '_')}_per_step": round(count / n_steps, 1),
                    "optimizer_step_ms": ms(float(steps["dur"].sum()) / n_steps),
                    "idle_in_optimizer_ms_per_step": ms(launch),
                    **extra,
                },
                fix=fix,
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

FUSED_CLASS = re.compile(r"^Fused|^_?MultiTensor|Apex|^FusedAdam|^FusedLAMB|^FusedSGD", re.IGNORECASE)
"""Optimizer classes that already update all parameters in multi-tensor kernels (apex, DeepSpeed)."""
WITH_FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}
"""torch.optim classes with ``fused=True`` (PyTorch 2.4+); the others below have ``foreach=True``."""
WITH_FOREACH = {"RMSprop", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop", "Adadelta"}
OTHER_KINDS: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (
        re.compile(r"shampoo", re.IGNORECASE),
        "shampoo",
        "Shampoo's preconditioner work per parameter block (not a plain elementwise update)",
        "precondition less often (precondition_frequency / start_preconditioning_step), or compile the step: "
        "torch.compile(optimizer.step)",
    ),
    (
        re.compile(r"\bema\b|_ema|ema_|ExponentialMovingAverage|AveragedModel|swa", re.IGNORECASE),
        "ema",
        "an EMA (weight averaging) update, one parameter at a time",
        "torch._foreach_lerp_(ema_params, model_params, 1 - decay)  # one multi-tensor op; or "
        "AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))",
    ),
)


def _optimizer_name(range_name: str) -> str:
    """``Optimizer.step#AdamW.step`` -> ``AdamW``."""
    tail = range_name.split("#", 1)[1] if "#" in range_name else range_name
    return tail.split(".", 1)[0] or range_name


def _advice(names: list[str], multi: bool) -> tuple[str, str, str]:
    """(diagnosis, fix, title tail with ``{}`` for the ms saved) that fit the optimizer in the trace."""
    for pattern, kind, what, fix in OTHER_KINDS:
        if any(pattern.search(n) for n in names):
            return kind, fix, f"this is {what}: batching it saves up to ~{{}} ms per step"
    if multi:
        return (
            "per_tensor_work_beside_fused_update",
            "keep the fused/foreach optimizer; batch the remaining per-tensor work (gradient clipping, "
            "EMA, custom updates) with torch._foreach_* ops or torch.compile(optimizer.step)",
            "the update itself is already multi-tensor: the per-tensor work around it costs ~{} ms per step",
        )
    fused = [n for n in names if n in WITH_FUSED]
    foreach = [n for n in names if n in WITH_FOREACH]
    if fused:
        fix = f"torch.optim.{fused[0]}(params, ..., fused=True)  # or foreach=True"
    elif foreach:
        fix = f"torch.optim.{foreach[0]}(params, ..., foreach=True)"
    else:
        fix = "a foreach/fused implementation of this optimizer, or torch.compile(optimizer.step)"
    return "per_parameter_update", fix, "a fused optimizer saves ~{} ms per step"


def _ops_inside(host: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    ops = host[host["cat"].isin(DISPATCH_CATS)]
    ops = ops[~names_matching(ops["name"], OPTIMIZER_STEP)]
    inside = in_windows(
        ops["ts"].to_numpy(np.int64), windows["ts"].to_numpy(np.int64), windows["end"].to_numpy(np.int64)
    )
    return ops[inside]
