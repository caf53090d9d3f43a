"""Replay of a multi-rank job: the ranks' graphs simulated together, coupled by their collectives.

Within one rank a communication kernel is a GPU op like any other. Across ranks a
collective ends no earlier than its last rank's arrival: an early rank's kernel starts,
then spins inside NCCL until the last rank joins. The per-rank replay
(:mod:`mlprof.whatif.replay`) keeps each kernel's recorded duration, wait included, so
a fix that makes one rank arrive earlier shortens that rank's step even when every
other rank still arrives late; the job replay does not.

The same collective is found on every rank by the matching the cross-rank analyzers
use (:func:`mlprof.analyzers.rank_skew.matched_kernels`: process group and sequence
number, else the n-th kernel of a name), and rank clocks are aligned on the
collectives' end times (:attr:`~mlprof.analyzers.rank_skew.RankSkew.per_rank`
``clock_offset_ns``). For a matched collective ``k``:

* its *transfer* time ``T_k`` is the shortest recorded duration across its ranks (the
  last rank to arrive waits for nobody);
* its *arrival* ``A_k`` is the latest aligned start across its ranks;
* on rank ``r``, whose kernel starts at ``s_r``, it ends at
  ``max(s_r + T_k, recorded end_r + (A_k - recorded A_k))``: it never takes less than its
  transfer, and it ends when the recording did, moved by as much as the last arrival
  moved. Unmodified, that is the recording itself; a rank that arrives earlier while the
  last rank does not move waits longer, and its step does not change.

A kernel's duration depends on the other ranks' starts and its start on its own rank's
earlier collectives, so the ranks are simulated in passes: each pass replays every rank
whose collective durations changed with :func:`mlprof.whatif.simulate.simulate` (the
simulator is unchanged: each kernel's earliest end across ranks is expressed as its
duration), then sets the
durations by a sweep over the collectives in time order that moves each kernel's start
with the end of its rank's previous collective (a guess the next pass checks); it stops
when no duration moves, a fixed point (unique: every constraint points forward in time). A
chain of ``n`` collectives that every host waits for settles in 2 passes (plain passes,
each start as simulated, took ``n + 1``); where the guess is wrong, no more than ``n + 1``.

The check of the job model (:meth:`JobReplay.check`): the edge-model graph of each rank
(:func:`mlprof.whatif.replay.replay_rank`: residual delays no edge explains removed)
replayed with every matched collective ending at ``max(s_r, A_k) + T_k`` in rank ``r``'s
clock (no recorded end used), against the recorded steps: ``per_rank_error_pct`` of the JSON
``whatif.job`` object, and ``job_replay_error_pct``, the largest of them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pandas as pd

from mlprof.analyzers.gpu_specs import GpuSpec
from mlprof.analyzers.rank_skew import RankSkew, matched_kernels
from mlprof.results.findings import Diagnosis
from mlprof.rules.config import RuleConfig
from mlprof.whatif.fixes import FixContext, fix
from mlprof.whatif.graph import ReplayGraph
from mlprof.whatif.measure import recorded_timeline, step_durations
from mlprof.whatif.replay import MAX_REPLAY_ERROR_PCT, RankReplay
from mlprof.whatif.simulate import Timeline, simulate
from mlprof.whatif.transforms import remove_host_time, set_op_durations

if TYPE_CHECKING:
    from mlprof.whatif.predict import WhatIf

MAX_PASSES = 64
"""Passes of the job replay before it gives up on a fixed point (a note says so; the last pass is used)."""


class RankCollectives(msgspec.Struct):
    """One rank's matched collective kernels: only what the cross-rank constraints need."""

    rows: np.ndarray
    """``g_row`` of each kernel (stable under graph edits that reorder the ops)."""
    key: np.ndarray
    """Index of its collective in the job (0..K-1)."""
    rec_start: np.ndarray
    """Recorded start, relative to the rank graph's origin."""
    rec_end: np.ndarray
    to_aligned: int
    """Add to a graph-relative time for the job's aligned clock (origin minus the rank's clock offset)."""


