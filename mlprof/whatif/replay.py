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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlprof.results.released import Released
from mlprof.trace.model import Trace
from mlprof.whatif.graph import ReplayGraph, build_graph
from mlprof.whatif.measure import recorded_timeline, step_durations
from mlprof.whatif.simulate import simulate
from mlprof.whatif.transforms import remove_host_time, set_op_durations

MAX_REPLAY_ERROR_PCT = 5.0
"""Above this replay error, predictions fall back to the attribution estimate (confidence low)."""

PACE_SHARE = 0.9
"""Pacing probe: each resource's time is scaled to this share and the steps replayed."""

MIN_PACE_GAIN = 0.01
"""A probe names the resource pacing a step only if it shortens the replayed step by at least this share
(a tenth of what a resource holding the whole step would gain at 10%)."""

GPU_BUSY_PACES = 0.9
"""A step whose device is busy (compute, exposed communication or copies) at least this share of it is paced by
the device: the other resources share the rest, less than a tenth of the step. The replay's host
probe can still win such a step when the host's idle wait for the device is recorded as host time
(no synchronize in the trace: the synthetic healthy trace), so this rule comes first."""


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
    full_ns: float | None = None
    """Mean analysed step of the full graph (residuals kept) replayed unmodified: the base every
    prediction divides by, kept from the pacing probe so it is simulated once."""
    shape: dict[str, Any] = field(default_factory=dict)
    """The graph's size as the report gives it (host calls, device ops, edges, waits, launch latency), kept
    when the graph is released."""

    def __post_init__(self) -> None:
        g = self.graph
        self.shape = {
            "host_calls": g.n_host,
            "device_ops": g.n_gpu,
            "cross_stream_edges": int((g.g_dep >= 0).sum()),
            "host_waits": int((g.h_wait >= 0).sum()),
            "launch_latency_us": round(g.latency_ns / 1000, 2),
        }

    def release_graph(self) -> None:
        """Drop the graph (a job whose replay is not trusted predicts nothing with it); using it then is an error."""
        self.graph = _RELEASED

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.replayed_ns - self.recorded_ns) / self.recorded_ns if self.recorded_ns > 0 else 0.0

    @property
    def ok(self) -> bool:
        return abs(self.error_pct) <= MAX_REPLAY_ERROR_PCT

    def mean_step_ns(self, graph: ReplayGraph) -> float:
        """Mean analysed step of a (possibly fixed) graph, replayed with its residuals."""
        if graph is self.graph and self.full_ns is not None:
            return self.full_ns
        tl = simulate(graph)
        durations = step_durations(graph, tl, self.win_starts, self.win_ends)
        return float(durations.mean()) if len(durations) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "replay_error_pct": round(self.error_pct, 3),
            "recorded_step_ms": round(self.recorded_ns / 1e6, 4),
            "replayed_step_ms": round(self.replayed_ns / 1e6, 4),
            **self.shape,
            "paced_by": self.pacing,
        }


_RELEASED: Any = Released("replay graph released (RankReplay.release_graph), then read: .{name}")
"""Stands for a released graph (:meth:`RankReplay.release_graph`)."""


def replay_rank(
    trace: Trace, rank: int, win_starts: np.ndarray, win_ends: np.ndarray, steps: pd.DataFrame
) -> RankReplay:
    """Build and check the replay of one rank over its analysed windows (``steps``: the per-step attribution)."""
    work = ReplayWork(build_graph(trace), rank, win_starts, win_ends, steps)
    return work.finish([task() for task in work.tasks])


