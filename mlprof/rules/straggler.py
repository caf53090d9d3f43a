"""STRAG001: one rank arrives last at the job's collectives and the whole job runs at its pace.

A job-level rule: it reads the cross-rank view (:mod:`mlprof.analyzers.stragglers`),
not one rank, so the engine runs it once per job (:func:`check_job`), after the
per-rank rules. Its time is part of the collective wait COMM002 claims (the other
ranks wait for the straggler), so the engine takes it out of COMM002's claim and
the plan never counts it twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlprof.analyzers.causes import CAUSES
from mlprof.analyzers.rank_skew import RankSkew
from mlprof.analyzers.stragglers import MEASURE_COLUMNS, CrossRank, cross_rank_report
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option

COMPUTE_CAUSES = CAUSES["compute"]


class StragglerOptions(RuleOptions, frozen=True):
    """STRAG001's thresholds (``[tool.mlprof.rules.STRAG001]``, ``mlprof explain STRAG001``)."""

    min_share: float = common("min_share", 0.01)
    ranks_per_group: int = option(
        0,
        "ranks",
        0.0,
        1e6,
        "ranks per group (host) in the per-group summaries; 0 = the GPUs per host the trace reports",
    )


class Straggler(Rule[StragglerOptions]):
    id = "STRAG001"
    options_class = StragglerOptions
    name = "straggler-rank"
    category = "straggler"
    summary = "one rank arrives last at collectives: every other rank (the whole job) waits for it"
    claims = ()
    scope = "job"
    overlaps = ("COMM002",)

    def carve_out(self, finding: Finding, carved_ns: float) -> Finding | None:
        """The straggler's lateness is part of the collective wait COMM002 claims: count it once."""
        before = finding.time_lost_ns_per_step
        finding.time_lost_ns_per_step = max(before - carved_ns, 0.0)
        if before > 0:
            finding.claimed = {k: v * finding.time_lost_ns_per_step / before for k, v in finding.claimed.items()}
        finding.evidence["wait_ms_per_step_before_straggler"] = ms(before)
        finding.evidence["straggler_ms_per_step_claimed_by_STRAG001"] = ms(min(carved_ns, before))
        finding.title += f"; {ms(min(carved_ns, before))} ms of it is the straggler's (STRAG001)"
        return finding if finding.time_lost_ns_per_step > 0 else None  # all of it the straggler's: STRAG001 says it

    doc = RuleDoc(
        what="The rank the others wait for: at the job's collectives one rank arrives last, "
        "the rest spin inside NCCL until it joins. Also reported: the step-time skew between "
        "ranks and how much of the communication time is waiting (imbalance) rather than "
        "moving bytes (bandwidth).",
        why="A collective ends when its last rank joins it, so a synchronous job runs at the "
        "pace of its slowest rank: one rank with a heavier shard, a longer sequence, a slower "
        "GPU, a throttled clock or a busy host delays every rank, every step. At 1,024 ranks one "
        "slow node costs 1,023 GPUs the same time.",
        detection="Needs all ranks (a directory of per-rank traces). Each collective is matched "
        "across ranks by process group and sequence number when the trace records them, else by "
        "order (the n-th kernel of a name); rank clocks are aligned on the collectives' end times "
        "(all ranks leave together), never on host clocks. The rank with the shortest kernel of a "
        "collective arrived last. For each rank, `critical_ms` is, over the collectives where it "
        "came last, how much later it came than the second-latest rank, per step: what every "
        "rank's step gains if it arrives with the others. The worst such rank is the finding; "
        "its time lost is its `critical_ms`, capped by the ranks' mean exposed collective wait "
        "(waiting hidden under compute costs nothing), and COMM002 keeps the rest of the wait "
        "(the spread among the other ranks). That is the attribution estimate; the expected speedup "
        "is the job replay of the fix (all ranks simulated together, each matched collective ending "
        "no earlier than its last rank's arrival; see What-if replay below), which counts only what "
        "the other ranks' own timelines let them gain. The finding says why the rank is late: `slow_compute` when "
        "its compute time per step exceeds the median rank's by at least half its lateness, else "
        "`host_side` (it computes like the others, its step starts late: data loading, logging, host "
        "work). Collectives matched by order must end together after clock alignment (within 10% of "
        "their median duration and 20 us); when they do not, no rank is named and the verdict says the "
        "matching is unreliable. The per-rank table and summaries by rank group are in the JSON "
        "`cross_rank` object.",
        fix="Compare the straggler's row in the per-rank table with the median rank: more "
        "compute means more work (balance the shard or the batch), more idle means a host or "
        "data problem on that node, the same step but late arrival means a slow device or link "
        "(check its clocks and NVLink/IB counters). Re-shard by measured cost, for example:\n\n"
        "    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)\n"
        "    plan = planner.collective_plan(model, sharders, pg)\n"
        "    # or bucket variable-length samples so every rank gets the same tokens per step",
        false_alarms="With one profiled step a one-off delay (checkpoint write, GC pause, a page "
        "fault) on one rank looks like a straggler: profile several steps and check that "
        "`arrived_last` repeats. Ranks profiled at different steps cannot be matched (the "
        "unmatched count says so). In pipeline parallelism the last stage arrives last by design.",
    )

    def check(self, ctx: RankContext, opts: StragglerOptions) -> list[Finding]:
        return []  # job-level only: see check_job

    def check_job(
        self, contexts: list[RankContext], skew: RankSkew | None, step_ns: float, opts: StragglerOptions
    ) -> tuple[list[Finding], CrossRank]:
        """The cross-rank view of the job and, when a rank holds the job back enough, its finding."""
        group = int(opts.ranks_per_group) or _devices_per_host(contexts)
        report = cross_rank_report(rank_measures(contexts), skew, group)
        per = report.per_rank
        if skew is None or len(per) == 0 or step_ns <= 0:
            return [], report
        unreliable = _order_match_unreliable(skew)
        if unreliable is not None:
            contexts[0].verdicts[self.id] = unreliable
            return [], report
        worst = per.sort_values(["critical_ms", "rank"], ascending=[False, True]).iloc[0]
        # The job gains the straggler's lateness only where the others' wait is exposed (not hidden under compute).
        critical_ns = float(worst["critical_ms"]) * 1_000_000
        exposed_wait_ns = float(per["wait_ms"].mean()) * 1_000_000
        lost = min(critical_ns, exposed_wait_ns)
        if lost / step_ns < opts.min_share:
            return [], report
        rank = int(worst["rank"])
        median = per.median(numeric_only=True)
        cause, cause_text, cause_numbers = _why_late(per, worst)
        s = report.summary
        title = (
            f"Rank {rank} is the straggler: it arrived last at {int(worst['arrived_last'])} of {skew.matched} "
            f"collectives and the other {len(per) - 1} ranks waited {worst['caused_wait_ms']:.3f} ms per step "
            f"(summed); the job waits for it {worst['critical_ms']:.3f} ms per step"
            + (f", {lost / 1e6:.3f} ms of it exposed" if lost < critical_ns else "")
            + f"; {cause_text}"
        )
        top = per[per["critical_ms"] > 0].sort_values(["critical_ms", "rank"], ascending=[False, True]).head(5)
        evidence: dict[str, Any] = {
            "straggler": _row(worst),
            "exposed_wait_ms_per_step_mean": round(exposed_wait_ns / 1e6, 4),
            "median_rank": {k: round(float(median[k]), 4) for k in ("step_ms", "compute_ms", "wait_ms", "late_ms")},
            "worst_ranks": [_row(r) for _, r in top.iterrows()],
            "step_skew": s["step_skew"],
            "slowest_step_rank": s["slowest_rank"],
            "imbalance_ms_per_step": s["imbalance_ms_per_step"],
            "bandwidth_ms_per_step": s["bandwidth_ms_per_step"],
            "imbalance_share": s["imbalance_share"],
            "match_key": skew.match_key,
            "matched_collectives": skew.matched,
            "why_late": cause,
            **cause_numbers,
            "collective_end_spread_us_median": round(float(skew.collectives["end_spread_ns"].median()) / 1000, 2)
            if "end_spread_ns" in skew.collectives
            else None,
        }
        finding = Finding(
            rule=self.id,
            name=self.name,
            category=self.category,
            title=title,
            time_lost_ns_per_step=lost,
            step_ns=step_ns,
            confidence="medium",
            confidence_reason="arrival order inferred from collective durations matched across ranks; "
            "assumes the straggler can arrive with the second-latest rank; capped by the ranks' mean exposed "
            "collective wait (wait hidden under compute gains nothing)",
            evidence=evidence,
            fix=(
                f"rank {rank}'s kernels take longer than the others': balance its share of the work, check its GPU "
                "(clocks, throttling) or replace its node"
                if cause == "slow_compute"
                else f"rank {rank} computes as fast as the others but starts late: look at its host work between "
                "steps (data loading, logging, checkpointing, Python on rank 0 only) and make it asynchronous or "
                "spread it over ranks"
                if cause == "host_side"
                else f"find why rank {rank} is late (compare its compute_ms and host time with the median rank) and "
                "balance its work or replace its node"
            ),
            ranks=[rank],
        )
        return [finding], report


