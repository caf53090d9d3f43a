"""Replay of one rank (how well the graph explains the recording) and per-step pacing.

:func:`replay_rank` builds the graph, measures the analysed steps as recorded and as
replayed by the *edge model*: every device op starts when its launch, its stream
predecessor, a cross-stream predecessor or the op a host call waited for allows, with
the residual delays no edge explains set to zero. The difference is the replay error:
time the graph cannot explain. Predictions (:mod:`mlprof.whatif.predict`) replay the
full graph, residuals kept, so that the unmodified replay is the recording and a
prediction changes only what the fix changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlprof.trace.model import Trace
from mlprof.whatif.graph import ReplayGraph, build_graph
from mlprof.whatif.measure import recorded_timeline, step_durations
from mlprof.whatif.simulate import simulate

MAX_REPLAY_ERROR_PCT = 5.0
"""Above this replay error, predictions fall back to the attribution estimate (confidence low)."""

PACE_GROUPS: dict[str, tuple[str, ...]] = {
    "GPU compute": ("compute", "memcpy_exposed"),
    "communication": ("comm_exposed",),
    "data loading": ("idle_data",),
    "host": ("idle_sync", "idle_launch", "idle_other"),
}
"""Which attribution categories count for which resource when saying what paces a step."""


@dataclass
class RankReplay:
    """The replay graph of one rank, its analysed steps and how well the replay reproduces them."""

    rank: int
    graph: ReplayGraph
    win_starts: np.ndarray
    """Analysed steps (absolute ns)."""
    win_ends: np.ndarray
    recorded_ns: float
    """Mean step time of the recording, measured as replays are (:mod:`mlprof.whatif.measure`)."""
    replayed_ns: float
    """Mean step time of the edge-model replay."""
    pacing: list[dict[str, Any]] = field(default_factory=list)
    rounds: int = 0

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.replayed_ns - self.recorded_ns) / self.recorded_ns if self.recorded_ns > 0 else 0.0

    @property
    def ok(self) -> bool:
        return abs(self.error_pct) <= MAX_REPLAY_ERROR_PCT

    def mean_step_ns(self, graph: ReplayGraph) -> float:
        """Mean analysed step of a (possibly fixed) graph, replayed with its residuals."""
        tl = simulate(graph)
        durations = step_durations(graph, tl, self.win_starts, self.win_ends)
        return float(durations.mean()) if len(durations) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "replay_error_pct": round(self.error_pct, 3),
            "recorded_step_ms": round(self.recorded_ns / 1e6, 4),
            "replayed_step_ms": round(self.replayed_ns / 1e6, 4),
            "host_calls": self.graph.n_host,
            "device_ops": self.graph.n_gpu,
            "cross_stream_edges": int((self.graph.g_dep >= 0).sum()),
            "host_waits": int((self.graph.h_wait >= 0).sum()),
            "launch_latency_us": round(self.graph.latency_ns / 1000, 2),
            "paced_by": self.pacing,
        }


def replay_rank(
    trace: Trace, rank: int, win_starts: np.ndarray, win_ends: np.ndarray, steps: pd.DataFrame
) -> RankReplay:
    """Build and check the replay of one rank over its analysed windows (``steps``: the per-step attribution)."""
    graph = build_graph(trace)
    starts = np.asarray(win_starts, dtype=np.int64)
    ends = np.asarray(win_ends, dtype=np.int64)
    recorded = step_durations(graph, recorded_timeline(graph), starts, ends, recorded=True)
    edges = graph.copy()
    edges.g_gap = np.minimum(edges.g_gap, graph.turnaround_ns)
    tl = simulate(edges)
    replayed = step_durations(edges, tl, starts, ends)
    return RankReplay(
        rank=rank,
        graph=graph,
        win_starts=starts,
        win_ends=ends,
        recorded_ns=float(recorded.mean()) if len(recorded) else 0.0,
        replayed_ns=float(replayed.mean()) if len(replayed) else 0.0,
        pacing=pacing(steps),
        rounds=tl.rounds,
    )


def pacing(steps: pd.DataFrame) -> list[dict[str, Any]]:
    """Per step, the resource that held the step longest: the one to speed up first."""
    if len(steps) == 0:
        return []
    totals = np.stack([steps[list(cols)].sum(axis=1).to_numpy(np.float64) for cols in PACE_GROUPS.values()], axis=1)
    names = list(PACE_GROUPS)
    best = totals.argmax(axis=1)
    dur = np.maximum(steps["dur"].to_numpy(np.float64), 1.0)
    return [
        {"step": int(s), "paced_by": names[b], "share": round(float(totals[i, b] / dur[i]), 3)}
        for i, (s, b) in enumerate(zip(steps["step"].to_numpy(), best, strict=True))
    ]
