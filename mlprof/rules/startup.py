"""STARTUP001 (info): one-off costs of the warm-up steps, reported once with their size, not as per-step costs.

Which steps are warm-up is not decided here: it is the steady-state rule's verdict
(:mod:`mlprof.analyzers.steady_state`), the same steps the report lists as set aside, so the
finding and the report never disagree about which steps were one-off.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mlprof.analyzers.steady_state import SteadyState, one_off_ns, steady_state
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions
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
    "lazy_launches": "slow first kernel launches (module loaded inside the launch; time beyond a median launch)",
}


class StartupCostsOptions(RuleOptions, frozen=True):
    """STARTUP001 has no thresholds of its own: the warm-up steps are the steady-state rule's."""


class StartupCosts(Rule[StartupCostsOptions]):
    id = "STARTUP001"
    options_class = StartupCostsOptions
    name = "startup-costs"
    category = "startup"
    summary = "one-off costs of the warm-up steps (cuDNN algorithm search, DataLoader workers, allocations), set aside"
    claims = ()
    needs_device = False
    needs_all_steps = True
    doc = RuleDoc(
        what="The first recorded steps are much longer than the others because of work done once: "
        "cuDNN choosing algorithms on its first call per shape (all of them with "
        "`cudnn.benchmark=True`), DataLoader worker processes starting and filling their queues, the "
        "caching allocator's first `cudaMalloc`s, CUDA modules loaded on first launch.",
        why="These costs are paid once per process (or once per epoch for DataLoader workers without "
        "`persistent_workers`), not every step. Counted as per-step time they would make a short "
        "profile look slow and send you after the wrong fix; left unexplained they look like a "
        "stall. They are reported once, with their size, so you can see them and leave them alone "
        "(or cut them: `persistent_workers=True`, warm-up steps before timing).",
        detection="The warm-up steps are the ones the steady-state rule sets aside as `warm-up` (the "
        "report's *set aside* list; see the README's *Steady state*: leading steps slower than the median "
        "by max(2 spreads, 20%), or carrying one-off allocator, module-loading or lazy-launch work), judged "
        "on all of the trace's steps even when `--steps` picks some. Their excess over the median steady "
        "step is split by kind: for each, the time in the warm-up steps (`aten::cudnn_*` ops, DataLoader "
        "`__next__`, `cudaMalloc`/`cudaFree`, `cuModuleLoad*`/`cuLibraryLoad*`/`cudaGetFuncBySymbol`, kernel "
        "launches slower than max(1 ms, 50x the median launch): their time beyond a median launch) minus "
        "the median time of that kind in a steady step, once per warm-up step (kinds can overlap: an "
        "allocation made inside a cuDNN call counts in both). A long step that is not a leading one is an "
        "outlier, not start-up, and is not reported here. No time is claimed and the expected speedup is "
        "always 1.0: there is no per-step fix, so the what-if replay has no graph edit for it.",
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
        if len(steps) == 0:
            return []
        steady = _verdict(ctx)
        warm = [s for s in steady.set_aside if s.reason == "warm-up"]
        if not warm:
            return []
        order = np.argsort(steps["ts"].to_numpy(np.int64), kind="stable")
        numbers = steps["step"].to_numpy(np.int64)[order]
        ts = steps["ts"].to_numpy(np.int64)[order]
        end = ts + steps["dur"].to_numpy(np.int64)[order]
        dur = end - ts
        is_warm = np.isin(numbers, [s.step for s in warm])
        is_steady = steady.is_steady(numbers)
        if not is_steady.any():
            return []
        typical = float(np.median(dur[is_steady]))
        excess = float((dur[is_warm] - typical).sum())
        n_warm = int(is_warm.sum())
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
            usual = float(np.median(per_step[is_steady]))
            extra = float(per_step[is_warm].sum()) - n_warm * usual
            if extra <= 0.01 * typical * n_warm:
                continue
            kinds[kind] = {
                "what": LABELS[kind],
                "warm_up_steps_ms": round(float(per_step[is_warm].sum()) / NS_PER_MS, 3),
                "median_steady_step_ms": round(usual / NS_PER_MS, 3),
                "one_off_ms": round(extra / NS_PER_MS, 3),
                "calls_in_warm_up_steps": int(calls[is_warm].sum()),
            }
        lazy = one_off_ns(ctx.trace, ts, end)["lazy launches"]  # kernel launches that loaded their module
        extra = float(lazy[is_warm].sum()) - n_warm * float(np.median(lazy[is_steady]))
        if extra > 0.01 * typical * n_warm:
            kinds["lazy_launches"] = {
                "what": LABELS["lazy_launches"],
                "warm_up_steps_ms": round(float(lazy[is_warm].sum()) / NS_PER_MS, 3),
                "median_steady_step_ms": round(float(np.median(lazy[is_steady])) / NS_PER_MS, 3),
                "one_off_ms": round(extra / NS_PER_MS, 3),
            }
        first = [s.step for s in warm]
        parts = sorted(kinds.values(), key=lambda k: -k["one_off_ms"])
        listed = ", ".join(f"{p['what'].split(' (')[0]} {p['one_off_ms']:.1f} ms" for p in parts[:3])
        which = f"step {first[0]}" if len(first) == 1 else f"steps {', '.join(str(s) for s in first)}"
        title = (
            f"Start-up costs, set aside: warm-up {which} took {excess / NS_PER_MS:.1f} ms more than the median "
            f"steady step ({typical / NS_PER_MS:.1f} ms)" + (f": {listed}" if listed else "")
        )
        if not kinds:
            title += "; none of the known one-off kinds explains it"
        analysed = set(ctx.windows["step"].tolist())
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=0.0,
                confidence="medium" if kinds else "low",
                confidence_reason="the warm-up steps the steady-state rule set aside, their excess over the median "
                "steady step split by the kinds of one-off work found in them"
                + (
                    ""
                    if kinds
                    else "; no known one-off kind (cuDNN, DataLoader, allocator, module loading) explains it"
                ),
                evidence={
                    "warm_up_steps": first,
                    "set_aside": [s.to_dict() for s in warm],
                    "first_step": int(numbers[0]),
                    "first_step_ms": round(float(dur[0]) / NS_PER_MS, 3),
                    "median_step_ms": round(typical / NS_PER_MS, 3),
                    "one_off_ms": round(excess / NS_PER_MS, 3),
                    "warm_up_in_analysed_steps": sorted(analysed & set(first)),
                    "by_kind": kinds,
                },
                fix="nothing per step; persistent_workers=True, warm-up steps before timing",
                steps=first,
                time_ranges_ns=[(int(a), int(b)) for a, b in zip(ts[is_warm], end[is_warm], strict=True)],
                severity_override="info",
            )
        ]


def _verdict(ctx: RankContext) -> SteadyState:
    """The report's steady-state verdict on this rank; judged afresh on all steps when ``--steps`` chose some."""
    steady = getattr(ctx.analysis, "steady", None)
    if isinstance(steady, SteadyState) and not steady.overridden:
        return steady
    return steady_state(ctx.trace.steps, ctx.trace)
