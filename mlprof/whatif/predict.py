"""Expected speedup by replay, per finding and for the plan.

``speedup = replay(recorded graph) / replay(graph with the fix)``, the mean analysed
step of every rank summed (a rank where the rule did not fire keeps its step). The
plan applies fixes cumulatively: at each stage every remaining fix is tried on the
already-fixed graphs and the one with the largest marginal gain is taken, so the
waterfall is what the replay says, not a product of separate estimates.

Where the replay cannot be trusted (replay error above
:data:`~mlprof.whatif.replay.MAX_REPLAY_ERROR_PCT` on some rank) every finding keeps
its attribution estimate, with confidence ``low`` and a reason that says why. A finding
whose fix is not a graph edit keeps its attribution estimate (``speedup_source``
``attribution``); an upper bound (HOST001) caps its speedup at the replay's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from mlprof.analyzers.gpu_specs import GpuSpec
from mlprof.results import NS_PER_MS, Finding
from mlprof.results.findings import Diagnosis, PlanStep
from mlprof.rules.base import ms
from mlprof.rules.config import RuleConfig
from mlprof.rules.registry import BY_ID
from mlprof.rules.spec import NoOptions, RuleOptions
from mlprof.trace.memory import release_freed_memory
from mlprof.whatif.fixes import FIXES, FixContext
from mlprof.whatif.graph import ReplayGraph
from mlprof.whatif.helper import SharedTasks
from mlprof.whatif.replay import MAX_REPLAY_ERROR_PCT, RankReplay

if TYPE_CHECKING:
    from mlprof.whatif.job import JobReplay

Stage = Callable[[], list[ReplayGraph]]
"""The fixed graphs of one plan stage, made when the plan takes the stage."""

BOUND_ONLY = frozenset({"HOST001"})
"""Rules whose graph edit is an upper bound, not the fix: the finding stays an attribution estimate."""

MIN_PLAN_GAIN = 1e-4
LARGE_GRAPH_OPS = 250_000
"""Above this many host calls + device ops on a rank, the plan takes the fixes in the order of their
own replayed gains (one replay per fix) instead of re-choosing the next fix after each one (one replay
per remaining fix per stage): the replay must stay a small part of ``analyze`` on big traces."""
"""A fix whose marginal gain is below this share of the step ends the plan."""


class WhatIf(msgspec.Struct):
    """The replay of a job: per-rank replay checks, and the plan the replay gives."""

    ranks: Sequence[RankReplay]
    trusted: bool
    plan_source: str
    """``replay`` or ``attribution`` (when the replay error is too large)."""
    notes: list[str] = msgspec.field(default_factory=list)
    job: dict[str, Any] | None = None
    """How a multi-rank job was replayed (:mod:`mlprof.whatif.job`): the ranks together, or one by one and why."""

    @property
    def worst(self) -> RankReplay | None:
        return max(self.ranks, key=lambda r: abs(r.error_pct)) if self.ranks else None

    @property
    def replay_error_pct(self) -> float:
        return _error_pct(self.worst)

    @property
    def paces(self) -> str | None:
        """What paces the steps, in words: the resource most steps (of every rank) are paced by in the replay."""
        counts: dict[str, int] = {}
        probed: dict[str, int] = {}
        total = 0
        for r in self.ranks:
            for p in r.pacing:
                counts[p["paced_by"]] = counts.get(p["paced_by"], 0) + 1
                probed[p["paced_by"]] = probed.get(p["paced_by"], 0) + (p.get("why") == "probe")
                total += 1
        if not counts:
            return None
        top, n = max(counts.items(), key=lambda kv: kv[1])
        where = "steps" if len(self.ranks) == 1 else "rank-steps"
        if top == "none of them alone":
            why = "making any one of them 10% faster shortens the replayed step by less than 1%"
        elif probed.get(top, 0) == 0:
            why = "the device is busy at least 90% of the step"
        else:
            why = "making it 10% faster shortens the replayed step most"
        return f"{top} ({n} of {total} {where}: {why})"

    def to_dict(self, per_rank: Callable[[Iterator[dict[str, Any]]], Any] = list) -> dict[str, Any]:
        """The report's ``whatif`` values; ``per_rank`` holds the per-rank rows as they are made (a job's report
        encodes each row as it comes, :func:`mlprof.results.schema.to_json_dict`)."""
        worst = self.worst  # once: a job's ranks' replays are read one at a time (mlprof.engine.job._Replays)
        return {
            "replay_error_pct": round(_error_pct(worst), 3),
            "worst_rank": worst.rank if worst is not None else None,
            "max_error_pct": MAX_REPLAY_ERROR_PCT,
            "trusted": self.trusted,
            "plan_source": self.plan_source,
            "paces": self.paces,
            "per_rank": per_rank(r.to_dict() for r in self.ranks),
            "notes": self.notes,
            **({"job": self.job} if self.job is not None else {}),
        }


def _error_pct(worst: RankReplay | None) -> float:
    """:attr:`WhatIf.replay_error_pct` of the worst rank's replay (0 without ranks)."""
    return worst.error_pct if worst is not None else 0.0