class JobReplay(msgspec.Struct):
    """The ranks of a job and their matched collectives; :meth:`step_ns` replays them together."""

    replays: Sequence[RankReplay]
    colls: list[RankCollectives]
    transfer: np.ndarray
    """Per collective: the shortest recorded duration across its ranks (ns)."""
    rec_arrival: np.ndarray
    """Per collective: the latest recorded aligned start across its ranks."""
    match_key: str
    error_pct: list[float] = msgspec.field(default_factory=list)
    """Per rank: the job model's replay error on the analysed steps (see the module docstring)."""
    passes: list[int] = msgspec.field(default_factory=list)
    """Passes each job replay took (the check's and every prediction's)."""
    unsettled: int = 0
    """Job replays that stopped at :data:`MAX_PASSES` without a fixed point."""
    _base: dict[int, Timeline] = msgspec.field(default_factory=dict)
    _sweep_tables: Any = None

    @property
    def n_collectives(self) -> int:
        return len(self.transfer)

    @property
    def worst_error_pct(self) -> float:
        return max(self.error_pct, key=abs) if self.error_pct else 0.0

    @property
    def ok(self) -> bool:
        return abs(self.worst_error_pct) <= MAX_REPLAY_ERROR_PCT

    def step_ns(self, graphs: list[ReplayGraph]) -> np.ndarray:
        """Mean analysed step of each rank, the ranks' (possibly fixed) graphs replayed together."""
        final, timelines = self._simulate(graphs, anchored=True)
        return np.array(
            [
                _mean(step_durations(g, tl, rr.win_starts, rr.win_ends))
                for rr, g, tl in zip(self.replays, final, timelines, strict=True)
            ]
        )

    def check(self) -> None:
        """The job model against the recording, per rank (fills :attr:`error_pct`)."""
        edges = []
        for rr in self.replays:
            e = rr.graph.copy()
            e.g_gap = np.minimum(e.g_gap, rr.graph.turnaround_ns)
            edges.append(e)
        final, timelines = self._simulate(edges, anchored=False)
        self.error_pct = []
        for rr, g, tl in zip(self.replays, final, timelines, strict=True):
            recorded = _mean(step_durations(rr.graph, recorded_timeline(rr.graph), rr.win_starts, rr.win_ends, True))
            replayed = _mean(step_durations(g, tl, rr.win_starts, rr.win_ends))
            self.error_pct.append(100.0 * (replayed - recorded) / recorded if recorded > 0 else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": "job",
            "matched_collectives": self.n_collectives,
            "match_key": self.match_key,
            "job_replay_error_pct": round(self.worst_error_pct, 3),
            "per_rank_error_pct": {
                str(rr.rank): round(e, 3) for rr, e in zip(self.replays, self.error_pct, strict=True)
            },
            "passes_max": max(self.passes) if self.passes else 0,
            "unsettled": self.unsettled,
        }

    # --- the fixed point ---

    def _simulate(self, graphs: list[ReplayGraph], *, anchored: bool) -> tuple[list[ReplayGraph], list[Timeline]]:
        """Every rank's graph with its collective durations set, and its timeline, at the fixed point.

        Each pass simulates the ranks whose collective durations changed, then sets every duration by a sweep
        over the collectives in time order (:meth:`_sweep`), and stops when the sweep changes nothing."""
        n = len(graphs)
        pos = [_positions(g, c.rows) for g, c in zip(graphs, self.colls, strict=True)]
        # A fix may change a collective's own duration (a faster link): its transfer time scales with it.
        scale = []
        for g, c, p in zip(graphs, self.colls, pos, strict=True):
            rec = (c.rec_end - c.rec_start).astype(np.float64)
            scale.append(np.where(rec > 0, g.g_dur[p] / np.maximum(rec, 1.0), 1.0))
        sc = np.concatenate(scale) if scale else np.zeros(0)
        key = np.concatenate([c.key for c in self.colls])
        transfer = np.rint(self.transfer[key] * sc).astype(np.int64)
        slack = np.rint(self.transfer[key] * (1.0 - sc)).astype(np.int64)
        bounds = np.cumsum([0, *[len(p) for p in pos]])
        work = list(graphs)
        timelines: list[Timeline | None] = [self._base.get(id(g)) if anchored else None for g in graphs]
        passes = 0
        settled = False
        while passes < MAX_PASSES:
            passes += 1
            for i in range(n):
                if timelines[i] is None:
                    timelines[i] = simulate(work[i])
            tls: list[Timeline] = [t for t in timelines if t is not None]
            starts = np.concatenate([tl.g_start[p] for p, tl in zip(pos, tls, strict=True)])
            durs = np.concatenate([w.g_dur[p] for p, w in zip(pos, work, strict=True)])
            new = self._sweep(starts, starts + durs, transfer, slack, anchored)
            changed = False
            for i, p in enumerate(pos):
                dur = new[bounds[i] : bounds[i + 1]]
                if not np.array_equal(dur, work[i].g_dur[p]):
                    g = copy.copy(work[i])
                    g.g_dur = work[i].g_dur.copy()
                    g.g_dur[p] = dur
                    work[i] = g
                    timelines[i] = None
                    changed = True
            if not changed:
                settled = True
                break
        for i in range(n):
            if timelines[i] is None:
                timelines[i] = simulate(work[i])
        self.passes.append(passes)
        if not settled:
            self.unsettled += 1
        return work, [t for t in timelines if t is not None]

    def _sweep(
        self, starts: np.ndarray, ends: np.ndarray, transfer: np.ndarray, slack: np.ndarray, anchored: bool
    ) -> np.ndarray:
        """New durations of every rank's matched kernels (all ranks' kernels concatenated in rank order).

        The collectives are taken in time order. A kernel's start is its simulated start moved by as much as
        the end of the rank's previous matched kernel moves in this sweep (as if the rank waited for it: a guess,
        checked by the next simulation), its collective's arrival is the latest over its ranks, and its end is
        ``max(start + transfer, recorded end + (arrival - recorded arrival))`` (``anchored``, predictions) or
        ``max(start, arrival) + transfer`` (the check). Plain Jacobi passes (each start as simulated) settle one
        collective of a chain per pass; the guess settles a chain of collectives the ranks wait for at once, and
        costs nothing where it is wrong: a collective whose earlier collectives are settled gets exactly its
        Jacobi duration, so no more passes are needed than without it. With no duration changed by the sweep,
        every collective's duration is what the simulated starts give: the fixed point."""
        order, groups, prev, off, rec_end, _ = self._entries()
        moved = np.zeros(len(starts), dtype=np.int64)
        new_end = ends.copy()
        start = starts.copy()
        for k, e in zip(order.tolist(), groups, strict=True):
            pe = prev[e]
            shift = np.where(pe >= 0, moved[np.clip(pe, 0, None)], 0)
            s = starts[e] + shift
            start[e] = s
            arrival = int((s + off[e]).max())
            if anchored:
                end = np.maximum(s + transfer[e], rec_end[e] + (arrival - self.rec_arrival[k]) - slack[e])
            else:
                end = np.maximum(s, arrival - off[e]) + transfer[e]
            new_end[e] = end
            moved[e] = end - ends[e]
        return new_end - start

    def _entries(self) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The sweep's fixed tables (built once): collectives in time order (latest recorded arrival), each one's
        entries (positions in the concatenated kernels), each entry's previous kernel on its rank (-1: none),
        its rank's clock shift to the aligned time, its recorded end, its collective."""
        if self._sweep_tables is None:
            key = np.concatenate([c.key for c in self.colls])
            off = np.concatenate([np.full(len(c.key), c.to_aligned, dtype=np.int64) for c in self.colls])
            rec_end = np.concatenate([c.rec_end for c in self.colls])
            prev = np.full(len(key), -1, dtype=np.int64)
            base = 0
            for c in self.colls:
                local = np.argsort(c.rec_start, kind="stable")
                prev[base + local[1:]] = base + local[:-1]
                base += len(c.key)
            order = np.argsort(self.rec_arrival, kind="stable")
            by_key = np.argsort(key, kind="stable")
            cuts = np.searchsorted(key[by_key], np.arange(self.n_collectives + 1))
            groups = [by_key[cuts[k] : cuts[k + 1]] for k in order.tolist()]
            self._sweep_tables = (order, groups, prev, off, rec_end, key)
        return self._sweep_tables


