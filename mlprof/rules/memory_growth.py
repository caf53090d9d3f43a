"""MEM002: device memory in use keeps growing over the recording (counters)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mlprof.analyzers.counter_timeline import MemoryTrend
from mlprof.rules.base import Finding, RuleDoc, RuleOptions, common, option
from mlprof.rules.counter_base import CounterContext, CounterRule, duration_text

if TYPE_CHECKING:
    from mlprof.rules.engine import CounterDiagnosis

MIB = 1 << 20
NS_PER_S = 1_000_000_000


class DeviceMemoryGrowthOptions(RuleOptions, frozen=True):
    """MEM002's thresholds (``[tool.mlprof.rules.MEM002]``, ``mlprof explain MEM002``)."""

    min_growth_mib_per_min: float = option(
        10.0, "MiB per minute", 0.0, 1e9, "device memory must grow at least this fast to be reported"
    )
    min_r2: float = common("min_r2", 0.8)
    min_samples: int = option(5, "samples", 2.0, 1e9, "fewer memory samples than this on a GPU are not judged")
    min_late_ratio: float = common("min_late_ratio", 0.5)


class DeviceMemoryGrowth(CounterRule[DeviceMemoryGrowthOptions]):
    id = "MEM002"
    options_class = DeviceMemoryGrowthOptions
    name = "device-memory-growth"
    category = "memory_leak"
    summary = "device memory in use grows steadily over the recording (counters)"
    doc = RuleDoc(
        what="The device memory in use (`memory.used`, NVML/DCGM framebuffer used) rises steadily "
        "over the recording instead of levelling off after warm-up.",
        why="It does not slow the job now; it ends it later with an out-of-memory error, or forces "
        "a smaller batch. The expected speedup is 1.0 because the cost is not time; the severity is "
        "critical when the projected time until the GPU is full is under an hour. Counters see the "
        "whole device (the caching allocator's reserved memory, other processes), so growth here "
        "can also be the allocator's cache growing with fragmentation.",
        detection="From `mem_used_bytes` samples per GPU: a least-squares line over time (slope in "
        "MiB per minute, fit r²) and the slope over the second half of the recording. The rule fires "
        "when the slope is at least `min_growth_mib_per_min`, the fit at least `min_r2`, there are "
        "at least `min_samples` samples, and the second-half slope is at least `min_late_ratio` of "
        "the overall one (a warm-up ramp that flattens is not growth). The projected time until "
        "full is (`mem_total_bytes` - last sample) / slope.",
        fix="Keep numbers, not tensors that hold graphs, across steps, and bound every cache:\n\n"
        "    losses.append(loss.item())          # not losses.append(loss)\n"
        "    torch.cuda.memory._record_memory_history(max_entries=100_000)\n"
        "    ...  # run some steps, then\n"
        '    torch.cuda.memory._dump_snapshot("mem.pickle")  # who holds the memory\n\n'
        "Record a trace with `profile_memory=True` (mlprof.profile does) so MEM001 can name the "
        "ops whose allocations are never freed.",
        false_alarms="Memory that grows with input sizes (variable sequence lengths filling the "
        "allocator cache), a cache that saturates after the recording ended, or another process on "
        "the same GPU. A short recording of a job that is still warming up can look like steady "
        "growth: record longer.",
    )

    def check_counters(self, ctx: CounterContext, opts: DeviceMemoryGrowthOptions) -> list[Finding]:
        trends = ctx.memory
        if not trends:
            ctx.verdicts[self.id] = "not judged: the counters have no memory-used samples"
            return []
        findings = []
        verdicts = []
        for t in trends:
            per_min = t.slope_bytes_per_s * 60 / MIB
            late_per_min = t.late_slope_bytes_per_s * 60 / MIB
            trend = f"GPU {t.device}: {per_min:+.1f} MiB/min over {duration_text(t.span_ns)} (r2 {t.r2:.2f})"
            if t.samples < opts.min_samples or math.isnan(per_min):
                needed = f"{opts.min_samples:g} needed"
                verdicts.append(f"GPU {t.device}: not judged, {t.samples} memory samples ({needed})")
                continue
            if per_min < opts.min_growth_mib_per_min:
                verdicts.append(f"no growth on {trend}: below {opts.min_growth_mib_per_min:g} MiB/min")
                continue
            if t.r2 < opts.min_r2:
                verdicts.append(f"no steady growth on {trend}: the level moves up and down (r2 < {opts.min_r2:g})")
                continue
            if math.isnan(late_per_min) or late_per_min < opts.min_late_ratio * per_min:
                verdicts.append(f"warm-up, not growth, on {trend}: the second half grows {late_per_min:+.1f} MiB/min")
                continue
            full_min = None
            if not math.isnan(t.total_bytes) and t.total_bytes > t.last_bytes:
                full_min = (t.total_bytes - t.last_bytes) / t.slope_bytes_per_s / 60
            title = f"Device memory on GPU {t.device} grows {per_min:.0f} MiB/min" + (
                f", full in ~{full_min:.0f} min" if full_min is not None else ""
            )
            findings.append(
                self.counter_finding(
                    ctx,
                    t.span_ns,
                    title=title,
                    time_lost_ns_per_step=0.0,
                    confidence="high" if t.r2 >= 0.95 else "medium",
                    confidence_reason=f"linear fit r2={t.r2:.3f} over {t.samples} samples; counters see the whole "
                    "device, not which tensors",
                    evidence={
                        "device": t.device,
                        "growth_mib_per_min": round(per_min, 3),
                        "growth_mib_per_s": round(per_min / 60, 4),
                        "r2": round(t.r2, 4),
                        "late_growth_mib_per_min": round(late_per_min, 3),
                        "used_first_mib": round(t.first_bytes / MIB, 1),
                        "used_last_mib": round(t.last_bytes / MIB, 1),
                        "total_mib": None if math.isnan(t.total_bytes) else round(t.total_bytes / MIB, 1),
                        "minutes_until_full": None if full_min is None else round(full_min, 1),
                        "samples": t.samples,
                    },
                    fix="store loss.item() / tensor.detach() across steps; record a trace with profile_memory=True",
                    severity_override="critical" if full_min is not None and full_min < 60 else "warning",
                )
            )
        if verdicts:
            ctx.verdicts[self.id] = "; ".join(verdicts)
        return findings


def counter_memory_verdict(diagnosis: CounterDiagnosis, window: list[MemoryTrend]) -> str | None:
    """What the device-memory counters add to the trace's leak verdict (MEM001); None without memory samples.

    ``window`` is the memory trend inside the traced steps (empty when the counters could not be aligned).
    """
    said = [f.title for f in diagnosis.findings if f.rule == DeviceMemoryGrowth.id]
    if not said and DeviceMemoryGrowth.id in diagnosis.verdicts:
        said = [diagnosis.verdicts[DeviceMemoryGrowth.id]]
    parts = [f"device memory counters over the recording: {'; '.join(said)}"] if said else []
    for t in window:
        if t.samples >= 2 and not math.isnan(t.slope_bytes_per_s):
            parts.append(
                f"inside the traced steps GPU {t.device} {t.slope_bytes_per_s * 60 / MIB:+.1f} MiB/min "
                f"({t.samples} samples, {t.first_bytes / MIB:.0f} -> {t.last_bytes / MIB:.0f} MiB)"
            )
    return "; ".join(parts) if parts else None