def apply_fix(
    rr: RankReplay, rule: str, graph: ReplayGraph, opts: RuleOptions, spec: GpuSpec | None, evidence: dict
) -> ReplayGraph | None:
    """``rule``'s fix applied to ``graph`` (a graph of ``rr``'s rank), or None where it cannot be expressed.

    ``opts``: the rule's typed options (:func:`rule_options`), which its fix reads as attributes."""
    fix_spec = FIXES.get(rule)
    if fix_spec is None:
        return None
    ctx = FixContext(
        graph=graph,
        win_starts=graph.rel(rr.win_starts),
        win_ends=graph.rel(rr.win_ends),
        opts=opts,
        spec=spec,
        evidence=evidence,
    )
    return fix_spec.apply(ctx)


def predict(
    diagnosis: Diagnosis,
    replays: Sequence[RankReplay],
    specs: list[GpuSpec | None],
    config: RuleConfig,
    job: JobReplay | None = None,
) -> WhatIf:
    """Replace each finding's speedup by the replay's where it can, and rebuild the plan (in place).

    ``job``: the ranks' collectives matched (:mod:`mlprof.whatif.job`); every replay then simulates the
    ranks together, so a fix on one rank gains only what the other ranks' arrivals allow."""
    trusted = bool(replays) and all(r.ok for r in replays)
    whatif = WhatIf(ranks=replays, trusted=trusted, plan_source="replay" if trusted else "attribution")
    findings = diagnosis.findings
    if not replays:
        return whatif
    if not trusted:
        worst = whatif.worst
        assert worst is not None
        reason = (
            f"replay error {worst.error_pct:+.1f}% on rank {worst.rank} (above {MAX_REPLAY_ERROR_PCT:g}%): "
            "the dependency graph does not explain this trace, so this is the attribution estimate"
        )
        for f in findings:
            f.speedup_source = "attribution"
            if f.time_lost_ns_per_step > 0:
                f.confidence = "low"
                f.confidence_reason = f"{reason}; {f.confidence_reason}"
        whatif.notes.append(reason)
        return whatif

    from mlprof.whatif.job import JOB_ONLY

    base_ns = (
        job.step_ns([r.graph for r in replays])
        if job is not None
        else np.array([r.mean_step_ns(r.graph) for r in replays])
    )
    per_rank = _per_rank_findings(diagnosis, replays)

    options: dict[str, RuleOptions] = {}

    def fixed(rule: str, graphs: list[ReplayGraph], i: int) -> ReplayGraph | None:
        rank_finding = per_rank[i].get(rule)
        if rank_finding is None:
            return None
        if rule not in options:
            options[rule] = rule_options(config, rule)
        return apply_fix(replays[i], rule, graphs[i], options[rule], specs[i], rank_finding.evidence)

    def fixed_graphs(rule: str, graphs: list[ReplayGraph]) -> list[ReplayGraph]:
        return [g if (fg := fixed(rule, graphs, i)) is None else fg for i, g in enumerate(graphs)]

    def replay_with(rule: str, graphs: list[ReplayGraph]) -> tuple[Stage, np.ndarray, bool]:
        out_graphs: list[ReplayGraph] = []
        out_ns = np.empty(len(replays))
        applied = False
        for i, (rr, graph) in enumerate(zip(replays, graphs, strict=True)):
            fg = fixed(rule, graphs, i)
            if fg is None:
                out_graphs.append(graph)
                out_ns[i] = np.nan
            else:
                applied = True
                out_graphs.append(fg)
                out_ns[i] = rr.mean_step_ns(fg) if job is None else np.nan
        if job is not None and applied:
            out_ns = job.step_ns(out_graphs)
        return (lambda: out_graphs), out_ns, applied

    originals = [r.graph for r in replays]
    first_stage: dict[str, tuple[np.ndarray, bool]] = {}

    def replay_cached(rule: str, graphs: list[ReplayGraph]) -> tuple[Stage, np.ndarray, bool]:
        # Each fix on the unmodified graphs is replayed once, for its finding and the plan's first stage. Its
        # fixed graphs are not kept until the plan (a copy of every rank's graph per fix set the peak memory of
        # analyze on large traces): the plan applies the fix it takes again, without replaying it.
        if graphs is not originals:
            return replay_with(rule, graphs)
        if rule not in first_stage:
            _, ns, applied = replay_with(rule, graphs)
            first_stage[rule] = (ns, applied)
        ns, applied = first_stage[rule]
        return (lambda: fixed_graphs(rule, originals)), ns, applied

    def replayable(f: Finding) -> bool:
        if f.rule not in FIXES or (f.time_lost_ns_per_step <= 0 and not FIXES[f.rule].unclaimed):
            return False
        return not (f.rule in JOB_ONLY and job is None)

    large = max(r.graph.n_host + r.graph.n_gpu for r in replays) > LARGE_GRAPH_OPS
    with ExitStack() as helpers:
        shared: SharedTasks[Any] | None = None
        if job is None:
            # The first-stage replays are independent of each other: shared with a helper process when a core
            # is idle (mlprof.whatif.helper). A job's replays update its pass counts, so they stay here. The
            # ordered plan's two chains (large graphs) are the same helper's second round (one fork, not two).
            rules = list(dict.fromkeys(f.rule for f in findings if replayable(f)))
            tasks = [_first_stage_task(replay_with, rule, originals) for rule in rules]
            chains = partial(_chain_tasks, replay_with=replay_with, fixed_graphs=fixed_graphs, originals=originals)
            n_ops = sum(g.n_host + g.n_gpu for g in originals)
            shared = helpers.enter_context(SharedTasks[Any](tasks, n_ops=n_ops, then=chains if large else None))
            first_stage.update(zip(rules, shared.results(), strict=True))

        replayed: list[Finding] = []
        for f in findings:
            f.speedup_source = "attribution"
            if not replayable(f):
                continue
            _, after_ns, applied = replay_cached(f.rule, originals)
            if job is not None:
                release_freed_memory()  # the replay's temporaries (a job's replays run here, one by one)
            if not applied:
                f.evidence["replay"] = "the fix could not be expressed on this trace's graph"
                continue
            after = np.where(np.isnan(after_ns), base_ns, after_ns)
            speedup = float(base_ns.sum() / max(after.sum(), 1.0))
            attribution = f.expected_speedup
            f.evidence["attribution_speedup"] = round(attribution, 4)
            if f.rule in BOUND_ONLY:
                f.evidence["replay_upper_bound"] = round(speedup, 4)
                if speedup < attribution:
                    _set_speedup(f, speedup)
                    f.confidence_reason += f"; capped at the replay's upper bound ({speedup:.2f}x)"
                continue
            _set_speedup(f, speedup)
            f.speedup_source = "replay"
            estimate = (
                "no attribution estimate: the rule claims no step time of its own"
                if FIXES[f.rule].unclaimed
                else f"the attribution estimate was {attribution:.2f}x"
            )
            f.confidence_reason = (
                f"replay of the trace with the fix applied ({speedup:.2f}x; {estimate}); {f.confidence_reason}"
            )
            replayed.append(f)

        _note_no_gain(diagnosis, config)
        diagnosis.findings.sort(key=lambda f: (-f.expected_speedup, f.severity != "critical", f.rule))
        if large:
            whatif.notes.append(
                f"more than {LARGE_GRAPH_OPS:,} host calls and device ops on a rank: the plan applies the fixes in "
                "the order of their own replayed gains (each stage is still replayed with the earlier fixes in)"
            )
        ahead = None
        if job is None and large:

            def ahead(rules: list[str]) -> dict[int, tuple[np.ndarray, bool]]:
                return _replay_ahead(rules, replay_with, fixed_graphs, originals, shared)

        diagnosis.plan = _plan(
            diagnosis, replays, base_ns, replay_cached, originals, greedy=not large, ahead=ahead, rebuild=fixed_graphs
        )
    return whatif


