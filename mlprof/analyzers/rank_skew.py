"""Cross-rank view of collectives: the same collective matched on every rank, clocks aligned, waits measured.

A collective cannot finish before every rank has joined it, so on ranks that arrive
early the NCCL kernel starts and then spins until the late rank shows up. Two facts
follow, and both are read from the traces themselves, never from host clocks:

* **Waiting needs no clock.** The same collective lasts shortest on the rank that
  arrived last; on every other rank the excess over that shortest duration is
  waiting, and it is the first part of the kernel.
* **Clocks align on collective ends.** All ranks leave a collective at (nearly) the
  same instant, so the median difference of a rank's collective end times against
  rank 0's (the first rank's) is its clock offset. Aligned start times then say how
  late each rank arrived, in one time base for the whole job.

The same collective is found on each rank by its process group and sequence
number when the trace records them (``Process Group Name``/``pg_id`` and
``Seq``/``seq`` arguments of the NCCL kernel, in newer Kineto traces); such a
collective involves the members of its group only. Otherwise it is matched by
order: the n-th kernel of the same name on every rank (and only collectives
present on every rank count).

Each rank is first reduced to its *signature* (:func:`comm_signature`: a few
columns per communication kernel), so a job of 1,024 ranks is matched from
1,024 small tables, not 1,024 traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlprof.trace.model import Trace

SIGNATURE_COLUMNS = ("name", "pg", "seq", "ts", "dur")


@dataclass
class RankSkew:
    """Matched collectives across ranks and the wait each rank spent in them."""

    ranks: list[int]
    matched: int
    """Collectives matched (on every rank by order, or on every member of their group by sequence)."""
    unmatched: int
    """Communication kernels that could not be matched (not used)."""
    wait_intervals: dict[int, tuple[np.ndarray, np.ndarray]]
    """Per rank: [start, start + wait) of each matched collective kernel, int64 ns, in the rank's own clock."""
    per_rank: pd.DataFrame
    """rank, comm_ns, wait_ns, last_arrivals (times this rank was the one everyone waited for),
    caused_wait_ns (wait of the other ranks on the collectives where this rank came last),
    critical_ns (on those collectives, how much later it came than the second-latest rank: what the
    whole job would gain if it had arrived with the others), clock_offset_ns (its clock minus the
    first rank's, from collective ends), late_ns (sum of its aligned arrival minus each collective's
    median arrival)."""
    match_key: str = "order"
    """``pg+seq`` (process group and sequence number from the trace) or ``order`` (n-th kernel of a name)."""
    collectives: pd.DataFrame = field(default_factory=pd.DataFrame)
    """One row per matched collective: key, name, ranks, last_rank, spread_ns (latest minus earliest
    aligned arrival), end_spread_ns (latest minus earliest aligned end: near zero when the match is
    right, since all ranks leave a collective together), median_dur_ns, wait_ns (summed over ranks),
    critical_ns, aligned_start_ns (median)."""


def comm_signature(trace: Trace) -> pd.DataFrame:
    """The communication kernels of one rank, in time order: name, pg, seq, ts, dur (all a match needs).

    ``pg``/``seq`` come from the ``collectives`` table (kernel arguments) when the trace has them,
    else ``""``/``-1``.
    """
    gpu = trace.gpu
    comm = gpu[(gpu["kind"] == "kernel") & gpu["is_comm"].astype(bool)].sort_values("ts", kind="stable")
    frame = pd.DataFrame(
        {
            "name": comm["name"].astype(str).to_numpy(),
            "ts": comm["ts"].to_numpy(np.int64),
            "dur": comm["dur"].to_numpy(np.int64),
        }
    )
    pg = np.full(len(frame), "", dtype=object)
    seq = np.full(len(frame), -1, dtype=np.int64)
    colls = trace.collectives
    if len(frame) and len(colls):
        gpu_colls = colls[colls["source"].astype(str) == "gpu"]
        if len(gpu_colls):
            keyed = pd.DataFrame(
                {
                    "ts": gpu_colls["ts"].to_numpy(np.int64),
                    "name": gpu_colls["name"].astype(str).to_numpy(),
                    "pg": gpu_colls["pg_name"].astype(object).fillna("").astype(str).to_numpy(),
                    "seq": gpu_colls["seq"].to_numpy(np.int64),
                }
            ).drop_duplicates(["ts", "name"])
            joined = frame[["ts", "name"]].merge(keyed, on=["ts", "name"], how="left")
            pg = joined["pg"].fillna("").astype(str).to_numpy(dtype=object)
            seq = joined["seq"].fillna(-1).astype(np.int64).to_numpy()
    frame["pg"] = pg
    frame["seq"] = seq
    return frame[list(SIGNATURE_COLUMNS)]


