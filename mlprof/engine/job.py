"""A job from its rank files: per-rank tasks on an engine, then the cross-rank reduction on the client.

:func:`analyze_paths` is what ``mlprof analyze DIR --jobs N --engine local|dask`` runs.
:func:`combine` is the client side: it validates the ranks, matches the collectives
of all ranks (:func:`mlprof.analyzers.rank_skew.match_table` on the job's signature table), splits each
rank's exposed communication into waiting and transfer, runs the cross-rank rules,
and merges everything into one :class:`mlprof.analysis.Analysis` through the same
:func:`mlprof.rules.engine.diagnose` as an in-memory job. The result does not depend
on the engine or the number of jobs: tasks are pure functions of their file, and
results are combined in rank order.
"""

from __future__ import annotations

import dataclasses
import gc
from array import array
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd

from mlprof.analysis import Analysis
from mlprof.analyzers.gpu_specs import GpuSpec
from mlprof.analyzers.name_totals import job_name_totals
from mlprof.analyzers.rank_skew import CommTable, WaitIntervals, match_table
from mlprof.engine.executors import ProgressFn, default_jobs, run_dask, run_local
from mlprof.engine.rank_task import _PACKED, RankPartial, TaskOptions, reduce_rank, split_comm_wait, windows
from mlprof.engine.sources import list_sources
from mlprof.errors import BadInputError, UsageError
from mlprof.results import RankAnalysis, ReducedRank
from mlprof.results.job_frames import HeldRank, HotStore, HotViews, JobFrames
from mlprof.results.spill import ReadOnAccess, SpilledLists, spill
from mlprof.rules.base import Finding, RankContext
from mlprof.rules.config import RuleConfig
from mlprof.rules.engine import diagnose, registry_order, run_rank
from mlprof.trace.loader import check_rank
from mlprof.trace.memory import release_freed_memory, tidy_rank_loop
from mlprof.trace.model import Trace
from mlprof.whatif.replay import RankReplay

ENGINES = ("local", "dask")


