"""GPU002: the GPU's clocks are held down by thermal or hardware slowdown."""

from __future__ import annotations

import math

from mlprof.rules.base import Finding, RuleDoc, RuleOptions, common, option
from mlprof.rules.counter_base import CounterContext, CounterRule

SLOWDOWN_REASONS: tuple[str, ...] = (
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_slowdown",
    "hw_power_brake_slowdown",
)
POWER_CAP = "sw_power_cap"


class GpuThrottleOptions(RuleOptions, frozen=True):
    """GPU002's thresholds (``[tool.mlprof.rules.GPU002]``, ``mlprof explain GPU002``)."""

    min_share: float = common("min_share", 0.05)
    include_power_cap: bool = option(
        False,
        "flag: true or false (or 1, 0)",
        0.0,
        1.0,
        "true counts power-cap throttling as a slowdown too (false: only thermal and other slowdowns)",
    )


class GpuThrottle(CounterRule[GpuThrottleOptions]):
    id = "GPU002"
    options_class = GpuThrottleOptions
    name = "gpu-throttled"
    category = "gpu_clocks"
    summary = "GPU clocks held down by thermal/hardware slowdown (counters)"
    doc = RuleDoc(
        what="NVML clock event (throttle) reasons show a GPU's clocks reduced by thermal slowdown, "
        "hardware slowdown or the power brake for a noticeable share of the recording.",
        why="A throttled GPU runs every kernel at a lower clock: compute-bound kernels slow down "
        "roughly in proportion to the SM clock. Thermal and hardware slowdown point at the machine "
        "(cooling, airflow, a failing fan or power supply, an external power-brake signal), not at "
        "the training code, and one throttled GPU slows a synchronous multi-GPU job to its pace. "
        "The expected speedup is reported as 1.0: the counters do not say how much of the step is "
        "clock-bound, so the time cost is not measured; the evidence gives the SM clock with and "
        "without throttling and the severity is a warning.",
        detection="From the `throttle_reasons` bitmask (`clocks_event_reasons.active` in "
        "nvidia-smi, `nvmlDeviceGetCurrentClocksEventReasons`): each sample holds until the next; "
        "the time with any of `sw_thermal_slowdown`, `hw_thermal_slowdown`, `hw_slowdown`, "
        "`hw_power_brake_slowdown` set (plus `sw_power_cap` when `include_power_cap` is 1) over "
        "the sampled time. The rule fires at `min_share` or more. The median SM clock of throttled "
        "and unthrottled samples is shown when `sm_clock_mhz` was recorded.",
        fix="Fix the machine, then check the clocks hold under load:\n\n"
        "    $ nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER   # which reason, how hot\n"
        "    $ nvidia-smi --query-gpu=timestamp,index,clocks.sm,temperature.gpu,\\\n"
        "        clocks_event_reasons.active --format=csv -l 1 > gpu.csv\n\n"
        "Report thermal or hardware slowdown to whoever runs the machines (cooling, fans, power "
        "cables); in a multi-GPU job move the work off a GPU that keeps throttling.",
        false_alarms="`sw_power_cap` under full load is the GPU doing its job at its power limit, "
        "so it is left out unless `include_power_cap` is 1. Short thermal events at the start of a "
        "burst are normal. Idle clocks (`gpu_idle`) are never counted.",
    )

    def check_counters(self, ctx: CounterContext, opts: GpuThrottleOptions) -> list[Finding]:
        reasons = (*SLOWDOWN_REASONS, POWER_CAP) if opts.include_power_cap else SLOWDOWN_REASONS
        shares = ctx.throttles(reasons)
        if not shares:
            ctx.verdicts[self.id] = "not judged: the counters have no throttle reasons (clocks_event_reasons.active)"
            return []
        findings = []
        quiet = []
        for s in shares:
            share = s.throttled_ns / s.sampled_ns if s.sampled_ns > 0 else 0.0
            if share <= 0 or share < opts.min_share:  # min_share 0 still needs some throttled time
                quiet.append(f"GPU {s.device} throttled {share:.1%} of the time")
                continue
            by_reason = {k: round(v / s.sampled_ns, 4) for k, v in s.by_reason_ns.items() if k in reasons}
            main = max(by_reason, key=lambda k: by_reason[k])
            clocks = ""
            if not math.isnan(s.sm_clock_throttled_mhz) and not math.isnan(s.sm_clock_free_mhz):
                clocks = f" (SM clock {s.sm_clock_throttled_mhz:.0f} MHz vs {s.sm_clock_free_mhz:.0f} MHz unthrottled)"
            clock_ratio = (
                s.sm_clock_throttled_mhz / s.sm_clock_free_mhz
                if s.sm_clock_free_mhz and not math.isnan(s.sm_clock_throttled_mhz + s.sm_clock_free_mhz)
                else None
            )
            findings.append(
                self.counter_finding(
                    ctx,
                    s.sampled_ns,
                    title=f"GPU {s.device} clocks held down by {main} {share:.0%} of the time{clocks}",
                    time_lost_ns_per_step=0.0,
                    confidence="high",
                    confidence_reason="the driver's own throttle-reason bits; the time cost is not measured",
                    evidence={
                        "device": s.device,
                        "throttled_share": round(share, 4),
                        "share_by_reason": by_reason,
                        "sm_clock_throttled_mhz": _or_none(s.sm_clock_throttled_mhz),
                        "sm_clock_unthrottled_mhz": _or_none(s.sm_clock_free_mhz),
                        "sm_clock_ratio_when_throttled": None if clock_ratio is None else round(clock_ratio, 3),
                        "sampled_s": round(s.sampled_ns / 1e9, 3),
                    },
                    fix="check cooling and power of this GPU (nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER)",
                    severity_override="warning",
                )
            )
        if quiet:
            ctx.verdicts[self.id] = "; ".join(quiet) + f" (below {opts.min_share:.0%})"
        return findings


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value