ORDER_MATCH_MAX_END_SPREAD = 0.1
"""Order matching is trusted while the matched collectives' aligned ends lie within this share of their
median duration of each other (all ranks leave a collective together; a mismatch does not)."""
ORDER_MATCH_MIN_SPREAD_NS = 20_000
"""... and within this much absolute time (clock drift and kernel-end jitter stay well below it)."""


def _order_match_unreliable(skew: RankSkew) -> str | None:
    """A sentence saying why the order matching cannot be trusted, or None when it can."""
    colls = skew.collectives
    if skew.match_key != "order" or "end_spread_ns" not in colls or len(colls) == 0:
        return None
    spread = float(colls["end_spread_ns"].median())
    dur = float(colls["median_dur_ns"].median())
    if spread <= max(ORDER_MATCH_MIN_SPREAD_NS, ORDER_MATCH_MAX_END_SPREAD * dur):
        return None
    return (
        f"no straggler named: collectives matched by order end {spread / 1000:.1f} us apart (median) after "
        f"clock alignment, against a median collective of {dur / 1000:.1f} us; ranks leave a collective "
        "together, so the n-th kernels are not the same collectives on every rank (a rank recorded more or "
        "fewer of them). Record process-group sequence numbers (a newer PyTorch) or all ranks over the same steps"
    )


