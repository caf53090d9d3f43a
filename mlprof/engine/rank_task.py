"""The per-rank task: read one rank's trace, measure and judge it, and keep only what the job needs.

Everything that needs the full trace runs here, where the trace is read: the
attribution, the causes, and every rule except the two that depend on the other
ranks (COMM001 and COMM002 split exposed communication into waiting and transfer,
which needs the collectives of every rank). What leaves the task is small:

* the per-step attribution and causes (one row per step), the temporal breakdown,
  notes, findings and verdicts of the rank's own rules;
* the rank's *communication signature* (one row per NCCL kernel), which the client
  matches across ranks;
* the exposed-communication intervals (communication with no compute kernel
  running), so the client can split the causes into waiting and transfer exactly
  as :func:`mlprof.analyzers.causes.attribute_causes` would with all ranks at hand;
* a :class:`mlprof.results.ReducedRank`: the trace's metadata, its communication
  kernels and collectives (what the cross-rank rules read), and no other events.

The full trace is dropped when the task returns, so a worker holds one trace at a
time and the client holds none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlprof.analysis import RankAnalysis, analysed_windows, measure_trace
from mlprof.analyzers.causes import attribute_causes
from mlprof.analyzers.intervals import covered, merge
from mlprof.analyzers.name_totals import name_views
from mlprof.analyzers.rank_skew import comm_signature
from mlprof.results import ReducedRank
from mlprof.results.released import Released
from mlprof.results.spill import SpilledRun, spill_run
from mlprof.rules.base import Finding, RankContext
from mlprof.rules.config import RuleConfig
from mlprof.rules.engine import run_rank
from mlprof.rules.registry import TRACE_RULES
from mlprof.trace.model import Trace
from mlprof.trace.numbers import sorted_unique

CROSS_RANK_RULES: tuple[str, ...] = tuple(r.id for r in TRACE_RULES if r.scope == "rank" and r.needs_other_ranks)
"""Rules run on the client, after the ranks are matched (:attr:`mlprof.rules.base.Rule.needs_other_ranks`)."""

Intervals = tuple[np.ndarray, np.ndarray]


@dataclass
class TaskOptions:
    steps_spec: str | None = None
    step_marker: str | None = None
    config: RuleConfig = field(default_factory=RuleConfig)


@dataclass
class RankPartial:
    """What a rank task returns (picklable, a few small tables)."""

    analysis: RankAnalysis
    """Steps, causes (communication not yet split into wait/transfer), temporal breakdown, notes."""
    findings: list[Finding]
    """Findings of the rank's own rules (all but :data:`CROSS_RANK_RULES`), in registry order."""
    verdicts: dict[str, str]
    signature: pd.DataFrame
    exposed_comm: Intervals
    """Merged intervals where a communication kernel runs and no compute kernel does."""
    replay: Any = None
    """The rank's replay graph and its check (:class:`mlprof.whatif.RankReplay`); it needs no trace. Without its
    graph (:meth:`~mlprof.whatif.RankReplay.release_graph`) where the rank's own replay is not trusted: the job is
    then not replayed, and no prediction reads a graph."""
    packed: SpilledRun | None = field(default=None, repr=False)
    """``signature``, ``exposed_comm`` and ``findings`` compressed in the spill file (:meth:`pack`); read them
    with :meth:`comm_signature`, :meth:`exposed` and :meth:`rank_findings`."""

    @property
    def rank(self) -> int | None:
        return self.analysis.trace.meta.rank

    def pack(self) -> None:
        """Hold the signature, the exposed intervals and the rank's findings compressed in the process's spill
        file (~3.5 KB on disk and a few offsets in memory instead of ~20 KB: a job's client keeps one partial per
        rank until the job is combined, :mod:`mlprof.results.spill`); :meth:`comm_signature`, :meth:`exposed` and
        :meth:`rank_findings` read them back, the fields then are an error to read."""
        if self.packed is None:
            self.packed = spill_run((self.signature, self.exposed_comm, self.findings))
            self.signature = self.exposed_comm = self.findings = _PACKED

    def comm_signature(self) -> pd.DataFrame:
        """The communication signature, packed or not."""
        if self.packed is None:
            return self.signature
        signature: pd.DataFrame = self.packed[0].load()
        return signature

    def rank_findings(self) -> list[Finding]:
        """The findings of the rank's own rules, packed or not."""
        if self.packed is None:
            return self.findings
        findings: list[Finding] = self.packed[2].load()
        return findings

    def exposed(self) -> Intervals:
        """The exposed-communication intervals, packed or not."""
        if self.packed is None:
            return self.exposed_comm
        exposed: Intervals = self.packed[1].load()
        return exposed


_PACKED: Any = Released(
    "rank partial packed (RankPartial.pack): read .comm_signature(), .exposed() or .rank_findings(), not .{name}"
)
"""Stands for a field held packed (:meth:`RankPartial.pack`)."""


def reduce_rank(source: str, options: TaskOptions) -> RankPartial:
    """Read the rank file ``source`` (local path or fsspec URL) and reduce it; the task every engine runs."""
    from mlprof.engine.sources import local_copy
    from mlprof.trace.loader import load_trace

    with local_copy(source) as path:
        trace = load_trace(path, step_marker=options.step_marker, workers=1)
    trace.meta.path = source
    return reduce_trace(trace, options)


