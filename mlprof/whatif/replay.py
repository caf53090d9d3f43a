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
    graph = build_graph(trace)
    starts = np.asarray(win_starts, dtype=np.int64)
    ends = np.asarray(win_ends, dtype=np.int64)
    recorded = step_durations(graph, recorded_timeline(graph), starts, ends, recorded=True)
    edges = graph.copy()
    edges.g_gap = np.minimum(edges.g_gap, graph.turnaround_ns)
    tl = simulate(edges)
    replayed = step_durations(edges, tl, starts, ends)
    base = (
        step_durations(graph, simulate(graph, unmodified=True), starts, ends).astype(np.float64)
        if len(starts)
        else None
    )
    return RankReplay(
        rank=rank,
        graph=graph,
        win_starts=starts,
        win_ends=ends,
        recorded_ns=float(recorded.mean()) if len(recorded) else 0.0,
        replayed_ns=float(replayed.mean()) if len(replayed) else 0.0,
        pacing=pacing(graph, starts, ends, steps, base=base),
        rounds=tl.rounds,
        full_ns=float(base.mean()) if base is not None and len(base) else None,
    )


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

    def gain(name: str) -> np.ndarray:
        if empty.get(name, False):
            return np.zeros(len(base))
        g = probes[name]()
        return base - step_durations(g, simulate(g), starts, ends)

    gains = np.stack([gain(name) for name in probes], axis=1)
    names = list(probes)
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