def _why_late(per: pd.DataFrame, worst: pd.Series) -> tuple[str, str, dict[str, float]]:
    """Slow compute (its kernels take longer) or host-side skew (it computes like the others, starts late)."""
    median = per.median(numeric_only=True)
    host = per["step_ms"] - per["compute_ms"] - per["wait_ms"] - per["transfer_ms"]
    own_host = float(host[per["rank"] == worst["rank"]].iloc[0])
    compute_excess = float(worst["compute_ms"] - median["compute_ms"])
    host_excess = own_host - float(host.median())
    late = float(worst["critical_ms"])
    numbers = {
        "compute_ms_over_median": round(compute_excess, 4),
        "host_ms_over_median": round(host_excess, 4),
    }
    if compute_excess >= 0.5 * late and compute_excess >= host_excess:
        text = f"its kernels take {compute_excess:.3f} ms per step longer than the median rank's"
        return "slow_compute", text, numbers
    if compute_excess < 0.5 * late:
        return (
            "host_side",
            f"its compute matches the median rank's ({float(worst['compute_ms']):.3f} vs "
            f"{float(median['compute_ms']):.3f} ms): it is late from the host side (its step starts late)",
            numbers,
        )
    return "unclear", "neither its compute nor its host time explains the lateness alone", numbers


def _row(r: pd.Series) -> dict[str, Any]:
    keys = ("rank", "step_ms", "compute_ms", "wait_ms", "arrived_last", "caused_wait_ms", "critical_ms", "late_ms")
    return {k: (int(r[k]) if k in ("rank", "arrived_last") else round(float(r[k]), 4)) for k in keys}


def rank_measures(contexts: list[RankContext]) -> pd.DataFrame:
    """One row per rank (see :data:`mlprof.analyzers.stragglers.MEASURE_COLUMNS`), from the rank contexts.

    Written into one array per column as the ranks are read (rank and steps int64, the rest float64: what
    pandas made of one tuple per rank), not a tuple per rank: 1,024 six-tuples (~90 KB) were left on CPython's
    tuple free list once the frame was built, held through the rest of a job's run."""
    if not contexts:
        frame = pd.DataFrame([], columns=list(MEASURE_COLUMNS))
        frame["rank"] = frame["rank"].astype(np.int64)
        return frame
    n = len(contexts)
    ints = np.empty((2, n), dtype=np.int64)
    floats = np.empty((4, n), dtype=np.float64)
    for i, ctx in enumerate(contexts):
        ints[0, i], ints[1, i] = ctx.rank, ctx.n_windows
        floats[0, i] = ctx.step_ns
        floats[1, i] = ctx.per_step(*COMPUTE_CAUSES)
        floats[2, i] = ctx.per_step("comm.wait")
        floats[3, i] = ctx.per_step("comm.transfer")
    return pd.DataFrame(dict(zip(MEASURE_COLUMNS, [*ints, *floats], strict=True)))


def _devices_per_host(contexts: list[RankContext]) -> int:
    """Ranks per group in summaries: the devices the first trace lists (one host), else 8."""
    devices = len(contexts[0].tables.meta.devices) if contexts else 0
    return devices if devices > 0 else 8


__all__ = ["Straggler", "rank_measures"]