def check_engine_options(jobs: int | None, engine: str, scheduler: str | None) -> None:
    """``--jobs``/``--engine``/``--scheduler`` make sense together, whatever the input turns out to be."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be 1 or more")
    if scheduler and engine != "dask":
        raise UsageError("--scheduler needs --engine dask")


def analyze_paths(
    source: str | list[str],
    *,
    steps_spec: str | None = None,
    step_marker: str | None = None,
    config: RuleConfig | None = None,
    jobs: int | None = None,
    engine: str = "local",
    scheduler: str | None = None,
    dask_processes: bool = True,
    on_rank_done: ProgressFn | None = None,
) -> Analysis:
    """Analyse a job given as a directory, glob, list of files or fsspec URL of per-rank traces."""
    check_engine_options(jobs, engine, scheduler)
    files = list_sources(source)
    options = TaskOptions(steps_spec=steps_spec, step_marker=step_marker, config=config or RuleConfig())
    n = jobs if jobs is not None else default_jobs(len(files))
    kept = Kept()
    if engine == "dask":
        at = run_dask(
            reduce_rank,
            files,
            options,
            scheduler=scheduler,
            workers=n,
            processes=dask_processes,
            on_done=on_rank_done,
            keep=kept.keep_at,
        )
    else:
        at = run_local(reduce_rank, files, options, n, on_rank_done, keep=kept.keep_at)
    # Read: each rank's path is in its own record (its trace's metadata); the list of every path (~90 bytes a
    # rank, 1,024 strings at 1,024 ranks) is not held through the cross-rank reduction and the report.
    del files
    # The ranks' kept results in input order: views made on access (HotViews), not a list of views (~0.1 KB a rank)
    partials = kept.partials.views(at)
    del at
    label = source if isinstance(source, str) else ",".join(source)
    return combine(partials, label, options, kept)


class Kept:
    """What the client keeps of each rank task's result as it arrives, so that it holds little per rank.

    * the rank's kernel and op views are added to the job's totals
      (:class:`mlprof.analyzers.name_totals.NameTotals`) and dropped;
    * the rank's communication signature is added to the job's signature table
      (:class:`mlprof.analyzers.rank_skew.CommTable`, what the cross-rank matching reads);
    * the rank's steps and causes are held as rows of the job's tables
      (:class:`mlprof.results.job_frames.HeldRank`), not as two DataFrames per rank;
    * the rank's reduced tables, communication signature and exposed communication are held compressed
      (:meth:`mlprof.results.ReducedRank.pack`, :meth:`RankPartial.pack`);
    * the rank's replay graph is dropped once any rank's own replay is not trusted (then the job is
      not replayed, :func:`mlprof.whatif.job.build_job`, and no prediction reads a graph); the graphs of
      a job whose every rank replays within the error bound are all kept: the job replay simulates the
      ranks together. A replay without its graph is held in the rank's cold record with its report rows
      (pacing, graph size) and the rank's verdicts (:class:`_KeptPartial`);
    * the rank's reduced trace (its metadata: path, devices, sizes, notes; the handles of its packed tables),
      breakdown, steady-state record and measured spans are held in one record in the spill file
      (:meth:`HeldRank.hold_cold`), read back when a rule or the report asks (the record read last kept); only
      its rank number stays in memory. The metadata's objects were ~1 KB a rank.
    """

    def __init__(self) -> None:
        self.kernels, self.ops = job_name_totals()
        self.comm = CommTable()
        self.frames = JobFrames()
        self.hot = HotStore(HeldRank)
        self.partials = HotStore(_KeptPartial, shared=(_PACKED,))
        self.held = array("q")
        """The indices in :attr:`partials` of the kept ranks whose replay graph is held."""
        self.untrusted = False

    def keep(self, p: RankPartial) -> RankPartial:
        """Keep ``p`` (:meth:`keep_at`) and return its view."""
        view: RankPartial = self.partials.view(self.keep_at(p))
        return view

    def keep_at(self, p: RankPartial) -> int:
        """Keep ``p`` and return its index in :attr:`partials` (what the client holds of it until the end: its view
        is made from the index when read, :meth:`HotStore.views`)."""
        check_rank(p.analysis.trace.meta)  # the totals key on the rank
        self.comm.add(p.analysis.rank, p.comm_signature())
        p.analysis = HeldRank.of(p.analysis, self.frames)
        if isinstance(p.analysis.trace, ReducedRank):
            p.analysis.trace.pack()
        p.pack()
        views = p.analysis.name_views
        if views is not None:
            self.kernels.add(p.analysis.rank, views[0])
            self.ops.add(p.analysis.rank, views[1])
            p.analysis.name_views = None
        replay = p.replay
        if replay is not None and not replay.ok and not self.untrusted:
            self.untrusted = True
            for i in self.held:
                held = self.partials.view(i)
                assert isinstance(held.analysis, HeldRank)
                held.analysis.hold_cold(rank_replay=_released(held.replay))
                del held.__dict__["replay"]
            self.held = array("q")
        cold = {"rank_verdicts": p.__dict__.pop("verdicts")}
        if replay is not None and self.untrusted:
            cold["rank_replay"] = _released(replay)
            del p.__dict__["replay"]
        p.__class__ = _KeptPartial
        p.analysis.hold_cold(**cold)  # the reduced trace and its metadata with the report-only fields
        # the rank's analysis and result held as codes in the job's stores, read through views
        p.analysis = self.hot.add(p.analysis)
        i = self.partials.hold(p)
        if replay is not None and not self.untrusted:
            self.held.append(i)
        tidy_rank_loop(i)  # the arrival's parked objects and heap holes (the ranks arrive in any order: i counts them)
        return i


def _released(replay: RankReplay) -> RankReplay:
    """A copy of ``replay`` without its graph (:meth:`RankReplay.release_graph`), held in its rank's cold record."""
    out = RankReplay.__new__(RankReplay)
    out.__dict__.update(replay.__dict__)
    out.release_graph()
    return out


