"""GPU003: in a multi-GPU job some GPUs sit idle while others work."""

from __future__ import annotations

from mlprof.rules.base import Finding, RuleDoc, RuleOptions, common
from mlprof.rules.counter_base import CounterContext, CounterRule

NS_PER_S = 1_000_000_000


class GpuImbalanceOptions(RuleOptions, frozen=True):
    """GPU003's thresholds (``[tool.mlprof.rules.GPU003]``, ``mlprof explain GPU003``)."""

    low_util_pct: float = common("low_util_pct", 10.0)
    min_share: float = common("min_share", 0.05)


class GpuImbalance(CounterRule[GpuImbalanceOptions]):
    id = "GPU003"
    options_class = GpuImbalanceOptions
    name = "gpu-imbalance"
    category = "gpu_utilisation"
    summary = "some GPUs under the utilisation threshold while others work (counters, multi-GPU)"
    doc = RuleDoc(
        what="In a job with several GPUs, some GPUs are below `low_util_pct` utilisation while at "
        "least one other GPU is busy: the work is not spread over the GPUs the job holds, or a GPU "
        "is not used at all.",
        why="Every GPU of the allocation is paid for. A GPU that idles while its peers compute is "
        "GPU time the job could have used: a process that never moved to its device "
        "(`cuda:0` hard-coded in every rank), `CUDA_VISIBLE_DEVICES` wider than the launch, "
        "`DataParallel` putting the loss and the gather on GPU 0, or uneven shards that make ranks "
        "wait for the slowest. The time lost is the mean over GPUs of the time each one is idle "
        "while another works (a share of the job's GPU time); spreading the work evenly would "
        "remove it.",
        detection="From `gpu_util_pct` samples of every GPU, read at the union of their sample "
        "times (each sample holds until the next one). Per GPU: the time it is under `low_util_pct` "
        "while at least one other GPU is at or above it. This time never overlaps GPU001's (all "
        "GPUs idle at once), so the two findings do not count the same time twice. The rule fires "
        "when the mean over GPUs of that time is at least `min_share` of the covered time.",
        fix="Give every process its own device and make sure all of them get work:\n\n"
        '    local_rank = int(os.environ["LOCAL_RANK"])\n'
        "    torch.cuda.set_device(local_rank)\n"
        "    model = DDP(model.to(local_rank), device_ids=[local_rank])\n"
        "    sampler = DistributedSampler(dataset)  # equal shards per rank\n\n"
        "Launch one process per GPU (`torchrun --nproc-per-node=<gpus>`), prefer "
        "DistributedDataParallel over DataParallel, and limit `CUDA_VISIBLE_DEVICES` to the GPUs "
        "the job uses.",
        false_alarms="GPUs shared with another job, or reserved on purpose (an evaluation or "
        "inference GPU that waits for checkpoints), look under-used. Pipeline parallelism has "
        "bubbles by design. The counters cover whole GPUs: another user's process on the same GPU "
        "shows up as load.",
    )

    def check_counters(self, ctx: CounterContext, opts: GpuImbalanceOptions) -> list[Finding]:
        util = ctx.util(opts.low_util_pct)
        if util is None or len(util.devices) < 2 or util.covered_ns <= 0:
            return []
        covered = util.covered_ns
        alone = util.low_while_others_busy_ns
        lost = sum(alone.values()) / len(util.devices)
        share = lost / covered
        shares = {d: alone[d] / covered for d in util.devices}
        if share < opts.min_share:
            ctx.verdicts[self.id] = (
                f"GPUs idle while others work {share:.1%} of the job's GPU time (below {opts.min_share:.0%})"
            )
            return []
        worst = sorted(util.devices, key=lambda d: -shares[d])
        idle = [d for d in worst if shares[d] >= opts.min_share]
        busy = [d for d in util.devices if d not in idle]
        names = ", ".join(str(d) for d in idle)
        busy_util = sum(util.mean_util_pct[d] for d in busy) / len(busy) if busy else float("nan")
        idle_util = sum(util.mean_util_pct[d] for d in idle) / len(idle)
        title = (
            f"GPU{'s' if len(idle) > 1 else ''} {names} of {len(util.devices)} under {opts.low_util_pct:g}% "
            f"utilisation while others work ({shares[worst[0]]:.0%} of the time; mean util {idle_util:.0f}% vs "
            f"{busy_util:.0f}% on the others): {share:.0%} of the job's GPU time"
        )
        return [
            self.counter_finding(
                ctx,
                covered,
                title=title,
                time_lost_ns_per_step=float(lost),
                confidence="medium",
                confidence_reason="utilisation samples of every GPU at the same instants; whether the idle "
                "GPUs belong to this job is not in the counters",
                evidence={
                    "low_util_pct": opts.low_util_pct,
                    "under_used_devices": idle,
                    "idle_while_others_busy_share_by_device": {str(d): round(shares[d], 4) for d in util.devices},
                    "mean_util_pct_by_device": {str(d): round(util.mean_util_pct[d], 2) for d in util.devices},
                    "job_gpu_time_lost_share": round(share, 4),
                    "covered_s": round(covered / NS_PER_S, 3),
                },
                fix="one process per GPU (torchrun --nproc-per-node), torch.cuda.set_device(local_rank), "
                "DistributedSampler for equal shards",
            )
        ]
