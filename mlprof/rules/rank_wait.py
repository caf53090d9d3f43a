"""COMM002: ranks wait in collectives for a late rank (stragglers, load imbalance)."""

from __future__ import annotations

from typing import Any

from mlprof.analyzers.rank_skew import RankSkew
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms

MAX_LATE_ROWS = 32
"""Ranks in a merged finding's ``late_ranks`` evidence: all up to this many, else the half most waited for
(as the per-rank figures of every merged finding, :data:`mlprof.rules.engine.MAX_RANKS_IN_EVIDENCE`)."""


class RankWaitOptions(RuleOptions, frozen=True):
    """COMM002's thresholds (``[tool.mlprof.rules.COMM002]``, ``mlprof explain COMM002``)."""

    min_share: float = common("min_share", 0.02)


class RankWait(Rule[RankWaitOptions]):
    id = "COMM002"
    options_class = RankWaitOptions
    name = "waiting-for-late-rank"
    category = "comm_not_overlapped"
    summary = "collectives wait for late ranks: some ranks do more work or start later"
    claims = ("comm.wait",)
    needs_other_ranks = True

    def merged_title(self, job: Finding, worst: Finding, ranks_with: int, ranks: int, skew: Any) -> str:
        """Merged over ranks: who is late and who waits most (the matched collectives say it)."""
        if skew is None:
            return super().merged_title(job, worst, ranks_with, ranks, skew)
        title, job.evidence["late_ranks"] = _late_ranks(skew, job.time_lost_ns_per_step)
        return title

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

    def check(self, ctx: RankContext, opts: RankWaitOptions) -> list[Finding]:
        lost = ctx.per_step("comm.wait")
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
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
                steps=ctx.steps_with("comm.wait", min_share=opts.min_share),
                claimed={"comm.wait": lost},
            )
        ]


def _late_ranks(skew: RankSkew, mean_wait_ns: float) -> tuple[str, list[dict[str, Any]]]:
    table = skew.per_rank.sort_values(["caused_wait_ns", "last_arrivals"], ascending=False)
    if len(table) > MAX_LATE_ROWS:
        table = table.head(MAX_LATE_ROWS // 2)
    late = table[table["caused_wait_ns"] > 0]
    rows = [
        {
            "rank": int(r.rank),
            "arrived_last": int(r.last_arrivals),
            "others_waited_ms": ms(r.caused_wait_ns),
            "own_comm_ms": ms(r.comm_ns),
            "own_wait_ms": ms(r.wait_ns),
        }
        for r in table.itertuples(index=False)
    ]
    names = ", ".join(str(int(r)) for r in late["rank"].head(2))
    waiting = skew.per_rank[skew.per_rank["wait_ns"] > 0].sort_values("wait_ns", ascending=False)
    most = ", ".join(f"rank {int(r.rank)} {ms(r.wait_ns)} ms" for r in waiting.head(2).itertuples(index=False))
    title = (
        f"Exposed communication on {len(waiting)} of {len(skew.ranks)} ranks is mostly waiting for late ranks: "
        f"{ms(mean_wait_ns)} ms per step (mean); late: rank {names}; waiting most: {most}"
    )
    return title, rows
