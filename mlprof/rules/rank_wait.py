"""COMM002: ranks wait in collectives for a late rank (stragglers, load imbalance)."""

from __future__ import annotations

from typing import ClassVar

from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, ms


class RankWait(Rule):
    id = "COMM002"
    name = "waiting-for-late-rank"
    category = "comm_not_overlapped"
    summary = "collectives wait for late ranks: some ranks do more work or start later"
    claims = ("comm.wait",)
    needs_other_ranks = True
    defaults: ClassVar[dict[str, float]] = {"min_share": 0.02}
    doc = RuleDoc(
        what="On some ranks, collective kernels start and then wait for a rank that arrives "
        "later; that rank is the straggler the whole job runs at.",
        why="A collective completes only when every rank has joined. If one rank has more work "
        "(an unbalanced embedding shard, a larger input, a slower GPU or a noisy neighbour), all "
        "others idle inside NCCL for the difference, every step.",
        detection="Needs all ranks of the job in one analysis (a directory of per-rank traces). "
        "The same collective (kernel name and occurrence) is matched on every rank; clocks need no "
        "alignment, because the rank that arrived last has the shortest kernel and every other "
        "rank's excess duration over it is waiting. That first part of each kernel is the cause "
        "`comm.wait`. The late ranks are those that most often arrive last and cause the most "
        "wait. Balancing the work lets every rank arrive at the mean time, so the job gains the "
        "mean wait over ranks.",
        fix="Find why the named rank is late (compare its compute and data time in the per-rank "
        "table) and balance it: re-shard embeddings by cost (TorchRec planner with measured "
        "`EmbeddingStorageEstimator`/`compute_kernel` constraints), equalise batch composition "
        "(bucketing by sequence length), or replace a slow node.\n\n"
        "    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)\n"
        "    plan = planner.collective_plan(model, sharders, pg)",
        false_alarms="A single profiled step may catch one-off delays (a checkpoint write, a "
        "Python GC pause) on one rank. Ranks profiled at different steps cannot be matched.",
    )

    def check(self, ctx: RankContext, cfg: dict[str, float]) -> list[Finding]:
        lost = ctx.per_step("comm.wait")
        if ctx.step_ns <= 0 or lost / ctx.step_ns < cfg["min_share"]:
            return []
        return [
            self.finding(
                ctx,
                title=f"Rank {ctx.rank} waits {ms(lost)} ms per step in collectives for later ranks",
                time_lost_ns_per_step=lost,
                confidence="medium",
                confidence_reason="wait inferred from kernel durations matched across ranks",
                evidence={"wait_ms_per_step": ms(lost)},
                fix="balance work across ranks; see the late ranks named in the job finding",
                steps=ctx.steps_with("comm.wait", min_share=cfg["min_share"]),
                claimed={"comm.wait": lost},
            )
        ]
