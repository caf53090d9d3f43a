"""Run the rules over a job, merge per-rank findings, rank them and build the combined plan.

Per rank, every rule reads the same measurements (:class:`RankContext`). In a job of
several ranks, the findings of one rule are merged into one job finding whose time
lost is the mean over ranks (a rank where the rule did not fire counts as zero) and
whose evidence keeps the per-rank figures. Findings are ranked by expected speedup;
because rules own disjoint causes, their savings add up, so the plan applies them
in order and recomputes what is left of the step (a waterfall).
"""

from __future__ import annotations

import copy
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mlprof.analyzers.rank_skew import RankSkew
from mlprof.analyzers.stragglers import CrossRank
from mlprof.results import NS_PER_MS, Finding
from mlprof.results import CounterDiagnosis as CounterDiagnosis
from mlprof.results import Diagnosis as Diagnosis
from mlprof.results import PlanStep as PlanStep
from mlprof.rules.base import RankContext, ms
from mlprof.rules.config import RuleConfig
from mlprof.rules.counter_base import CounterContext
from mlprof.rules.registry import BY_ID, COUNTER_RULES, TRACE_RULES
from mlprof.trace.memory import tidy_rank_loop


def run_rank(ctx: RankContext, config: RuleConfig, *, matched: bool | None = None) -> list[Finding]:
    """The rule loop over one rank, the only one: every enabled rank-scope rule, in registry order.

    ``matched`` splits the loop for a job analysed by per-rank tasks: ``False`` runs the
    rules that judge a rank alone (in the task, on the full trace), ``True`` the rules that
    need the other ranks (:attr:`Rule.needs_other_ranks`, on the client after the match);
    ``None`` runs both (a job in memory).
    """
    out: list[Finding] = []
    for rule in TRACE_RULES:
        if rule.scope != "rank" or rule.id in config.disabled:
            continue
        if matched is not None and rule.needs_other_ranks != matched:
            continue
        if rule.needs_device and not ctx.has_device:
            continue
        out.extend(rule.check(ctx, config.options(rule.id, rule.options_class)))
    return out


def registry_order(findings: list[Finding]) -> list[Finding]:
    """Findings in the order their rules are registered (as :func:`run_rank` returns them)."""
    return sorted(findings, key=lambda f: _ORDER.get(f.rule, len(_ORDER)))


_ORDER = {r.id: i for i, r in enumerate(TRACE_RULES)}


def diagnose(
    contexts: list[RankContext],
    config: RuleConfig,
    skew: RankSkew | None,
    world_size: int | None,
    per_rank: Sequence[list[Finding]] | None = None,
) -> Diagnosis:
    """Run the rules (or take each rank's findings as given in ``per_rank``), merge ranks, rank, plan."""
    if per_rank is None:
        per_rank = [run_rank(ctx, config) for ctx in contexts]
    cross_rank = None
    if len(contexts) == 1:
        findings = per_rank[0]
        step_ns = contexts[0].step_ns
    else:
        step_ns = sum(c.step_ns for c in contexts) / len(contexts)
        findings = _merge(per_rank, contexts, step_ns, skew)
        job_findings, cross_rank = _run_job_rules(contexts, skew, step_ns, config)
        findings = _carve_out(findings, job_findings) + job_findings
    kept = [f for f in findings if f.expected_speedup >= config.min_speedup or f.time_lost_ns_per_step == 0]
    dropped = len(findings) - len(kept)
    kept.sort(key=lambda f: (-f.expected_speedup, f.severity != "critical", f.rule))
    return Diagnosis(
        findings=kept,
        plan=build_plan(kept, step_ns),
        step_ms=step_ns / NS_PER_MS,
        record_next=_record_next(contexts, kept, world_size),
        rules_run=[r.id for r in TRACE_RULES if r.id not in config.disabled],
        below_threshold=dropped,
        verdicts=_verdicts(contexts),
        per_rank=per_rank,
        cross_rank=cross_rank,
        rule_outliers=_rule_outliers(per_rank, contexts) if len(contexts) > 1 else [],
    )


def _run_job_rules(
    contexts: list[RankContext], skew: RankSkew | None, step_ns: float, config: RuleConfig
) -> tuple[list[Finding], CrossRank | None]:
    """Every job-scope rule once over the job; the cross-rank view is built even when they are disabled."""
    findings: list[Finding] = []
    cross_rank: CrossRank | None = None
    for rule in TRACE_RULES:
        if rule.scope != "job":
            continue
        found, report = rule.check_job(contexts, skew, step_ns, config.options(rule.id, rule.options_class))
        cross_rank = cross_rank or report
        if rule.id not in config.disabled:
            findings.extend(found)
    return findings, cross_rank