def _stale_stage() -> list[ReplayGraph]:
    """The stage of a result replayed ahead: its graphs are rebuilt only if a later stage is replayed here."""
    raise AssertionError("a stage replayed ahead has no graphs here")


def _replay_ahead(
    rules: list[str],
    replay_with: Callable[[str, list[ReplayGraph]], tuple[Stage, np.ndarray, bool]],
    fixed_graphs: Callable[[str, list[ReplayGraph]], list[ReplayGraph]],
    originals: list[ReplayGraph],
    shared: SharedTasks[Any] | None = None,
) -> dict[int, tuple[np.ndarray, bool]]:
    """The ordered plan's stages 1.. (stage ``k``: ``rules[0..k]`` applied in turn, the last one replayed), each
    assuming every earlier stage was taken, as two chains of stages (odd, even) replayed here and in a helper
    process at once; {} where no helper is started (one process replays the stages one by one, as the plan
    does, without the chains' extra fix applications). Stage 0 is the first stage's replay, already known.
    ``shared``: the first stage's tasks, whose helper (if it waits for a second round) replays the chains."""
    if len(rules) < 3:
        return {}
    if shared is not None and shared.waiting:
        chains = shared.more(rules)
    else:
        tasks = _chain_tasks(rules, replay_with, fixed_graphs, originals)
        with SharedTasks(tasks, n_ops=sum(g.n_host + g.n_gpu for g in originals)) as separate:
            if not separate.started:
                return {}
            chains = separate.results()
    out: dict[int, tuple[np.ndarray, bool]] = {}
    for chain in chains:
        out.update(chain)
    return out


