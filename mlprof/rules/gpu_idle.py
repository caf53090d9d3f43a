"""GPU001: every GPU of the job sits (nearly) idle at the same time."""

from __future__ import annotations

from mlprof.rules.base import Finding, RuleDoc, RuleOptions, common
from mlprof.rules.counter_base import CounterContext, CounterRule, duration_text

NS_PER_S = 1_000_000_000


class GpuIdleOptions(RuleOptions, frozen=True):
    """GPU001's thresholds (``[tool.mlprof.rules.GPU001]``, ``mlprof explain GPU001``)."""

    low_util_pct: float = common("low_util_pct", 10.0)
    min_share: float = common("min_share", 0.05)


class GpuIdle(CounterRule[GpuIdleOptions]):
    id = "GPU001"
    options_class = GpuIdleOptions
    name = "gpu-idle"
    category = "gpu_utilisation"
    summary = "all GPUs under the utilisation threshold at once (counters)"
    doc = RuleDoc(
        what="GPU counters (nvidia-smi, NVML, DCGM) show every GPU of the job below `low_util_pct` "
        "utilisation at the same time for a noticeable share of the recording: the whole job is "
        "waiting, not computing.",
        why="A GPU-hour is paid whether a kernel runs or not. When all GPUs idle together the job "
        "waits on something outside them: input loading, the host launching work, checkpoint "
        "writes, evaluation on the CPU, a straggling step of the launcher. Removing that time would "
        "finish the same work sooner: the expected speedup is recorded time / (recorded time - "
        "time with all GPUs idle).",
        detection="From `gpu_util_pct` samples (NVML `utilization.gpu`: the share of the sample "
        "period in which any kernel ran). Each sample holds until the next one of its GPU; all GPUs "
        "are read at the union of their sample times, and the time in which every GPU is under "
        "`low_util_pct` is summed over the time all of them have samples, leaving out the all-idle "
        "time before the first sample in which any GPU is busy (start-up) and after the last "
        "(shutdown). The rule fires when that time is at least `min_share` of the covered time."
        " The time lost is that measured time, the "
        "basis the covered time (a counter finding's 'step' is the whole recording).",
        fix="Find what the job waits for with a short trace of a few steps, then fix that cause "
        "(the trace rules name it: data loading, host syncs, launch overhead):\n\n"
        '    with mlprof.profile(name="idle-check") as run:\n'
        "        for batch in loader:\n"
        "            train_step(batch)\n"
        "            run.step()\n\n"
        "    $ mlprof analyze runs/idle-check --counters gpu.csv\n\n"
        "Typical fixes: `DataLoader(num_workers=8, pin_memory=True, persistent_workers=True)`, "
        "asynchronous checkpointing, evaluation less often or on the GPU.",
        false_alarms="Start-up (model loading, compilation, dataset indexing) before the first busy "
        "sample and shutdown after the last are set aside (reported, not counted); idle phases in "
        "between (evaluation, checkpoints) count. `utilization.gpu` says a "
        "kernel ran, not how much of the GPU it used: a busy GPU can still be badly used (look at "
        "DCGM `sm_active`). With coarse sampling (e.g. one sample a minute) short idle gaps are "
        "invisible and long ones are approximate.",
    )

    def check_counters(self, ctx: CounterContext, opts: GpuIdleOptions) -> list[Finding]:
        util = ctx.util(opts.low_util_pct)
        if util is None or util.covered_ns <= 0:
            if util is None:
                ctx.verdicts[self.id] = "not judged: the counters have no GPU utilisation samples"
            return []
        # Idle before the first busy sample (start-up) and after the last (shutdown) is not time to remove.
        edges = util.startup_idle_ns + util.shutdown_idle_ns
        idle_ns = util.all_low_ns - edges
        basis_ns = util.covered_ns - edges
        if basis_ns <= 0:  # never busy: the whole recording is idle
            idle_ns, basis_ns = util.all_low_ns, util.covered_ns
        share = idle_ns / basis_ns
        who = "the GPU was" if len(util.devices) == 1 else f"all {len(util.devices)} GPUs were"
        who_ = who[:1].upper() + who[1:]
        threshold = f"{opts.low_util_pct:g}%"
        if share < opts.min_share:
            ctx.verdicts[self.id] = (
                f"{who} under {threshold} utilisation {share:.1%} of {duration_text(basis_ns)} "
                f"(below {opts.min_share:.0%})"
                + (f"; start-up/shutdown idle {duration_text(edges)} set aside" if edges else "")
            )
            return []
        samples = int((ctx.counters["metric"] == "gpu_util_pct").sum())
        title = (
            f"{who_} under {threshold} utilisation {share:.0%} of the recorded time "
            f"({duration_text(idle_ns)} of {duration_text(basis_ns)})"
            + (f"; start-up/shutdown idle {duration_text(edges)} set aside" if edges else "")
        )
        evidence = {
            "low_util_pct": opts.low_util_pct,
            "all_idle_share": round(share, 4),
            "all_idle_s": round(idle_ns / NS_PER_S, 3),
            "covered_s": round(basis_ns / NS_PER_S, 3),
            "startup_idle_s_set_aside": round(util.startup_idle_ns / NS_PER_S, 3),
            "shutdown_idle_s_set_aside": round(util.shutdown_idle_ns / NS_PER_S, 3),
            "devices": util.devices,
            "idle_share_by_device": {str(d): round(util.low_ns[d] / util.covered_ns, 4) for d in util.devices},
            "mean_util_pct_by_device": {str(d): round(util.mean_util_pct[d], 2) for d in util.devices},
            "util_samples": samples,
        }
        everything = share >= 0.999
        return [
            self.counter_finding(
                ctx,
                basis_ns,
                title=title
                if not everything
                else f"{who_} never above {threshold} utilisation: nothing ran on the GPU in the recording",
                time_lost_ns_per_step=float(idle_ns),
                confidence="medium" if samples >= 10 * len(util.devices) else "low",
                confidence_reason=f"{samples} utilisation samples; a sample says whether a kernel ran in its "
                "period, not why the GPU waited (a trace says why)",
                evidence=evidence,
                fix="profile a few steps (mlprof.profile) and analyse them with --counters: the trace says what the "
                "GPU waits for",
                severity_override="critical" if everything else None,
            )
        ]