def _carve_out(findings: list[Finding], job_findings: list[Finding]) -> list[Finding]:
    """A rule's time that other rules' claims include (:attr:`Rule.overlaps`) is taken out of theirs."""
    for rule in TRACE_RULES:
        carved = sum(f.time_lost_ns_per_step for f in job_findings if f.rule == rule.id)
        if not rule.overlaps or carved <= 0:
            continue
        kept = []
        for f in findings:
            g = rule.carve_out(f, carved) if f.rule in rule.overlaps else f
            if g is not None:
                kept.append(g)
        findings = kept
    return findings


OUTLIER_FACTOR = 2.0
"""A rank is an outlier of a rule when its time lost is at least this many times the median rank's."""


def _rule_outliers(per_rank: Sequence[list[Finding]], contexts: list[RankContext]) -> list[dict[str, Any]]:
    """Per rule, the ranks whose time lost stands out from the median rank (rank 0 ms where it did not fire)."""
    ranks = [c.rank for c in contexts]
    place: dict[int, int] = {}
    for i, rank in enumerate(ranks):
        place.setdefault(rank, i)
    # per rule, each rank's time lost summed in one float64 array by the rank's (first) place, 0.0 where the rule
    # did not fire: the same sums in the same order as a dict of floats per rule (~0.3 KB a rank)
    lost: dict[str, np.ndarray] = {}
    for rank, findings in zip(ranks, per_rank, strict=True):
        for f in findings:
            sums = lost.get(f.rule)
            if sums is None:
                sums = lost[f.rule] = np.zeros(len(ranks), dtype=np.float64)
            sums[place[rank]] += f.time_lost_ns_per_step
    out: list[dict[str, Any]] = []
    for rule_id in sorted(lost):
        values = lost[rule_id][[place[r] for r in ranks]]
        median = float(np.median(values))
        threshold = max(OUTLIER_FACTOR * median, 1.0)
        hits = [(r, v) for r, v in zip(ranks, values, strict=True) if v >= threshold and v > 0]
        if not hits or len(hits) > len(ranks) // 2:
            continue
        hits.sort(key=lambda rv: (-rv[1], rv[0]))
        out.append(
            {
                "rule": rule_id,
                "median_ms_per_step": ms(median),
                "outlier_ranks": len(hits),
                "worst": [{"rank": int(r), "ms_per_step": ms(v)} for r, v in hits[:5]],
            }
        )
    return out


COUNTER_WISHES: dict[str, str] = {
    "gpu_util_pct": "utilization.gpu (nvidia-smi --query-gpu) or DCGM_FI_DEV_GPU_UTIL to check for idle GPUs",
    "mem_used_bytes": "memory.used and memory.total to check device memory growth",
    "throttle_reasons": "clocks_event_reasons.active and clocks.sm (nvidia-smi --query-gpu) to check clock throttling",
}


def diagnose_counters(ctx: CounterContext, config: RuleConfig) -> CounterDiagnosis:
    """Run the counter rules. Their findings stay out of the trace's plan: the idle time they see is time
    the trace rules may already have attributed to a cause."""
    findings: list[Finding] = []
    run: list[str] = []
    for rule in COUNTER_RULES:
        if rule.id in config.disabled:
            continue
        run.append(rule.id)
        findings.extend(rule.check_counters(ctx, config.options(rule.id, rule.options_class)))
    kept = [f for f in findings if f.expected_speedup >= config.min_speedup or f.time_lost_ns_per_step == 0]
    kept.sort(key=lambda f: (-f.expected_speedup, f.severity != "critical", f.rule))
    wishes = [text for metric, text in COUNTER_WISHES.items() if metric not in ctx.metrics]
    if any(f.category == "gpu_utilisation" and f.time_lost_ns_per_step > 0 for f in kept):
        wishes.append("a trace of a few steps (mlprof.profile) analysed with --counters: what the GPUs wait for")
    return CounterDiagnosis(
        findings=kept,
        rules_run=run,
        verdicts=dict(ctx.verdicts),
        below_threshold=len(findings) - len(kept),
        record_next=wishes,
    )


def _verdicts(contexts: list[RankContext]) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for ctx in contexts:
        for rule_id, text in ctx.verdicts.items():
            prefix = f"rank {ctx.rank}: " if len(contexts) > 1 else ""
            out.setdefault(rule_id, []).append(prefix + text)
    return {k: " | ".join(v) for k, v in out.items()}