def _chain_tasks(
    rules: list[str],
    replay_with: Callable[[str, list[ReplayGraph]], tuple[Stage, np.ndarray, bool]],
    fixed_graphs: Callable[[str, list[ReplayGraph]], list[ReplayGraph]],
    originals: list[ReplayGraph],
) -> list[Callable[[], dict[int, tuple[np.ndarray, bool]]]]:
    """The two chains of :func:`_replay_ahead`: the odd stages and the even ones (made here and in the helper)."""
    later = list(range(1, len(rules)))
    return [
        _chain_task(rules, set(later[0::2]), replay_with, fixed_graphs, originals),
        _chain_task(rules, set(later[1::2]), replay_with, fixed_graphs, originals),
    ]


def _chain_task(
    rules: list[str],
    replayed: set[int],
    replay_with: Callable[[str, list[ReplayGraph]], tuple[Stage, np.ndarray, bool]],
    fixed_graphs: Callable[[str, list[ReplayGraph]], list[ReplayGraph]],
    originals: list[ReplayGraph],
) -> Callable[[], dict[int, tuple[np.ndarray, bool]]]:
    """The fixes ``rules`` applied one after another to the recorded graphs, the stages ``replayed`` replayed:
    {stage: (each rank's mean step, NaN where the fix did not apply; whether it applied anywhere)}."""

    def task() -> dict[int, tuple[np.ndarray, bool]]:
        out: dict[int, tuple[np.ndarray, bool]] = {}
        graphs = originals
        for k, rule in enumerate(rules[: max(replayed) + 1]):
            if k in replayed:
                stage, ns, applied = replay_with(rule, graphs)
                out[k] = (ns, applied)
                graphs = stage()
            else:
                graphs = fixed_graphs(rule, graphs)
        return out

    return task