def predict_job(
    diagnosis: Diagnosis,
    replays: Sequence[RankReplay],
    signatures: list[pd.DataFrame],
    skew: RankSkew | None,
    specs: list[GpuSpec | None],
    config: RuleConfig,
) -> WhatIf:
    """:func:`mlprof.whatif.predict.predict` for a job: with its ranks replayed together when their collectives
    match (the JSON ``whatif.job`` object says how it was replayed, and if one by one, why)."""
    from mlprof.whatif.predict import predict

    job = build_job(replays, signatures, skew) if len(replays) > 1 else None
    whatif = predict(diagnosis, replays, specs, config, job=job if isinstance(job, JobReplay) else None)
    if isinstance(job, str):
        whatif.job = {"model": "per-rank", "reason": job}
        whatif.notes.append(f"ranks replayed one by one, not as a job: {job}")
    elif job is not None:
        whatif.job = job.to_dict()
        if job.unsettled:
            whatif.notes.append(
                f"{job.unsettled} job replays stopped after {MAX_PASSES} passes before their collectives settled: "
                "the speedups they gave are approximate"
            )
    return whatif


def build_job(replays: Sequence[RankReplay], signatures: list[pd.DataFrame], skew: RankSkew | None) -> JobReplay | str:
    """The job replay of the ranks (in rank order), or a sentence saying why the ranks are replayed one by one."""
    if len(replays) < 2:
        return "one rank"
    # the first untrusted rank of the largest error, the ranks read one at a time (a job's client reads each
    # kept rank's replay from the spill file: a list of the untrusted ones held them all)
    worst: RankReplay | None = None
    for rr in replays:
        if not rr.ok and (worst is None or abs(rr.error_pct) > abs(worst.error_pct)):
            worst = rr
    if worst is not None:
        return (
            f"rank {worst.rank}'s own replay is {worst.error_pct:+.1f}% off its recorded steps (above "
            f"{MAX_REPLAY_ERROR_PCT:g}%): the findings keep their attribution estimates"
        )
    if skew is None or skew.matched == 0:
        return "no collective matched across the ranks"
    unreliable = _unreliable(skew)
    if unreliable is not None:
        return unreliable
    ranks = [rr.rank for rr in replays]
    keyed = matched_kernels(ranks, signatures)
    if keyed is None or len(keyed[0]) == 0:
        return "no collective matched across the ranks"
    matched = keyed[0]
    codes, uniques = pd.factorize(matched["key"])
    matched = matched.assign(k=codes.astype(np.int64), end=matched["ts"] + matched["dur"])
    offsets = dict(zip(skew.per_rank["rank"].tolist(), skew.per_rank["clock_offset_ns"].tolist(), strict=True))
    colls: list[RankCollectives] = []
    missing = 0
    for rr in replays:
        g = rr.graph
        mine = matched[matched["rank"] == rr.rank]
        ts_abs = mine["ts"].to_numpy(np.int64)
        # The signature's kernels are the graph's communication ops of the same recorded start.
        comm = np.flatnonzero(g.g_klass == "comm")
        order = comm[np.argsort(g.g_ts[comm], kind="stable")]
        at = np.searchsorted(g.g_ts[order] + g.origin, ts_abs)
        ok = at < len(order)
        ok[ok] &= g.g_ts[order[at[ok]]] + g.origin == ts_abs[ok]
        missing += int((~ok).sum())
        ops = order[at[ok]]
        colls.append(
            RankCollectives(
                rows=g.g_row[ops],
                key=mine["k"].to_numpy(np.int64)[ok],
                rec_start=g.g_ts[ops],
                rec_end=g.g_ts[ops] + g.g_dur[ops],
                to_aligned=int(g.origin) - int(offsets.get(rr.rank, 0)),
            )
        )
    if missing:
        return f"{missing} matched collective kernels are not in the ranks' replay graphs"
    k = len(uniques)
    transfer = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    arrival = np.full(k, np.iinfo(np.int64).min, dtype=np.int64)
    for c in colls:
        np.minimum.at(transfer, c.key, c.rec_end - c.rec_start)
        np.maximum.at(arrival, c.key, c.rec_start + c.to_aligned)
    _mark_leads(replays, colls, arrival)
    job = JobReplay(replays=replays, colls=colls, transfer=transfer, rec_arrival=arrival, match_key=skew.match_key)
    for rr in replays:
        job._base[id(rr.graph)] = simulate(rr.graph)
    job.check()
    if not job.ok:
        at = int(np.argmax(np.abs(job.error_pct)))
        return (
            f"job replay error {job.error_pct[at]:+.1f}% on rank {replays[at].rank} (above "
            f"{MAX_REPLAY_ERROR_PCT:g}%): the matched collectives do not explain the ranks' timing"
        )
    return job


