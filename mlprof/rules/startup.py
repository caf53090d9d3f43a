"""STARTUP001 (info): one-off costs of the first step, reported once with their size, not as per-step costs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, option
from mlprof.trace.vocabulary import ALLOC_RUNTIME, DATALOADER, name_mask

NS_PER_MS = 1_000_000
CUDNN_FIRST = re.compile(r"^aten::cudnn_(convolution|batch_norm|convolution_backward|batch_norm_backward)$")
"""cuDNN ops whose first call per shape picks an algorithm (``cudnn.benchmark`` tries them all)."""
MODULE_LOAD = re.compile(r"^cu(Module|Library)(Load\w*|GetFunction)$|^cudaGetFuncBySymbol$|^cuModuleGetLoadingMode$")
"""Lazy CUDA module loading (``CUDA_MODULE_LOADING=LAZY``): kernels' code loaded on their first launch."""
KINDS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("cudnn_first_calls", "host", CUDNN_FIRST),
    ("dataloader_start", "host", DATALOADER),
    ("allocations", "runtime", ALLOC_RUNTIME),
    ("module_loading", "runtime", MODULE_LOAD),
)
LABELS = {
    "cudnn_first_calls": "cuDNN first calls (algorithm search, cudnn.benchmark)",
    "dataloader_start": "DataLoader start (workers started, first batches)",
    "allocations": "device allocations (cudaMalloc/cudaFree)",
    "module_loading": "lazy CUDA module loading",
}


@dataclass(frozen=True)
class StartupCostsOptions(RuleOptions):
    """STARTUP001's thresholds (``[tool.mlprof.rules.STARTUP001]``, ``mlprof explain STARTUP001``)."""

    min_excess_share: float = option(
        0.2,
        "share of the median step (0-1e3)",
        0.0,
        1000.0,
        "report when the first step is longer than the median step by at least this share of it",
    )
    min_steps: int = option(3, "steps", 2.0, 1e6, "steps the trace needs before the first is compared")


class StartupCosts(Rule[StartupCostsOptions]):
    id = "STARTUP001"
    options_class = StartupCostsOptions
    name = "startup-costs"
    category = "startup"
    summary = "one-off costs in the first step (cuDNN algorithm search, DataLoader workers, allocations), set aside"
    claims = ()
    needs_device = False
    doc = RuleDoc(
        what="The first recorded step is much longer than the others because of work done once: "
        "cuDNN choosing algorithms on its first call per shape (all of them with "
        "`cudnn.benchmark=True`), DataLoader worker processes starting and filling their queues, the "
        "caching allocator's first `cudaMalloc`s, CUDA modules loaded on first launch.",
        why="These costs are paid once per process (or once per epoch for DataLoader workers without "
        "`persistent_workers`), not every step. Counted as per-step time they would make a short "
        "profile look slow and send you after the wrong fix; left unexplained they look like a "
        "stall. They are reported once, with their size, so you can see them and leave them alone "
        "(or cut them: `persistent_workers=True`, warm-up steps before timing).",
        detection="Needs at least `min_steps` steps (all of the trace's steps, analysed or not). The "
        "first step's excess over the median of the others, when at least `min_excess_share` of that "
        "median, is split by kind: for each, the time in the first step (`aten::cudnn_*` ops, DataLoader "
        "`__next__`, `cudaMalloc`/`cudaFree`, `cuModuleLoad*`/`cuLibraryLoad*`/`cudaGetFuncBySymbol`) "
        "minus the median time of that kind in the other steps (kinds can overlap: an allocation made "
        "inside a cuDNN call counts in both). No time is claimed.",
        fix="Nothing to fix per step; to shorten start-up or keep it out of measurements:\n\n"
        "    loader = DataLoader(ds, num_workers=8, persistent_workers=True)  # workers start once\n"
        "    for _ in range(3): train_step(next(it))   # warm up before timing/profiling\n"
        "    # profile with schedule(wait=1, warmup=2, active=5): start-up falls in wait/warmup",
        false_alarms="A first step that is long for a reason that recurs (an evaluation pass, a "
        "checkpoint) is not start-up: compare with later steps. Shapes that change every step make "
        "cuDNN search again: that is a per-step cost (see COMPILE001 for recompiles).",
    )

    def check(self, ctx: RankContext, opts: StartupCostsOptions) -> list[Finding]:
        steps = ctx.trace.steps
        if len(steps) < opts.min_steps:
            return []
        ts = steps["ts"].to_numpy(np.int64)
        end = ts + steps["dur"].to_numpy(np.int64)
        order = np.argsort(ts)
        ts, end = ts[order], end[order]
        dur = end - ts
        typical = float(np.median(dur[1:]))
        excess = float(dur[0] - typical)
        if typical <= 0 or excess < opts.min_excess_share * typical:
            return []
        kinds: dict[str, dict[str, Any]] = {}
        for kind, table, pattern in KINDS:
            frame = ctx.trace.host if table == "host" else ctx.trace.runtime
            if len(frame) == 0:
                continue
            hit = name_mask(frame["name"], pattern)
            if not hit.any():
                continue
            h_ts = frame["ts"].to_numpy(np.int64)[hit]
            h_dur = frame["dur"].to_numpy(np.int64)[hit]
            pos = np.searchsorted(ts, h_ts, side="right") - 1
            inside = (pos >= 0) & (h_ts < end[np.clip(pos, 0, None)])
            per_step = np.bincount(pos[inside], weights=h_dur[inside], minlength=len(ts))
            calls = np.bincount(pos[inside], minlength=len(ts))
            extra = float(per_step[0] - np.median(per_step[1:]))
            if extra <= 0.01 * typical:
                continue
            kinds[kind] = {
                "what": LABELS[kind],
                "first_step_ms": round(per_step[0] / NS_PER_MS, 3),
                "median_other_steps_ms": round(float(np.median(per_step[1:])) / NS_PER_MS, 3),
                "one_off_ms": round(extra / NS_PER_MS, 3),
                "calls_in_first_step": int(calls[0]),
            }
        first_step = int(steps["step"].to_numpy()[order][0])
        if not kinds:  # a long first step with none of the known one-off kinds: not shown to be start-up
            ctx.verdicts[self.id] = (
                f"first step {excess / NS_PER_MS:.1f} ms longer than the median step, but none of the known "
                "one-off kinds (cuDNN first calls, DataLoader start, allocations, module loading) explains it"
            )
            return []
        analysed = first_step in set(ctx.windows["step"].tolist())
        parts = sorted(kinds.values(), key=lambda k: -k["one_off_ms"])
        listed = ", ".join(f"{p['what'].split(' (')[0]} {p['one_off_ms']:.1f} ms" for p in parts[:3])
        title = (
            f"Start-up costs, set aside: the first step ({first_step}) took {excess / NS_PER_MS:.1f} ms more than "
            f"the median step ({typical / NS_PER_MS:.1f} ms)" + (f": {listed}" if listed else "")
        )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=0.0,
                confidence="medium",
                confidence_reason="the first step's excess over the median step, split by the kinds of one-off "
                "work found in it",
                evidence={
                    "first_step": first_step,
                    "first_step_ms": round(float(dur[0]) / NS_PER_MS, 3),
                    "median_step_ms": round(typical / NS_PER_MS, 3),
                    "one_off_ms": round(excess / NS_PER_MS, 3),
                    "first_step_in_analysed_steps": analysed,
                    "by_kind": kinds,
                },
                fix="nothing per step; persistent_workers=True, warm-up steps before timing",
                steps=[first_step],
                time_ranges_ns=[(int(ts[0]), int(end[0]))],
                severity_override="info",
            )
        ]