def _first_stage_task(
    replay_with: Callable[[str, list[ReplayGraph]], tuple[Stage, np.ndarray, bool]],
    rule: str,
    graphs: list[ReplayGraph],
) -> Callable[[], tuple[np.ndarray, bool]]:
    """``rule``'s fix replayed on the recorded graphs: each rank's mean step (NaN where it did not apply) and
    whether it applied anywhere (the fixed graphs are dropped, see ``replay_cached``)."""

    def task() -> tuple[np.ndarray, bool]:
        _, ns, applied = replay_with(rule, graphs)
        return ns, applied

    return task


def _set_speedup(f: Finding, speedup: float) -> None:
    """The finding's time lost becomes what the replay saves (``claimed`` keeps what its causes measured)."""
    f.time_lost_ns_per_step = f.step_ns * (1.0 - 1.0 / speedup) if speedup > 0 and f.step_ns > 0 else 0.0


def _note_no_gain(diagnosis: Diagnosis, config: RuleConfig) -> None:
    """A finding the replay gives less than ``min_speedup`` stays listed (the pathology is real), saying why."""
    for f in diagnosis.findings:
        if f.speedup_source == "replay" and f.expected_speedup < config.min_speedup:
            f.title += f" (replay: {f.expected_speedup:.2f}x alone; something else paces the step)"
            f.evidence["replay_note"] = (
                f"replayed with this fix alone the step gains {f.expected_speedup:.2f}x (attribution estimate "
                f"{f.evidence.get('attribution_speedup', 1.0):.2f}x): another resource paces the step "
                "(whatif.per_rank paced_by); it may pay off once the plan's earlier fixes are in"
            )


def _per_rank_findings(diagnosis: Diagnosis, replays: Sequence[RankReplay]) -> list[dict[str, Finding]]:
    """Each rank's own finding of each rule (its evidence holds the rank's measured ratios)."""
    by_rank = diagnosis.per_rank if len(diagnosis.per_rank) == len(replays) else [diagnosis.findings]
    out: list[dict[str, Finding]] = []
    for found in by_rank:
        mapping: dict[str, Finding] = {}
        for f in found:
            mapping.setdefault(f.rule, f)
        out.append(mapping)
    # A job-scope finding (STRAG001) is on no rank's list: its fix applies to the ranks it names.
    for f in diagnosis.findings:
        if len(replays) > 1 and all(f.rule not in m for m in out):
            for i, rr in enumerate(replays):
                if rr.rank in f.ranks:
                    out[i].setdefault(f.rule, f)
    return out


def rule_options(config: RuleConfig, rule: str) -> RuleOptions:
    """The typed options ``rule``'s detection read (its ``options_class`` with the team's config and
    ``--set``), which its fix reads too; a rule the registry does not know has none."""
    known = BY_ID.get(rule)
    return config.options(rule, known.options_class) if known is not None else NoOptions()