class ReplayWork:
    """The checks of one rank's replay as independent tasks, and the :class:`RankReplay` their results make.

    :func:`replay_rank` runs the tasks in turn; the analysis shares them with a helper process
    (:mod:`mlprof.whatif.helper`) while it runs the rules. Each task replays one graph and returns
    step durations: the edge model (with its rounds), the unmodified graph (the base every probe
    and prediction divides by) and each pacing probe (see :func:`pacing`) with something to speed up.
    """

    def __init__(
        self, graph: ReplayGraph, rank: int, win_starts: np.ndarray, win_ends: np.ndarray, steps: pd.DataFrame
    ) -> None:
        self.graph, self.rank, self.steps = graph, rank, steps
        for value in vars(graph).values():  # read-only from here, as every copy of it (ReplayGraph.copy) makes it
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
        self.starts = np.asarray(win_starts, dtype=np.int64)
        self.ends = np.asarray(win_ends, dtype=np.int64)
        self.probes = _probes(graph, self.starts, self.ends) if len(self.starts) else {}
        self.tasks: list[Callable[[], Any]] = [self._edges]
        if len(self.starts):
            self.tasks.append(self._base)
            self.tasks.extend(_probe_task(graph, make, self.starts, self.ends) for make in self.probes.values())

    def _edges(self) -> tuple[np.ndarray, int]:
        edges = self.graph.copy()
        edges.g_gap = np.minimum(edges.g_gap, self.graph.turnaround_ns)
        tl = simulate(edges)
        return step_durations(edges, tl, self.starts, self.ends), tl.rounds

    def _base(self) -> np.ndarray:
        tl = simulate(self.graph, unmodified=True)
        return step_durations(self.graph, tl, self.starts, self.ends).astype(np.float64)

    def finish(self, results: list[Any]) -> RankReplay:
        """The rank's replay from its tasks' results (in the order of :attr:`tasks`)."""
        graph, starts, ends = self.graph, self.starts, self.ends
        recorded = step_durations(graph, recorded_timeline(graph), starts, ends, recorded=True)
        replayed, rounds = results[0]
        base = results[1] if len(starts) else None
        pace: list[dict[str, Any]] = []
        if base is not None:
            probed = dict(zip(self.probes, results[2:], strict=True))
            gains = np.stack(
                [base - probed[name] if name in probed else np.zeros(len(base)) for name in PROBES], axis=1
            )
            pace = _pace(gains, base, starts, self.steps)
        return RankReplay(
            rank=self.rank,
            graph=graph,
            win_starts=starts,
            win_ends=ends,
            recorded_ns=float(recorded.mean()) if len(recorded) else 0.0,
            replayed_ns=float(replayed.mean()) if len(replayed) else 0.0,
            pacing=pace,
            rounds=rounds,
            full_ns=float(base.mean()) if base is not None and len(base) else None,
        )


PROBES = ("GPU compute", "communication", "data loading", "host")
"""The resources the pacing probe speeds up, in the order a tie between their gains is broken."""