def _unreliable(skew: RankSkew) -> str | None:
    """Why matching by order cannot be trusted (the check STRAG001 makes before naming a rank), or None."""
    from mlprof.rules.straggler import _order_match_unreliable

    text = _order_match_unreliable(skew)
    return None if text is None else "matching by order is unreliable: " + text.removeprefix("no straggler named: ")


def _remove_from_gaps(g: ReplayGraph, s: np.ndarray, e: np.ndarray, amount: np.ndarray) -> ReplayGraph | None:
    """``amount`` ns of host time removed from each stretch ``[s, e)``, taken from the host gaps in it (the time
    between runtime calls: Python, data loading) in proportion to their length, so that exactly that much goes
    when the gaps hold it (all of them when they hold less). Calls' own time and waits stay."""
    if g.n_host == 0:
        return None
    front = np.maximum.accumulate(g.h_end)
    gs = np.concatenate([[0], front[:-1]])
    ge = g.h_ts
    pos = np.flatnonzero(ge > gs)
    gs, ge = gs[pos], ge[pos]
    out_s: list[np.ndarray] = []
    out_e: list[np.ndarray] = []
    keep: list[np.ndarray] = []
    for a, b, want in zip(s.tolist(), e.tolist(), amount.tolist(), strict=True):  # one per collective it held up
        cs, ce = np.clip(gs, a, b), np.clip(ge, a, b)
        inside = ce > cs
        cs, ce = cs[inside], ce[inside]
        total = float((ce - cs).sum())
        if total <= 0:
            continue
        share = min(want / total, 1.0)
        out_s.append(cs)
        out_e.append(ce)
        keep.append(np.rint((ce - cs) * (1.0 - share)).astype(np.int64))
    if not out_s:
        return None
    return remove_host_time(g, np.concatenate(out_s), np.concatenate(out_e), np.concatenate(keep))


