"""What-if engine: replay a trace's dependency graph, with and without each fix.

The flow is ``trace -> analyzers -> rules -> what-if replay -> report``: the rules say
*what* is wrong, the replay says *how much faster* the step gets once it is fixed.

* :func:`mlprof.whatif.graph.build_graph` turns one rank's trace into a
  :class:`~mlprof.whatif.graph.ReplayGraph`: host calls in order with the host time
  between them, device ops in FIFO streams, launch / stream-order / cross-stream /
  host-wait edges.
* :func:`mlprof.whatif.simulate.simulate` replays it (vectorised max-plus scans,
  alternated host/device until nothing moves); :mod:`mlprof.whatif.measure` turns the
  replayed times into step times.
* :func:`mlprof.whatif.replay.replay_rank` checks the graph: the edge model's replay
  error on the analysed steps (reported as ``whatif.replay_error_pct``).
* :mod:`mlprof.whatif.fixes` holds each rule's fix as a graph edit;
  :func:`mlprof.whatif.predict.predict` replays every finding's fix and builds the
  plan cumulatively (each next fix chosen by its marginal gain on the fixed graph).

Adding a fix for a new rule (the whole API)::

    from mlprof.rules.new_rule import NewOptions   # the rule's options class (its thresholds)
    from mlprof.whatif.fixes import FixContext, fix
    from mlprof.whatif.transforms import remove_host_time, set_op_durations

    @fix("NEW001", "What the fix does to the graph, in words (shown by `mlprof explain`).")
    def _new(ctx: FixContext[NewOptions]) -> ReplayGraph | None:
        g = ctx.graph                                   # edit copies only: transforms return new graphs
        ops = np.flatnonzero((g.g_klass == "memory_bound") & ctx.in_windows(g.g_ts))
        if len(ops) == 0:
            return None                                 # not expressible here: attribution estimate kept
        return set_op_durations(g, ops, g.g_dur[ops] / ctx.opts.factor)

``ctx.opts`` is the rule's typed options object, the one its detection read (``NewOptions``, the rule's
``options_class``; declare the parameter there with ``option(...)`` so ``[tool.mlprof.rules.NEW001]`` and
``--set NEW001.factor=3`` accept and range-check it), ``ctx.evidence`` the
rule's finding on that rank, ``ctx.in_windows`` keeps edits inside the analysed steps,
``ctx.host_rows("dataloader" | "optimizer")`` gives host ranges. The edits are in
:mod:`mlprof.whatif.transforms` (host time removed, op durations, waits dropped, ops
detached from their stream, ops merged, launch latency capped). The module of the new
fix must be imported by :mod:`mlprof.whatif.fixes` (or be that module).
"""

from __future__ import annotations

from mlprof.whatif.graph import ReplayGraph, build_graph
from mlprof.whatif.job import JobReplay, build_job
from mlprof.whatif.predict import WhatIf, predict
from mlprof.whatif.replay import RankReplay, replay_rank
from mlprof.whatif.simulate import Timeline, simulate

__all__ = [
    "JobReplay",
    "RankReplay",
    "ReplayGraph",
    "Timeline",
    "WhatIf",
    "build_graph",
    "build_job",
    "predict",
    "replay_rank",
    "simulate",
]