def _merge(
    per_rank: Sequence[list[Finding]], contexts: list[RankContext], step_ns: float, skew: RankSkew | None
) -> list[Finding]:
    """One job finding per rule (and merge key) from every rank's findings, read one rank at a time.

    ``per_rank`` may read each rank's list back from a spill file (a job's client,
    :class:`mlprof.results.spill.SpilledLists`): only a few numbers of each finding are kept while the ranks
    are read (:class:`_Group`), never every rank's findings at once."""
    groups: dict[tuple[str, str], _Group] = {}
    for i, findings in enumerate(per_rank):
        tidy_rank_loop(i)
        for f in findings:
            rule = BY_ID.get(f.rule)
            key = (f.rule, rule.merge_key(f) if rule is not None else "")
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.add(f)
    n = len(contexts)
    merged: list[Finding] = []
    # One int object per rank number for every merged finding's ``ranks`` (read from arrays, each list made its
    # own: 32 bytes a rank past 256 per finding held, ~0.1 MB at 1,024 ranks for four findings on every rank).
    shared: dict[int, int] = {}
    for (rule_id, _), group in groups.items():
        worst = group.worst
        assert worst is not None
        count = len(group.lost)
        job = copy.deepcopy(worst)
        job.step_ns = step_ns
        job.time_lost_ns_per_step = sum(group.lost) / n
        job.claimed = {k: _total(group.claimed[k]) / n for k in worst.claimed}
        ranks = group.ranks if group.ranks is not None else group.first_rank
        job.ranks = [shared.setdefault(r, r) for r in sorted(ranks)]
        shown = list(zip(group.first_rank, group.lost, strict=True))
        if count > MAX_RANKS_IN_EVIDENCE:
            shown = _largest(shown, MAX_RANKS_IN_EVIDENCE // 2)
        per_rank_ms = {str(rank): ms(lost) for rank, lost in shown}
        job.evidence = {
            "ranks_with_finding": f"{count} of {n}",
            "time_lost_ms_per_step_by_rank": per_rank_ms,
            "worst_rank": worst.ranks[0],
            "worst_rank_evidence": worst.evidence,
        }
        if len(shown) < count:
            job.evidence["ranks_shown"] = f"the {len(shown)} largest of {count} (all ranks: cross_rank.per_rank)"
        rule = BY_ID.get(rule_id)
        if rule is not None:
            job.title = rule.merged_title(job, worst, count, n, skew)
        merged.append(job)
    return merged


class _Values:
    """Numbers appended in order, 8 bytes each in an ``array`` while every value is exactly the array's Python type
    (``float`` for ``"d"``, ``int`` for ``"q"``), else a list of the values as given (what a list of them was:
    iterated, summed or sorted, the same numbers in the same order). A list held a 24-32 byte object per value."""

    __slots__ = ("kind", "values")

    def __init__(self, typecode: str, values: Iterable[Any] = ()) -> None:
        self.kind: type = float if typecode == "d" else int
        self.values: array[Any] | list[Any] = array(typecode)
        for value in values:
            self.append(value)

    def append(self, value: Any) -> None:
        values = self.values
        if type(values) is array:
            if type(value) is self.kind:
                try:
                    values.append(value)
                    return
                except OverflowError:  # an int beyond int64
                    pass
            values = self.values = values.tolist()
        values.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        for value in values:
            self.append(value)

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)