def _positions(g: ReplayGraph, rows: np.ndarray) -> np.ndarray:
    """Indices in ``g`` of the ops with these ``g_row`` values (every one is there: edits keep ops)."""
    order = np.argsort(g.g_row, kind="stable")
    return order[np.searchsorted(g.g_row[order], rows)]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


JOB_ONLY = frozenset({"STRAG001"})
"""Rules whose fix means something only when the ranks are replayed together: replayed one by one, the
straggler's own step would shrink while the others still wait for it. Without a job replay their findings
keep the attribution estimate."""


def _mark_leads(replays: Sequence[RankReplay], colls: list[RankCollectives], arrival: np.ndarray) -> None:
    """On each rank, the host stretches that end where it launched a collective it arrived last at, and by how
    much it came after the second-latest rank there (its *lead*): ``graph.ranges["collective_lead"]`` (the
    stretch, from its previous matched collective's launch) and ``["collective_lead_ns"]`` (the lead, twice).
    STRAG001's fix removes the lead from the stretch."""
    k = len(arrival)
    keys = np.concatenate([c.key for c in colls]) if colls else np.zeros(0, np.int64)
    times = np.concatenate([c.rec_start + c.to_aligned for c in colls]) if colls else np.zeros(0, np.int64)
    order = np.lexsort((-times, keys))
    first = np.ones(len(order), dtype=bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    second = np.full(k, np.iinfo(np.int64).min, dtype=np.int64)
    after_first = np.flatnonzero(first) + 1
    ok = after_first < len(order)
    ok[ok] &= ~first[after_first[ok]]
    second[keys[order][after_first[ok] - 1]] = times[order][after_first[ok]]
    for rr, c in zip(replays, colls, strict=True):
        g = rr.graph
        ops = _positions(g, c.rows)
        launched = g.g_launch[ops] >= 0 if g.n_host else np.zeros(len(ops), dtype=bool)
        item = np.clip(g.g_launch[ops], 0, None)
        launch = np.where(launched, g.h_ts[item] if g.n_host else 0, g.g_ts[ops])
        returned = np.where(launched, g.h_end[item] if g.n_host else 0, g.g_ts[ops])
        order_c = np.argsort(launch, kind="stable")
        launch, key, start = launch[order_c], c.key[order_c], c.rec_start[order_c] + c.to_aligned
        prev = np.concatenate([[0], returned[order_c][:-1]])
        last = (start == arrival[key]) & (second[key] > np.iinfo(np.int64).min)
        lead = np.where(last, start - second[key], 0)
        sel = lead > 0
        g.ranges["collective_lead"] = (prev[sel], launch[sel])
        g.ranges["collective_lead_ns"] = (lead[sel], lead[sel])


@fix(
    "STRAG001",
    "Replayed only with the job replay (the ranks simulated together, each matched collective ending no "
    "earlier than its last rank's arrival; docs/multirank.md): the straggler arrives with the second-latest "
    "rank. At each matched collective it arrived last at, the stretch of its timeline since its previous "
    "collective's launch loses its lead over the second-latest rank: from the host gaps between its runtime "
    "calls (Python, data loading; in proportion to their length) when it is late from the host side, from its "
    "compute kernels launched in that stretch (scaled down) when its kernels are the slow part (`why_late` "
    "`slow_compute`). The other ranks then wait only for the next-latest rank, and the job gains what the "
    "replay of all ranks together says. When the ranks are replayed one by one, the finding keeps its "
    "attribution estimate.",
)
def _straggler(ctx: FixContext) -> ReplayGraph | None:
    g = ctx.graph
    s, e = g.ranges.get("collective_lead", (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    lead = g.ranges.get("collective_lead_ns", (np.zeros(0, np.int64),))[0]
    inside = ctx.in_windows(e)
    s, e, lead = s[inside], e[inside], lead[inside]
    if len(s) == 0:
        return None
    if ctx.evidence.get("why_late") != "slow_compute":
        return _remove_from_gaps(g, s, e, lead)
    launched = g.g_launch >= 0
    at = np.where(launched, g.h_ts[np.clip(g.g_launch, 0, None)], -1)
    stretch = np.searchsorted(s, at, side="right") - 1
    ok = launched & (stretch >= 0) & ~np.isin(g.g_klass, ["comm", "memcpy", "memset"])
    ok[ok] &= at[ok] < e[stretch[ok]]
    ops = np.flatnonzero(ok)
    if len(ops) == 0:
        return None
    total = np.bincount(stretch[ops], weights=g.g_dur[ops].astype(np.float64), minlength=len(s))
    factor = np.where(total > 0, np.maximum(total - lead, 0) / np.maximum(total, 1.0), 1.0)
    return set_op_durations(g, ops, g.g_dur[ops] * factor[stretch[ops]])