class _KeptPartial(RankPartial):
    """A rank's result as the job's client keeps it (:meth:`Kept.keep`): its verdicts, and its replay once the job
    is known not to be replayed (without its graph: its report rows, pacing and graph size, ~1.3 KB of dicts a
    rank, and its error), are held in the rank's cold record (:class:`HeldRank`), read back on use; in memory
    they were ~0.4 KB of objects a rank. Set again, a field is held as set. Pickled or copied, it is a plain
    :class:`RankPartial`."""

    @property
    def verdicts(self) -> dict[str, str]:
        own: dict[str, str] | None = self.__dict__.get("verdicts")
        return own if own is not None else self._cold("rank_verdicts")

    @verdicts.setter
    def verdicts(self, value: dict[str, str]) -> None:
        self.__dict__["verdicts"] = value

    @property
    def replay(self) -> Any:
        own = self.__dict__
        return own["replay"] if "replay" in own else self._cold("rank_replay", None)

    @replay.setter
    def replay(self, value: Any) -> None:
        self.__dict__["replay"] = value

    def _cold(self, name: str, *default: Any) -> Any:
        analysis = self.analysis
        assert isinstance(analysis, HeldRank)
        return getattr(analysis, name, *default)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_plain_partial, ({f.name: getattr(self, f.name) for f in dataclasses.fields(RankPartial)},))


def _plain_partial(values: dict[str, Any]) -> RankPartial:
    partial = RankPartial.__new__(RankPartial)
    partial.__dict__.update(values)
    return partial


class _Replays(ReadOnAccess[RankReplay]):
    """The ranks' replays in rank order, each read from its rank when asked for (a kept rank's from its cold
    record): :func:`mlprof.whatif.job.predict_job` and the report read them one at a time, and a list of them
    held every rank's report rows at once."""

    def __init__(self, partials: Sequence[RankPartial]) -> None:
        self._items = partials

    def _read(self, partial: RankPartial) -> RankReplay:
        replay: RankReplay = partial.replay
        return replay