class _Group:
    """What the merge keeps of one rule's findings over the ranks: the worst finding (the first of the largest
    time lost, then memory growth, as ``max`` picks it) and, per finding in rank order, its time lost and first
    rank; the claimed causes summed as they come, and the ranks: the merged finding's numbers, the same sums in
    the same order as over the list.

    The claimed causes are summed per cause as the findings are read, one value per finding added in order (0.0
    where a finding claims none of it: what ``c.get(cause, 0.0)`` gave over the findings' dicts), each sum as
    ``sum`` gives it over those values (:data:`_RUNNING_SUM`), not held as each finding's dict (~0.5 KB a finding,
    ~1.5 MB of the merge's peak at 1,024 ranks) nor as an array a cause; the ranks are the first ranks while every
    finding has one rank. The numbers held are in arrays of 8 bytes a value (:class:`_Values`), not lists of float
    and int objects (~0.5 KB a rank): two a group, grown a value a rank each. Four a group (a cause's values and
    the ranks besides) grown together left their old blocks as holes in the heap (+0.3 MB at 1,024 ranks)."""

    __slots__ = ("claimed", "first_rank", "lost", "ranks", "worst", "worst_key")

    def __init__(self) -> None:
        self.worst: Finding | None = None
        self.worst_key: tuple[float, Any] | None = None
        self.lost = _Values("d")
        self.claimed: dict[str, Any] = {}
        """Per cause, ``sum`` of its values so far, or the values (:data:`_RUNNING_SUM`, :func:`_total`)."""
        self.first_rank = _Values("q")
        self.ranks: _Values | None = None
        """Every finding's ranks in order; None while each finding has one rank (they are :attr:`first_rank`)."""

    def add(self, f: Finding) -> None:
        key = (f.time_lost_ns_per_step, f.evidence.get("growth_mib_per_step", 0))
        if self.worst_key is None or key > self.worst_key:
            self.worst, self.worst_key = f, key
        claimed = f.claimed
        sums = self.claimed
        for cause in claimed:
            if cause not in sums:
                # the 0.0 values of the findings before
                sums[sys.intern(cause)] = (
                    (0.0 if len(self.lost) else 0) if _RUNNING_SUM else _Values("d", [0.0] * len(self.lost))
                )
        for cause in sums:
            value = claimed.get(cause, 0.0)
            if _RUNNING_SUM:
                sums[cause] = sums[cause] + value
            else:
                sums[cause].append(value)
        self.lost.append(f.time_lost_ns_per_step)
        ranks = f.ranks
        if self.ranks is None and len(ranks) != 1:
            self.ranks = _Values("q", self.first_rank)
        if self.ranks is not None:
            self.ranks.extend(ranks)
        self.first_rank.append(ranks[0])


_RUNNING_SUM = sys.version_info < (3, 12)
"""Whether ``sum`` of a sequence is its running sum, the values added in turn from 0 (ints exactly, floats as
doubles, anything else by ``+``): CPython up to 3.11. From 3.12 it sums floats with a compensation term, and a
group holds each cause's values (:class:`_Values`) to sum them at the end."""


def _total(claimed: Any) -> Any:
    """A cause's sum as ``sum`` gives it over the findings' values (:attr:`_Group.claimed`)."""
    return claimed if _RUNNING_SUM else sum(claimed)


MAX_RANKS_IN_EVIDENCE = 32
"""Per-rank figures in a merged finding's evidence: all ranks up to this many, else the largest half of it."""


def _largest(shown: list[tuple[int, float]], n: int) -> list[tuple[int, float]]:
    """The ``n`` (first rank, time lost) pairs of largest time lost, lowest rank first among equals."""
    return sorted(shown, key=lambda rl: (-rl[1], rl[0]))[:n]


def build_plan(findings: list[Finding], step_ns: float) -> list[PlanStep]:
    """Apply the fixes in ranked order and recompute the step; low-confidence findings (no known fix) are left out."""
    plan: list[PlanStep] = []
    remaining = step_ns
    for f in findings:
        if f.time_lost_ns_per_step <= 0 or f.confidence == "low":
            continue
        remaining = max(remaining - f.time_lost_ns_per_step, 1.0)
        plan.append(
            PlanStep(
                rule=f.rule,
                title=f.title,
                saves_ms_per_step=ms(f.time_lost_ns_per_step),
                step_ms_after=ms(remaining),
                cumulative_speedup=round(step_ns / remaining, 4),
            )
        )
    return plan


def _record_next(contexts: list[RankContext], findings: list[Finding], world_size: int | None) -> list[str]:
    notes: list[str] = []
    for f in findings:
        for item in f.record_next:
            if item not in notes:
                notes.append(item)
    # each rank's tables read in turn, not held together (a job's kept rank reads them from the spill file)
    if all(len(c.tables.memory) == 0 for c in contexts):
        notes.append("profile_memory=True to check for memory leaks (the trace has no allocator events)")
    elif all(not (c.tables.memory["total_allocated"] >= 0).any() for c in contexts):
        notes.append("a newer torch.profiler with profile_memory=True: these allocator events lack Total Allocated")
    if world_size and world_size > len(contexts):
        notes.append(
            f"all {world_size} ranks (a folder of per-rank traces) to compare ranks and find stragglers; "
            f"this analysis has {len(contexts)}"
        )
    if all(len(c.analysis.steps) < 4 for c in contexts):
        notes.append("at least 4 profiled steps (schedule active=5 or more) for trends such as memory growth")
    return notes