def _plan(
    diagnosis: Diagnosis,
    replays: Sequence[RankReplay],
    base_ns: np.ndarray,
    replay_with: Any,
    originals: list[ReplayGraph],
    *,
    greedy: bool = True,
    ahead: Callable[[list[str]], dict[int, tuple[np.ndarray, bool]]] | None = None,
    rebuild: Callable[[str, list[ReplayGraph]], list[ReplayGraph]] | None = None,
) -> list[PlanStep]:
    step_ms = diagnosis.step_ms
    # Findings are sorted by their own replayed speedup, so without ``greedy`` the first candidate
    # is each stage's fix.
    candidates = [f for f in diagnosis.findings if f.speedup_source == "replay" and f.confidence != "low"]
    graphs = originals
    current = base_ns.copy()
    total0 = float(base_ns.sum())
    plan: list[PlanStep] = []
    # Without ``greedy`` each stage's fix is known in advance: the stages may have been replayed ahead (two chains,
    # a helper process, :func:`_replay_ahead`), each assuming every earlier stage was taken. Their results stand
    # while that holds (a fix that did not apply anywhere leaves the graphs as the chains do); from the first stage
    # not taken the plan replays here, on the graphs rebuilt from the stages taken.
    replayed_ahead = ahead([f.rule for f in candidates]) if ahead and rebuild and not greedy else {}
    taken: list[str] = []
    stale = False  # ``graphs`` lack the stages taken from replays ahead
    stage_index = -1
    while candidates:
        stage_index += 1
        best: tuple[float, Finding, Stage, np.ndarray] | None = None
        for f in candidates if greedy else candidates[:1]:
            if stage_index in replayed_ahead:
                ns, applied = replayed_ahead[stage_index]
                new_graphs: Stage = _stale_stage
            else:
                if stale and rebuild is not None:
                    graphs = originals
                    for rule in taken:
                        graphs = rebuild(rule, graphs)
                    stale = False
                new_graphs, ns, applied = replay_with(f.rule, graphs)
                release_freed_memory()
            if not applied:
                continue
            after = np.where(np.isnan(ns), current, ns)
            gain = float(current.sum() - after.sum())
            if best is None or gain > best[0]:
                best = (gain, f, new_graphs, after)
        if best is None or best[0] <= MIN_PLAN_GAIN * total0:
            if greedy:
                break
            if best is not None:  # applied but not taken: the stages replayed ahead assumed it was
                replayed_ahead = {}
            candidates.pop(0)  # this fix gains nothing on the fixed graph; the next may
            continue
        gain, f, stage, current = best
        best = None
        taken.append(f.rule)
        if stage is _stale_stage or stage_index + 1 in replayed_ahead:
            stale = True  # the next stage was replayed ahead: these graphs are made only if a later one is not
        else:
            graphs = stage()
        candidates.remove(f)
        cumulative = total0 / max(float(current.sum()), 1.0)
        after_ms = step_ms / cumulative
        before_ms = plan[-1].step_ms_after if plan else step_ms
        plan.append(
            PlanStep(
                rule=f.rule,
                title=f.title,
                saves_ms_per_step=round(before_ms - after_ms, 3),
                step_ms_after=round(after_ms, 3),
                cumulative_speedup=round(cumulative, 4),
            )
        )
    # Findings the replay cannot express follow, as their attribution estimates say: each saves its share of
    # the original step from the step left (its time lost was measured on the original step; subtracting it
    # whole from a step the replayed fixes already shortened took the DLRM plan to 16,007,750x).
    remaining = (plan[-1].step_ms_after if plan else step_ms) * NS_PER_MS
    for f in diagnosis.findings:
        if f.speedup_source == "replay" or f.confidence == "low" or f.time_lost_ns_per_step <= 0:
            continue
        share = f.time_lost_ns_per_step / max(step_ms * NS_PER_MS, 1.0)
        before = remaining
        remaining = max(remaining * (1.0 - min(share, 1.0)), 1.0)
        plan.append(
            PlanStep(
                rule=f.rule,
                title=f.title,
                saves_ms_per_step=ms(before - remaining),
                step_ms_after=ms(remaining),
                cumulative_speedup=round(step_ms * NS_PER_MS / remaining, 4),
            )
        )
    return plan