def rank_skew(traces: list[Trace]) -> RankSkew | None:
    """Match communication kernels across ranks; None with fewer than two ranks or no collectives."""
    ranks = [t.meta.rank if t.meta.rank is not None else i for i, t in enumerate(traces)]
    return match_collectives(ranks, [comm_signature(t) for t in traces])


def matched_kernels(ranks: list[int], signatures: list[pd.DataFrame]) -> tuple[pd.DataFrame, int, bool] | None:
    """The communication kernels of every rank that match a kernel of the other ranks, each with its ``key``
    (the same key on every rank for the same collective), the number left unmatched, and whether the key is
    the process group and sequence number (else the order: n-th kernel of a name, present on every rank).
    None with < 2 ranks or a rank without collectives. The what-if job replay
    (:mod:`mlprof.whatif.job`) constrains the same kernels :func:`match_collectives` measures."""
    if len(signatures) < 2 or any(len(s) == 0 for s in signatures):
        return None
    n = len(signatures)
    sizes = np.array([len(s) for s in signatures])
    allk = pd.concat(signatures, ignore_index=True)
    allk["rank"] = np.repeat(np.asarray(ranks, dtype=np.int64), sizes)
    use_seq = bool((allk["seq"] >= 0).all() and (allk["pg"] != "").all())
    if use_seq:
        occurrence = allk.groupby(["rank", "pg", "seq"]).cumcount().astype(str)
        allk["key"] = allk["pg"] + "#" + allk["seq"].astype(str) + "#" + occurrence
        counts = allk.groupby("key")["rank"].transform("size")
        keep = counts >= 2
    else:
        allk["key"] = allk["name"] + "#" + allk.groupby(["rank", "name"]).cumcount().astype(str)
        counts = allk.groupby("key")["rank"].transform("size")
        keep = counts == n
    return allk[keep].reset_index(drop=True), int((~keep).sum()), use_seq