def combine(partials: Sequence[RankPartial], path: str, options: TaskOptions, kept: Kept | None = None) -> Analysis:
    """The cross-rank reduction: one job from its ranks' compact results (any order).

    ``kept``: what the client kept of them as they arrived (:class:`Kept`), with the job's name totals."""
    partials = _check_ranks(partials, path)
    config = options.config
    _collect(partials)  # the arrival's
    ranks = [p.analysis.rank for p in partials]
    skew = match_table(_comm_table(partials, kept), ranks, release=True) if len(partials) > 1 else None
    del ranks  # an int object a rank past 256, not read again
    if kept is not None:
        kept.comm = CommTable()  # matched: the job's signature table (~0.6 KB a rank) is not read again
    own_contexts: list[RankContext] = []
    # A job's kept ranks: each rank's findings go to the spill file as soon as the rank is judged, and the merge
    # reads them back one rank at a time (:func:`mlprof.rules.engine.diagnose`): the client never holds every
    # rank's findings at once (~10 KB a rank).
    held = all(isinstance(p.analysis, HeldRank) for p in partials) and len(partials) > 1
    per_rank: SpilledLists | list[list[Finding]] = SpilledLists() if held else []
    # and each kept rank's context held as codes (its verdicts, step time, GPU spec), read through a view
    judged = HotStore(_JobContext, shared_types=(GpuSpec,)) if held else None
    for i, p in enumerate(partials):
        tidy_rank_loop(i)
        ra = p.analysis
        starts, ends = windows(ra)
        wait = skew.wait_intervals.get(ra.rank) if skew is not None else None
        assert ra.causes is not None
        ra.causes = split_comm_wait(ra.causes, p.exposed(), wait, starts, ends)
        ctx = _JobContext(ra, ra.causes) if isinstance(ra, HeldRank) else RankContext(ra, ra.causes)
        ctx.verdicts.update(p.verdicts)
        found = registry_order([*p.rank_findings(), *run_rank(ctx, config, matched=True)])
        if judged is not None:
            assert type(ctx) is _JobContext  # every rank held
            judged.hold(ctx)
        else:
            own_contexts.append(ctx)
        per_rank.append(found)
    # The kept ranks' contexts: views made on access, not a list of views (~0.1 KB a rank); the rules only index
    # and iterate them.
    contexts = cast(list[RankContext], judged.views()) if judged is not None else own_contexts
    if skew is not None and isinstance(skew.wait_intervals, WaitIntervals):
        skew.wait_intervals.spill(spill)  # read: each rank's communication is split
    world = partials[0].analysis.trace.meta.world_size
    _collect(partials)  # the ranks' rules'
    diagnosis = diagnose(contexts, config, skew, world, per_rank=per_rank)
    _collect(partials)  # the job rules'
    from mlprof.whatif.job import predict_job

    if all(p.replay is not None for p in partials):
        # A job's ranks are replayed together, coupled by their matched collectives (mlprof.whatif.job).
        replays = _Replays(partials)
        specs = [c.gpu_spec for c in contexts]
        # build_job reads them only when every rank's own replay is trusted (else the job is not replayed)
        signatures = [p.comm_signature() for p in partials] if all(r.ok for r in replays) else []
        diagnosis.whatif = predict_job(diagnosis, replays, signatures, skew, specs, config)
    analyses = []
    if isinstance(per_rank, SpilledLists):
        # Merged, the ranks' own findings are read again only on request: held in the spill file, the client
        # does not hold them through the report.
        for i, p in enumerate(partials):
            assert isinstance(p.analysis, HeldRank)
            p.analysis.hold_findings(per_rank.spilled(i))
    else:
        for p, findings in zip(partials, diagnosis.per_rank, strict=True):
            p.analysis.findings = sorted(findings, key=lambda f: -f.expected_speedup)
    for p in partials:
        if len(partials) == 1:
            p.analysis.diagnosis = diagnosis
        analyses.append(p.analysis)
    return Analysis(
        path=path,
        ranks=_held_views(analyses),
        step_filter=options.steps_spec,
        diagnosis=diagnosis,
        skew=skew,
        name_totals=(kept.kernels, kept.ops) if kept is not None else None,
    )


COLLECT_FROM_RANKS = 64
"""Ranks from which :func:`combine` collects between its phases (:func:`_collect`)."""


def _collect(partials: Sequence[RankPartial]) -> None:
    """A full garbage collection, then the heap's free pages handed back, between the client's phases (after the
    arrival, before and after the job's rules) on a job of :data:`COLLECT_FROM_RANKS` ranks or more.

    The collection empties the interpreter's free lists too (tuples, lists, dicts, floats parked for reuse), which
    a phase's per-rank loops fill (a tuple a rank of a table's rows, ~2 one-tuples a rank in the rank loop, up to
    2,000 of each size: ~0.25 MB traced at 1,024 ranks after the arrival and again before the job's rules); freed,
    the next phase's objects reuse that memory instead of growing the heap. ~1 ms from the CLI (its startup
    objects frozen, :func:`gc.freeze`), ~70 ms from the API, on a job of seconds.

    The trim (``malloc_trim``, :func:`mlprof.trace.memory.release_freed_memory`): the matching's arrays of every
    kernel (64 KB each at 1,024 ranks) leave holes the smaller arrays after it do not fill, resident to the end
    otherwise (gen_256 / gen_1024 peak RSS -0.3 / -0.4 MB, benchmarks/RESULTS.md, stop 30). < 0.3 ms a trim on a
    ~20 MB heap with holes."""
    if len(partials) >= COLLECT_FROM_RANKS:
        gc.collect()
        release_freed_memory(however_little=True)


def _held_views(analyses: list[RankAnalysis]) -> list[RankAnalysis]:
    """``analyses`` as views made on access (:class:`HotViews`) where every one is a view of one store (a job's
    kept ranks): the report reads them rank after rank, and a list of views held ~0.13 KB a rank to the end."""
    store = HotStore.of_view(analyses[0]) if analyses else None
    if store is None or any(HotStore.of_view(ra) is not store for ra in analyses):
        return analyses
    # the rules and the report only index and iterate the ranks (a sequence typed as the list it stands for)
    return cast(list[RankAnalysis], store.views([store.index(ra) for ra in analyses]))