def reduce_trace(trace: Trace, options: TaskOptions) -> RankPartial:
    """Measure and judge one rank in memory, keep the compact result."""
    ra = measure_trace(trace, options.steps_spec)
    starts, ends = windows(ra)
    ra.causes = attribute_causes(trace, starts, ends, comm_wait=None)
    ctx = RankContext(ra, ra.causes)
    findings = run_rank(ctx, options.config, matched=False)
    from mlprof.whatif import replay_rank

    replay = replay_rank(trace, ra.rank, starts, ends, ra.steps)
    if replay is not None and not replay.ok:
        # A rank whose own replay is not trusted: the job is not replayed (mlprof.whatif.job.build_job), and the
        # client drops every rank's graph as soon as this result arrives (mlprof.engine.job.Kept). Dropped here,
        # the graph (~half the result's pickled bytes on the generated job) is neither sent nor unpickled.
        replay.release_graph()
    analysis = dataclasses.replace(
        ra, trace=reduce_tables(trace), findings=[], diagnosis=None, name_views=name_views(ra)
    )
    return RankPartial(
        analysis=analysis,
        findings=findings,
        verdicts=dict(ctx.verdicts),
        signature=comm_signature(trace),
        exposed_comm=exposed_comm_intervals(trace),
        replay=replay,
    )


windows = analysed_windows
"""The analysed windows of a rank (the one definition, :func:`mlprof.analysis.analysed_windows`)."""


def reduce_tables(trace: Trace) -> ReducedRank:
    gpu = trace.gpu
    comm = gpu[(gpu["kind"] == "kernel") & gpu["is_comm"].astype(bool)].reset_index(drop=True)
    memory = trace.memory
    if len(memory):
        with_total = memory[memory["total_allocated"] >= 0]
        memory = (with_total if len(with_total) else memory).head(1).reset_index(drop=True)
    return ReducedRank(
        meta=trace.meta,
        gpu=_compact(comm),
        collectives=_compact(trace.collectives.reset_index(drop=True)),
        memory=_compact(memory),
        steps=trace.steps,
        device_activity=trace.has_device_activity,
    )


def _compact(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns keep only the strings they use, not the trace's whole symbol table.

    A job holds one reduced rank per rank: with the full table each would cost hundreds of KB.
    """
    out = frame.copy()
    for col in out.columns:
        dtype = out[col].dtype
        if isinstance(dtype, pd.CategoricalDtype) and not _all_categories_used(
            out[col].array.codes, len(dtype.categories)
        ):
            out[col] = out[col].cat.remove_unused_categories()
    return out


def _all_categories_used(codes: np.ndarray, n_categories: int) -> bool:
    """Nothing to remove (no categories, or every one used): skip the copy of the column."""
    if n_categories == 0:
        return True
    if len(codes) < n_categories:
        return False
    return bool(np.bincount(codes[codes >= 0], minlength=n_categories).all())


def exposed_comm_intervals(trace: Trace) -> Intervals:
    """Where communication kernels run and no compute kernel does (the ``comm_exposed`` category's set)."""
    gpu = trace.gpu
    kernels = gpu[gpu["kind"] == "kernel"]
    is_comm = kernels["is_comm"].to_numpy(dtype=bool)
    ts = kernels["ts"].to_numpy(np.int64)
    end = kernels["end"].to_numpy(np.int64)
    c_s, c_e = merge(ts[is_comm], end[is_comm])
    if len(c_s) == 0:
        return c_s, c_e
    k_s, k_e = merge(ts[~is_comm], end[~is_comm])
    points = sorted_unique(np.concatenate([c_s, c_e, k_s, k_e]))
    left, right = points[:-1], points[1:]
    keep = covered(c_s, c_e, left) & ~covered(k_s, k_e, left)
    return merge(left[keep], right[keep])


def split_comm_wait(
    causes: pd.DataFrame, exposed: Intervals, wait: Intervals | None, starts: np.ndarray, ends: np.ndarray
) -> pd.DataFrame:
    """Move the exposed communication that overlaps ``wait`` from ``comm.transfer`` to ``comm.wait``, per window.

    Equal to what :func:`mlprof.analyzers.causes.attribute_causes` gives with ``comm_wait``: in the
    ``comm_exposed`` category the first cause is ``comm.wait`` where a wait interval covers the instant.
    """
    from mlprof.analyzers.attribution import sum_by_window

    if wait is None or len(wait[0]) == 0 or len(exposed[0]) == 0 or len(starts) == 0:
        return causes
    w_s, w_e = merge(*wait)
    e_s, e_e = exposed
    points = sorted_unique(np.concatenate([e_s, e_e, w_s, w_e, starts, ends]))
    left, right = points[:-1], points[1:]
    both = covered(e_s, e_e, left) & covered(w_s, w_e, left)
    label = np.zeros(len(left), dtype=np.int64)
    per_window = sum_by_window(left[both], (right - left)[both], label[both], 1, starts, ends)[:, 0]
    if all(d == np.int64 for d in causes.dtypes):
        # one int64 block, as the causes come from a rank task (setting two columns split it in three)
        values = causes.to_numpy(dtype=np.int64, copy=True)
        values[:, causes.columns.get_loc("comm.wait")] += per_window
        values[:, causes.columns.get_loc("comm.transfer")] -= per_window
        return pd.DataFrame(values, index=causes.index, columns=causes.columns)
    out = causes.copy()
    out["comm.wait"] = out["comm.wait"].to_numpy(np.int64) + per_window
    out["comm.transfer"] = out["comm.transfer"].to_numpy(np.int64) - per_window
    return out