def match_collectives(ranks: list[int], signatures: list[pd.DataFrame]) -> RankSkew | None:
    """Match the ranks' signatures (see :func:`comm_signature`); None with < 2 ranks or a rank without collectives."""
    keyed = matched_kernels(ranks, signatures)
    if keyed is None:
        return None
    matched, unmatched, use_seq = keyed
    if len(matched) == 0:
        return None
    matched["end"] = matched["ts"] + matched["dur"]
    offsets = _clock_offsets(matched, ranks)
    matched["aligned_ts"] = matched["ts"] - matched["rank"].map(offsets).to_numpy(np.int64)
    matched["aligned_end"] = matched["end"] - matched["rank"].map(offsets).to_numpy(np.int64)

    by_key = matched.groupby("key", sort=False)
    first_arrival = by_key["aligned_ts"].transform("min")
    matched["arrival"] = matched["aligned_ts"] - first_arrival  # small numbers: exact in float64 medians
    min_dur = by_key["dur"].transform("min")
    matched["wait"] = matched["dur"] - min_dur
    # The rank that came last has the shortest kernel (ties: the lowest rank).
    order = matched.sort_values(["key", "dur", "rank"], kind="stable")
    first = order.groupby("key", sort=False)
    last = first.head(1).set_index("key")
    second_dur = first["dur"].nth(1)
    second = pd.Series(second_dur.to_numpy(np.int64), index=order.loc[second_dur.index, "key"].to_numpy())
    colls = pd.DataFrame(
        {
            "name": last["name"],
            "ranks": by_key["rank"].size(),
            "last_rank": last["rank"],
            "spread_ns": by_key["arrival"].max(),
            "end_spread_ns": by_key["aligned_end"].max() - by_key["aligned_end"].min(),
            "median_dur_ns": by_key["dur"].median().round().astype(np.int64),
            "wait_ns": by_key["wait"].sum(),
            "critical_ns": (second.reindex(last.index).fillna(last["dur"]) - last["dur"]).astype(np.int64),
            "aligned_start_ns": by_key["aligned_ts"].min() + by_key["arrival"].median().round().astype(np.int64),
        }
    )
    colls.index.name = "key"
    matched["late"] = matched["aligned_ts"] - matched["key"].map(colls["aligned_start_ns"]).to_numpy(np.int64)
    # The last rank waits 0 in its collective, so the collective's total wait is what it caused.
    caused = colls.groupby("last_rank")["wait_ns"].sum()
    critical = colls.groupby("last_rank")["critical_ns"].sum()
    last_counts = colls["last_rank"].value_counts()
    per_rank_groups = matched.groupby("rank")
    comm_ns = pd.Series([int(s["dur"].sum()) for s in signatures], index=np.asarray(ranks, dtype=np.int64))
    per_rank = pd.DataFrame({"rank": np.asarray(ranks, dtype=np.int64)})
    idx = per_rank["rank"]
    per_rank["comm_ns"] = comm_ns.reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["wait_ns"] = per_rank_groups["wait"].sum().reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["last_arrivals"] = last_counts.reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["caused_wait_ns"] = caused.reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["critical_ns"] = critical.reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["clock_offset_ns"] = [int(offsets[r]) for r in ranks]
    per_rank["late_ns"] = per_rank_groups["late"].sum().reindex(idx).fillna(0).astype(np.int64).to_numpy()

    waits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    positive = matched[matched["wait"] > 0].sort_values(["rank", "ts"], kind="stable")
    bounds = np.searchsorted(positive["rank"].to_numpy(), np.asarray(ranks), side="left")
    ends = np.searchsorted(positive["rank"].to_numpy(), np.asarray(ranks), side="right")
    ts_all = positive["ts"].to_numpy(np.int64)
    wait_all = positive["wait"].to_numpy(np.int64)
    for r, lo, hi in zip(ranks, bounds, ends, strict=True):
        s = ts_all[lo:hi]
        waits[int(r)] = (s, s + wait_all[lo:hi])
    return RankSkew(
        ranks=[int(r) for r in ranks],
        matched=len(colls),
        unmatched=unmatched,
        wait_intervals=waits,
        per_rank=per_rank,
        match_key="pg+seq" if use_seq else "order",
        collectives=colls.reset_index(),
    )


def _clock_offsets(matched: pd.DataFrame, ranks: list[int]) -> dict[int, int]:
    """Each rank's clock minus the first rank's: the median difference of the same collectives' end times.

    A rank that shares no matched collective with the first rank keeps offset 0 (with sequence
    matching in disjoint process groups there is no common event to align on).
    """
    ref = ranks[0]
    ref_end = matched.loc[matched["rank"] == ref, ["key", "end"]].set_index("key")["end"]
    diff = matched["end"] - matched["key"].map(ref_end)
    ok = diff.notna()
    med = diff[ok].groupby(matched.loc[ok, "rank"]).median()
    return {int(r): round(float(med.get(r, 0.0))) for r in ranks}