class _JobContext(RankContext):
    """A kept rank's context on a job's client: its causes read from the rank's held rows, and its per-rank
    caches (the windows as a DataFrame, the causes as a matrix, ~8 KB a rank) kept for the context read last
    only: the client runs the rules rank after rank, then the job's rules read each rank once more, and every
    rank's caches held until the merge grew the client by ~8 MB at 1,024 ranks."""

    _last: ClassVar[tuple[RankContext | None, dict[str, Any]]] = (None, {})

    def __init__(self, analysis: HeldRank, causes: pd.DataFrame) -> None:
        super().__init__(analysis, causes)

    @property
    def tables(self) -> Trace | ReducedRank:
        """The rank's reduced trace, read from its cold record on use (:class:`HeldRank`): every rank's context
        is held until the job's findings are merged, and each holding its rank's metadata was ~1 KB a rank."""
        own: Trace | ReducedRank | None = self.__dict__.get("_tables")
        return own if own is not None else self.analysis.trace

    @tables.setter
    def tables(self, value: Trace | ReducedRank) -> None:
        if value is self.analysis.trace:
            self.__dict__.pop("_tables", None)
        else:
            self.__dict__["_tables"] = value

    @property
    def causes(self) -> pd.DataFrame:
        own: pd.DataFrame | None = self.__dict__.get("_causes")
        return own if own is not None else self.analysis.causes

    @causes.setter
    def causes(self, value: pd.DataFrame) -> None:
        if value is self.analysis.causes:  # the frame the rank's rows were read into last: read it again
            self.__dict__.pop("_causes", None)
        else:
            self.__dict__["_causes"] = value

    def _cached(self, name: str, compute: Callable[[RankContext], Any]) -> Any:
        ctx, values = _JobContext._last
        if ctx is not self:
            values = {}
            _JobContext._last = (self, values)
        if name not in values:
            values[name] = compute(self)
        return values[name]

    @property
    def windows(self) -> pd.DataFrame:
        return self._cached("windows", RankContext.windows.func)  # type: ignore[attr-defined]

    @property
    def _cause_matrix(self) -> tuple[np.ndarray, dict[str, int]]:
        return self._cached("_cause_matrix", RankContext._cause_matrix.func)  # type: ignore[attr-defined]


def _comm_table(partials: Sequence[RankPartial], kept: Kept | None) -> CommTable:
    """The job's signature table: as kept while the ranks arrived, else read rank by rank now."""
    if kept is not None:
        return kept.comm
    table = CommTable()
    for p in partials:
        table.add(p.analysis.rank, p.comm_signature())
    return table


def _check_ranks(partials: Sequence[RankPartial], path: str) -> Sequence[RankPartial]:
    """Every rank known and unique (the same rules and messages as :func:`mlprof.trace.loader.load_job`)."""
    seen: dict[int, str] = {}
    for p in partials:
        meta = p.analysis.trace.meta
        if meta.rank is None:
            if len(partials) == 1:
                trace = p.analysis.trace
                trace.meta.rank, trace.meta.rank_source = 0, "single file"
                p.analysis.trace = trace  # a kept rank's trace is read from its cold record: held as set
                continue
            raise BadInputError(
                f"{meta.path}: cannot tell its rank (no distributedInfo.rank); name rank files like rank-3.json.gz"
            )
        check_rank(meta)
        if meta.rank in seen:
            raise BadInputError(f"{path}: rank {meta.rank} appears twice ({seen[meta.rank]} and {meta.path})")
        seen[meta.rank] = meta.path
    if isinstance(partials, HotViews):
        return partials.sorted(key=lambda p: p.analysis.rank)
    return sorted(partials, key=lambda p: p.analysis.rank)
