"""MEM001: allocated memory at step boundaries keeps rising."""

from __future__ import annotations

import itertools

from mlprof.analyzers.memory_curve import memory_curves, window_growth
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, option

MIB = 1 << 20


class MemoryLeakOptions(RuleOptions, frozen=True):
    """MEM001's thresholds (``[tool.mlprof.rules.MEM001]``, ``mlprof explain MEM001``)."""

    min_growth_mib_per_step: float = option(
        0.25, "MiB per step", 0.0, 1e9, "allocated memory at step starts must grow at least this much per step"
    )
    min_r2: float = common("min_r2", 0.8)
    min_steps: int = option(4, "steps", 2.0, 1e9, "fewer analysed steps than this are not judged for a per-step trend")
    min_late_ratio: float = common("min_late_ratio", 0.5)
    min_window_growth_mib: float = option(
        2.0, "MiB", 0.0, 1e9, "without steps: memory taken across the window and never released must exceed this"
    )
    min_rising_quarters: int = option(
        3,
        "quarters (1-4)",
        1.0,
        4.0,
        "without steps: the memory floor must rise through at least this many of the window's 4 quarters",
    )


class MemoryLeak(Rule[MemoryLeakOptions]):
    id = "MEM001"
    options_class = MemoryLeakOptions
    name = "memory-leak"
    category = "memory_leak"
    summary = "memory allocated at step boundaries grows step after step"
    claims = ()
    needs_device = False
    needs_all_steps = True

    def merge_key(self, finding: Finding) -> str:
        return str(finding.evidence.get("device", ""))  # one leak per device

    doc = RuleDoc(
        what="The memory still allocated when a step starts grows with every step: something "
        "created in each step survives it.",
        why="It does not slow the step now; it ends the job later, with an out-of-memory error "
        "after hours of training, or forces a smaller batch. The usual cause is a tensor kept "
        "across steps that still holds its autograd graph (`losses.append(loss)`), or a cache "
        "that only grows.",
        detection="From the allocator's `[memory]` events (`profile_memory=True`): `Total "
        "Allocated` just before each step starts, a least-squares line over the steps, and its "
        "fit. A leak needs a slope above `min_growth_mib_per_step`, a good fit (`min_r2`), at least "
        "`min_steps` steps, and growth that continues in the second half of the steps (slope there "
        "at least `min_late_ratio` of the overall slope) so that warm-up (optimizer state, "
        "allocator pools filled in the first steps) is not taken for a leak. Growth inside a step "
        "(the forward/backward sawtooth) is not looked at. The evidence lists the ops whose "
        "allocations in the analysed steps are never freed in the trace, and projects the steps "
        "left until the device is full. The expected speedup is 1.0: it costs memory, not time. "
        "Without step markers (one window), the rule reads the *floor*: the lowest level from each "
        "instant to the end of the window, i.e. memory never given back afterwards. It fires when the "
        "floor rises by at least `min_window_growth_mib` and rises (by 5% of that or more) in at least "
        "`min_rising_quarters` of the window's four quarters (a trace that merely ends mid-step rises "
        "in the last quarter only).",
        fix="Keep numbers, not graphs, across steps; free what you cache:\n\n"
        "    losses.append(loss.item())        # not losses.append(loss)\n"
        "    history.append(out.detach().cpu())  # not the live output\n\n"
        "Clear per-step caches, avoid growing lists of tensors, and check hooks that store "
        "activations.",
        false_alarms="A few steps of a job that is still warming up (lazy optimizer state, "
        "growing dynamic shapes, a data-dependent cache that saturates) look like a leak: record "
        "more steps. Memory returned at epoch boundaries is a plateau, not a leak.",
    )

    def check(self, ctx: RankContext, opts: MemoryLeakOptions) -> list[Finding]:
        steps = ctx.analysis.steps
        if len(steps) == 0:
            return self._without_steps(ctx, opts)
        curves = memory_curves(ctx.trace.memory, steps, ctx.trace.host)
        if not curves:
            return []
        if len(steps) < opts.min_steps:
            ctx.verdicts[self.id] = (
                f"not judged: {len(steps)} steps with allocator events, {int(opts.min_steps)} needed for a trend"
            )
            return []
        findings = []
        verdicts = []
        for curve in curves:
            slope = curve.slope_bytes_per_step
            trend = (
                f"{curve.device}: {slope / MIB:+.2f} MiB per step at step start (r2 {curve.r2:.2f}, "
                f"second half {curve.late_slope_bytes_per_step / MIB:+.2f} MiB per step)"
            )
            if slope < opts.min_growth_mib_per_step * MIB:
                verdicts.append(f"no leak on {trend}: below {opts.min_growth_mib_per_step} MiB per step")
                continue
            if curve.late_slope_bytes_per_step < opts.min_late_ratio * slope:
                verdicts.append(f"warm-up, not a leak, on {trend}: growth flattens in the later steps")
                continue
            if curve.r2 < opts.min_r2:
                verdicts.append(f"no steady leak on {trend}: the level moves up and down (fit below {opts.min_r2})")
                continue
            capacity = None
            if curve.device.startswith("cuda"):
                dev_id = int(curve.device.split(":")[1])
                for d in ctx.trace.meta.devices:
                    if d.id == dev_id and d.total_memory_bytes:
                        capacity = d.total_memory_bytes
                if capacity is None and ctx.gpu_spec is not None:
                    capacity = ctx.gpu_spec.memory_bytes
            last = int(curve.boundary_bytes[-1])
            peak = int(curve.peak_bytes.max())
            steps_left = int((capacity - peak) / slope) if capacity and capacity > peak else None
            severity = "critical" if steps_left is not None and steps_left < 100_000 else "warning"
            growth = slope / MIB
            title = f"Memory leak on {curve.device}: +{growth:.1f} MiB per step" + (
                f", device full in ~{steps_left:,} steps" if steps_left is not None else ""
            )
            findings.append(
                self.finding(
                    ctx,
                    title=title,
                    time_lost_ns_per_step=0.0,
                    confidence="high" if curve.r2 >= 0.95 and curve.rises >= len(curve.steps) - 2 else "medium",
                    confidence_reason=f"linear fit r2={curve.r2:.3f} over {len(curve.steps)} steps, "
                    f"{curve.rises} of {len(curve.steps) - 1} step boundaries higher than the one before",
                    evidence={
                        "device": curve.device,
                        "growth_mib_per_step": round(growth, 3),
                        "r2": round(curve.r2, 4),
                        "late_growth_mib_per_step": round(curve.late_slope_bytes_per_step / MIB, 3),
                        "allocated_at_step_start_mib": [round(int(b) / MIB, 2) for b in curve.boundary_bytes],
                        "peak_in_step_mib": [round(int(b) / MIB, 2) for b in curve.peak_bytes],
                        "allocated_at_last_step_mib": round(last / MIB, 2),
                        "device_capacity_mib": round(capacity / MIB, 1) if capacity else None,
                        "steps_until_full": steps_left,
                        "never_freed_allocations_by_op": curve.live_sites,
                    },
                    fix="store loss.item() / tensor.detach() instead of live tensors across steps",
                    steps=[int(s) for s in curve.steps],
                    severity_override=severity,
                )
            )
        if verdicts:
            ctx.verdicts[self.id] = "; ".join(verdicts)
        return findings

    def _without_steps(self, ctx: RankContext, opts: MemoryLeakOptions) -> list[Finding]:
        lo, hi = (int(v) for v in ctx.windows[["ts", "end"]].to_numpy()[0])
        findings = []
        verdicts = []
        for g in window_growth(ctx.trace.memory, lo, hi, ctx.trace.host):
            rise = g.retained_bytes
            levels = [g.floor_start_bytes, *g.floor_quarters_bytes]
            rising = sum(1 for a, b in itertools.pairwise(levels) if b - a >= 0.05 * max(rise, 1))
            trend = (
                f"{g.device}: never-released level {g.floor_start_bytes / MIB:.1f} -> {g.end_bytes / MIB:.1f} MiB "
                f"across the window (no step markers)"
            )
            if rise < opts.min_window_growth_mib * MIB:
                verdicts.append(f"no leak on {trend}: below {opts.min_window_growth_mib} MiB")
                continue
            if rising < opts.min_rising_quarters:
                verdicts.append(f"no steady rise on {trend}: it rises in {rising} of the window's 4 quarters")
                continue
            capacity = _capacity(ctx, g.device)
            title = (
                f"Memory taken and never released on {g.device}: {g.floor_start_bytes / MIB:.1f} -> "
                f"{g.end_bytes / MIB:.1f} MiB across the trace (+{rise / MIB:.1f} MiB, no step markers)"
            )
            findings.append(
                self.finding(
                    ctx,
                    title=title,
                    time_lost_ns_per_step=0.0,
                    confidence="medium",
                    confidence_reason="no step markers: one window, so a leak cannot be told from one long "
                    "iteration that keeps what it allocates; the level never falls back in the trace",
                    evidence={
                        "device": g.device,
                        "never_released_at_start_mib": round(g.floor_start_bytes / MIB, 2),
                        "never_released_by_quarter_mib": [round(b / MIB, 2) for b in g.floor_quarters_bytes],
                        "rising_quarters": rising,
                        "allocated_at_end_mib": round(g.end_bytes / MIB, 2),
                        "peak_mib": round(g.peak_bytes / MIB, 2),
                        "retained_mib": round(rise / MIB, 2),
                        "device_capacity_mib": round(capacity / MIB, 1) if capacity else None,
                        "never_freed_allocations_by_op": g.live_sites,
                    },
                    fix="store loss.item() / tensor.detach() instead of live tensors; run inference under "
                    "torch.no_grad(); call prof.step() each iteration so growth per step can be measured",
                    severity_override="critical" if capacity and g.peak_bytes > 0.8 * capacity else "warning",
                    record_next=["prof.step() (or mlprof.step()) each iteration: growth per step needs step markers"],
                )
            )
        if verdicts:
            ctx.verdicts[self.id] = "; ".join(verdicts)
        return findings


def _capacity(ctx: RankContext, device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    dev_id = int(device.split(":")[1])
    for d in ctx.trace.meta.devices:
        if d.id == dev_id and d.total_memory_bytes:
            return d.total_memory_bytes
    return ctx.gpu_spec.memory_bytes if ctx.gpu_spec is not None else None
