"""Cross-rank view of collectives: how long each rank waits for the last one to arrive.

A collective cannot finish before every rank has joined it, so on ranks that arrive
early the NCCL kernel starts and then spins until the late rank shows up. Clocks of
different hosts are not aligned in the traces, but durations need no alignment: the
same collective (same kernel name, same occurrence on every rank) lasts shortest on
the rank that arrived last, and on every other rank the excess over that shortest
duration is waiting. The waiting is the first part of the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlprof.trace.model import Trace


@dataclass
class RankSkew:
    """Matched collectives across ranks and the wait each rank spent in them."""

    ranks: list[int]
    matched: int
    """Collectives found on every rank (same name, same occurrence)."""
    unmatched: int
    """Communication kernels present on some ranks only (not used)."""
    wait_intervals: dict[int, tuple[np.ndarray, np.ndarray]]
    """Per rank: [start, start + wait) of each matched collective kernel, int64 ns."""
    per_rank: pd.DataFrame
    """rank, comm_ns, wait_ns, last_arrivals (times this rank was the one everyone waited for),
    caused_wait_ns (wait of the other ranks on the collectives where this rank came last)."""


def rank_skew(traces: list[Trace]) -> RankSkew | None:
    """Match communication kernels across ranks; None with fewer than two ranks or no collectives."""
    if len(traces) < 2:
        return None
    tables = []
    for rank, trace in enumerate(traces):
        gpu = trace.gpu
        comm = gpu[(gpu["kind"] == "kernel") & gpu["is_comm"].astype(bool)].sort_values("ts", kind="stable")
        if len(comm) == 0:
            return None
        frame = pd.DataFrame(
            {
                "rank": trace.meta.rank if trace.meta.rank is not None else rank,
                "name": comm["name"].astype(str).to_numpy(),
                "ts": comm["ts"].to_numpy(np.int64),
                "dur": comm["dur"].to_numpy(np.int64),
            }
        )
        frame["occurrence"] = frame.groupby("name").cumcount()
        tables.append(frame)
    ranks = [int(t["rank"].iloc[0]) for t in tables]
    allk = pd.concat(tables, ignore_index=True)
    counts = allk.groupby(["name", "occurrence"])["rank"].transform("nunique")
    matched = allk[counts == len(tables)].copy()
    unmatched = int((counts != len(tables)).sum())
    if len(matched) == 0:
        return None
    key = ["name", "occurrence"]
    matched["min_dur"] = matched.groupby(key)["dur"].transform("min")
    matched["wait"] = matched["dur"] - matched["min_dur"]
    # The rank that came last has the shortest kernel (ties: the first such rank).
    last_idx = matched.groupby(key)["dur"].idxmin()
    last = matched.loc[last_idx, [*key, "rank"]].rename(columns={"rank": "last_rank"})
    matched = matched.merge(last, on=key, how="left")
    caused = matched.groupby("last_rank")["wait"].sum()
    last_counts = last["last_rank"].value_counts()
    per_rank = pd.DataFrame(
        {
            "rank": ranks,
            "comm_ns": [int(t["dur"].sum()) for t in tables],
            "wait_ns": [int(matched.loc[matched["rank"] == r, "wait"].sum()) for r in ranks],
            "last_arrivals": [int(last_counts.get(r, 0)) for r in ranks],
            "caused_wait_ns": [int(caused.get(r, 0)) for r in ranks],
        }
    )
    waits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for r in ranks:
        mine = matched[(matched["rank"] == r) & (matched["wait"] > 0)]
        s = mine["ts"].to_numpy(np.int64)
        waits[r] = (s, s + mine["wait"].to_numpy(np.int64))
    return RankSkew(
        ranks=ranks,
        matched=int(len(matched) // len(tables)),
        unmatched=unmatched,
        wait_intervals=waits,
        per_rank=per_rank,
    )