def pacing(
    graph: ReplayGraph,
    starts: np.ndarray,
    ends: np.ndarray,
    steps: pd.DataFrame,
    base: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per step, the resource whose time moves the step most: each of GPU compute, communication, data
    loading and other host time is made 10% faster in turn and the steps replayed (a critical-path probe).
    A step whose device is busy at least :data:`GPU_BUSY_PACES` of it is paced by the device (``why``:
    ``device busy``); otherwise the probe that gains most names it if it gains at least
    :data:`MIN_PACE_GAIN` of the step (``why``: ``probe``), else "none of them alone".
    ``gain_share_at_10pct`` is the named resource's probe gain.

    ``base``: the unmodified graph's step durations, when the caller has them already. A probe
    with nothing to speed up (no communication kernels, no DataLoader ranges) gains nothing and
    is not simulated.
    """
    if len(starts) == 0:
        return []
    if base is None:
        base = step_durations(graph, simulate(graph, unmodified=True), starts, ends).astype(np.float64)
    probes = _probes(graph, starts, ends)
    gains = np.stack(
        [
            base - _probe_task(graph, probes[name], starts, ends)() if name in probes else np.zeros(len(base))
            for name in PROBES
        ],
        axis=1,
    )
    return _pace(gains, base, starts, steps)


def _probes(graph: ReplayGraph, starts: np.ndarray, ends: np.ndarray) -> dict[str, Callable[[], ReplayGraph]]:
    """Each pacing probe's graph maker (see :func:`pacing`), for the probes with something to speed up."""
    ws, we = graph.rel(starts), graph.rel(ends)
    comm = graph.g_klass == "comm"
    ds, de = graph.ranges.get("dataloader", (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    inside = (de > ws.min()) & (ds < we.max()) if len(ds) else np.zeros(0, dtype=bool)
    ds, de = ds[inside], de[inside]
    host_s, host_e = _complement(ws, we, ds, de)
    # Each probe's graph is made when it is replayed and dropped after (four copies of the graph alive at once
    # set the peak memory of the replay on large traces).
    probes: dict[str, Callable[[], ReplayGraph]] = {
        "GPU compute": lambda: set_op_durations(graph, np.flatnonzero(~comm), graph.g_dur[~comm] * PACE_SHARE),
        "communication": lambda: set_op_durations(graph, np.flatnonzero(comm), graph.g_dur[comm] * PACE_SHARE),
        "data loading": lambda: remove_host_time(graph, ds, de, ((de - ds) * PACE_SHARE).astype(np.int64)),
        "host": lambda: remove_host_time(graph, host_s, host_e, ((host_e - host_s) * PACE_SHARE).astype(np.int64)),
    }
    empty = {"GPU compute": not (~comm).any(), "communication": not comm.any(), "data loading": len(ds) == 0}
    return {name: make for name, make in probes.items() if not empty.get(name, False)}


def _probe_task(
    graph: ReplayGraph, make: Callable[[], ReplayGraph], starts: np.ndarray, ends: np.ndarray
) -> Callable[[], np.ndarray]:
    """Replay one probe's graph: its step durations."""

    def task() -> np.ndarray:
        g = make()
        return step_durations(g, simulate(g), starts, ends)

    return task


def _pace(gains: np.ndarray, base: np.ndarray, starts: np.ndarray, steps: pd.DataFrame) -> list[dict[str, Any]]:
    """Each step's pacing entry from the probes' gains (one column per :data:`PROBES` name)."""
    names = list(PROBES)
    aligned = len(steps) == len(starts)
    numbers = steps["step"].to_numpy() if aligned else np.full(len(starts), -1)
    busy, comm_busy = _device_busy(steps, len(starts))
    out = []
    for i in range(len(starts)):
        best = int(gains[i].argmax())
        share = float(gains[i, best] / max(base[i], 1.0))
        if busy[i] >= GPU_BUSY_PACES:
            paced, why = ("communication" if comm_busy[i] else "GPU compute"), "device busy"
            share = float(gains[i, names.index(paced)] / max(base[i], 1.0))
        elif share >= MIN_PACE_GAIN:
            paced, why = names[best], "probe"
        else:
            paced, why = "none of them alone", "probe"
        out.append(
            {
                "step": int(numbers[i]),
                "paced_by": paced,
                "why": why,
                "gain_share_at_10pct": round(share, 4),
                "device_busy_share": round(float(busy[i]), 4) if aligned else None,
            }
        )
    return out


def _device_busy(steps: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step, the share of it the device is busy (attribution: compute, exposed communication and copies),
    and whether exposed communication is the larger part of that; zeros when the table does not align."""
    cols = ("compute", "comm_exposed", "memcpy_exposed")
    if len(steps) != n or any(c not in steps for c in (*cols, "dur")):
        return np.zeros(n), np.zeros(n, dtype=bool)
    dur = steps["dur"].to_numpy(np.float64)
    busy = sum(steps[c].to_numpy(np.float64) for c in cols)
    share = np.where(dur > 0, busy / np.maximum(dur, 1.0), 0.0)
    return share, steps["comm_exposed"].to_numpy(np.float64) > steps["compute"].to_numpy(np.float64)


def _complement(ws: np.ndarray, we: np.ndarray, cs: np.ndarray, ce: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parts of the windows outside the (possibly overlapping) intervals ``cs``-``ce``."""
    from mlprof.analyzers.intervals import merge

    ms, me = merge(cs, ce)
    out_s: list[np.ndarray] = []
    out_e: list[np.ndarray] = []
    for a, b in zip(ws.tolist(), we.tolist(), strict=True):
        hit = (me > a) & (ms < b)
        out_s.append(np.concatenate([[a], np.clip(me[hit], a, b)]))
        out_e.append(np.concatenate([np.clip(ms[hit], a, b), [b]]))
    s, e = np.concatenate(out_s), np.concatenate(out_e)
    ok = e > s
    return s[ok], e[ok]
