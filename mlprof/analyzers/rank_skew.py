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

from array import array
from collections.abc import Iterator, Mapping
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
    wait_intervals: Mapping[int, tuple[np.ndarray, np.ndarray]]
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


class CommTable:
    """Every rank's communication signature (:func:`comm_signature`) as one job table, built rank by rank.

    A job's client adds each rank's signature as its task returns (:class:`mlprof.engine.job.Kept`) and
    matches the collectives on this one table: it holds ~50 bytes per kernel (six int64 columns, names and
    process groups as codes into the job's lists of distinct strings) instead of a DataFrame per rank (~8 KB
    of pandas objects each, and a list of 1,024 of them concatenated for the matching).
    """

    COLUMNS = ("rank", "name", "pg", "seq", "ts", "dur")

    def __init__(self) -> None:
        self._names: dict[str, int] = {}
        self._pgs: dict[str, int] = {}
        self._rows = np.empty((len(self.COLUMNS), 64), dtype=np.int64)
        self._n = 0
        self._blocks = (array("q"), array("q"), array("q"))
        """rank, first row and rows of each signature added, in the order added (a rank that came twice has two):
        three int64 arrays, not a dict of lists of tuples (~180 bytes a rank)."""

    @classmethod
    def of(cls, ranks: list[int], signatures: list[pd.DataFrame]) -> CommTable:
        table = cls()
        for rank, signature in zip(ranks, signatures, strict=True):
            table.add(rank, signature)
        return table

    def add(self, rank: int, signature: pd.DataFrame) -> None:
        """Append one rank's signature (its kernels in the signature's order)."""
        n = len(signature)
        start = self._n
        for column, value in zip(self._blocks, (int(rank), start, n), strict=True):
            column.append(value)
        if n == 0:
            return
        if start + n > self._rows.shape[1]:
            grown = np.empty((len(self.COLUMNS), max(2 * self._rows.shape[1], start + n)), dtype=np.int64)
            grown[:, :start] = self._rows[:, :start]
            self._rows = grown
        rows = self._rows[:, start : start + n]
        rows[0] = rank
        rows[1] = _codes(signature["name"], self._names)
        rows[2] = _codes(signature["pg"], self._pgs)
        rows[3] = signature["seq"].to_numpy(np.int64)
        rows[4] = signature["ts"].to_numpy(np.int64)
        rows[5] = signature["dur"].to_numpy(np.int64)
        self._n = start + n

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (the buffer, grown by doubling)."""
        return int(self._rows.nbytes)

    def columns(self, ranks: list[int], names: tuple[str, ...] = COLUMNS) -> dict[str, np.ndarray]:
        """The kernels of ``ranks``, rank after rank in that order (as ``pd.concat`` of their signatures): the
        columns ``names``."""
        by_rank = self._by_rank()
        blocks = [b for r in ranks for b in by_rank.get(int(r), [])]
        index = (
            np.concatenate([np.arange(s, s + n, dtype=np.int64) for s, n in blocks])
            if blocks
            else np.zeros(0, np.int64)
        )
        return {c: self._rows[i, : self._n][index] for i, c in enumerate(self.COLUMNS) if c in names}

    def sizes(self, ranks: list[int]) -> np.ndarray:
        """Kernels per rank of ``ranks``."""
        by_rank = self._by_rank()
        return np.array([sum(n for _, n in by_rank.get(int(r), [])) for r in ranks], dtype=np.int64)

    def _by_rank(self) -> dict[int, list[tuple[int, int]]]:
        """rank -> (first row, rows) of each signature added for it, in the order added (made when asked for)."""
        index: dict[int, list[tuple[int, int]]] = {}
        for rank, start, n in zip(*self._blocks, strict=True):
            index.setdefault(rank, []).append((start, n))
        return index

    @property
    def names(self) -> np.ndarray:
        """The distinct kernel names, by code."""
        return _strings(self._names)

    @property
    def pgs(self) -> np.ndarray:
        """The distinct process group names (``""``: none recorded), by code."""
        return _strings(self._pgs)


def _codes(values: pd.Series, known: dict[str, int]) -> np.ndarray:
    """Each value's code in ``known`` (new values added): a rank has ~10 communication kernels or thousands."""
    if len(values) <= 64:
        return np.array([known.setdefault(str(v), len(known)) for v in values.tolist()], dtype=np.int64)
    codes, uniques = pd.factorize(values)
    lut = np.array([known.setdefault(str(u), len(known)) for u in uniques], dtype=np.int64)
    return lut[codes]


def _strings(known: dict[str, int]) -> np.ndarray:
    out = np.empty(len(known), dtype=object)
    out[:] = list(known)
    return out


@dataclass
class _Keyed:
    """The matched kernels of a job (key: an integer in the sort order of the key's text, :attr:`labels`)."""

    frame: pd.DataFrame
    """rank, name and pg (codes), seq, ts, dur, key (code) of each matched kernel, in the table's row order."""
    labels: np.ndarray
    """The key's text by code: ``pg#seq#occurrence`` or ``name#occurrence``."""
    unmatched: int
    use_seq: bool


def _keyed(table: CommTable, ranks: list[int], columns: tuple[str, ...] = CommTable.COLUMNS) -> _Keyed | None:
    """Each kernel's collective key, and the kernels whose key is on enough ranks (see :func:`matched_kernels`):
    their ``columns`` of the table and their key. (The intermediate arrays are dropped as soon as read: the
    matching's peak at 1,024 ranks is these few arrays of every rank's kernels.)"""
    n = len(ranks)
    if n < 2 or (table.sizes(ranks) == 0).any():
        return None
    cols = table.columns(ranks)
    no_pg = np.array([p == "" for p in table.pgs], dtype=bool)
    use_seq = bool((cols["seq"] >= 0).all() and not no_pg[cols["pg"]].any())
    parts = ("rank", "pg", "seq") if use_seq else ("rank", "name")
    occurrence = pd.DataFrame({c: cols[c] for c in parts}).groupby(list(parts), sort=False).cumcount()
    tuples = np.stack([*(cols[c] for c in parts[1:]), occurrence.to_numpy(np.int64)], axis=1)
    del occurrence
    unique, inverse = np.unique(tuples, axis=0, return_inverse=True)
    del tuples
    if use_seq:
        pgs = table.pgs
        text = [f"{pgs[p]}#{s}#{o}" for p, s, o in unique.tolist()]
    else:
        names = table.names
        text = [f"{names[m]}#{o}" for m, o in unique.tolist()]
    del unique
    # codes in the order of the keys' text, so that sorting by key sorts as the text would
    order = sorted(range(len(text)), key=text.__getitem__)
    code_of = np.empty(len(text), dtype=np.int64)
    code_of[order] = np.arange(len(text), dtype=np.int64)
    key = code_of[inverse.reshape(-1)]
    del inverse
    labels = np.empty(len(text), dtype=object)
    labels[:] = [text[i] for i in order]
    counts = np.bincount(key, minlength=len(text))[key]
    keep = counts >= 2 if use_seq else counts == n
    del counts
    values = {c: cols[c][keep] for c in CommTable.COLUMNS if c in columns}
    del cols
    frame = pd.DataFrame(values)
    del values
    frame["key"] = key[keep]
    return _Keyed(frame, labels, int((~keep).sum()), use_seq)


def matched_kernels(ranks: list[int], signatures: list[pd.DataFrame]) -> tuple[pd.DataFrame, int, bool] | None:
    """The communication kernels of every rank that match a kernel of the other ranks, each with its ``key``
    (the same key on every rank for the same collective), the number left unmatched, and whether the key is
    the process group and sequence number (else the order: n-th kernel of a name, present on every rank).
    None with < 2 ranks or a rank without collectives. The what-if job replay
    (:mod:`mlprof.whatif.job`) constrains the same kernels :func:`match_collectives` measures."""
    if len(signatures) < 2 or any(len(s) == 0 for s in signatures):
        return None
    table = CommTable.of(ranks, signatures)
    keyed = _keyed(table, ranks)
    assert keyed is not None
    frame = keyed.frame
    out = pd.DataFrame(
        {
            "name": table.names[frame["name"].to_numpy()],
            "pg": table.pgs[frame["pg"].to_numpy()],
            "seq": frame["seq"].to_numpy(),
            "ts": frame["ts"].to_numpy(),
            "dur": frame["dur"].to_numpy(),
            "rank": frame["rank"].to_numpy(),
            "key": keyed.labels[frame["key"].to_numpy()],
        }
    )
    return out, keyed.unmatched, keyed.use_seq


def match_collectives(ranks: list[int], signatures: list[pd.DataFrame]) -> RankSkew | None:
    """Match the ranks' signatures (see :func:`comm_signature`); None with < 2 ranks or a rank without collectives."""
    if len(signatures) < 2 or any(len(s) == 0 for s in signatures):
        return None
    return match_table(CommTable.of(ranks, signatures), ranks)


def match_table(table: CommTable, ranks: list[int]) -> RankSkew | None:
    """Match the collectives of ``ranks`` in the job's signature table; None with < 2 ranks or a rank without
    collectives."""
    keyed = _keyed(table, ranks, ("rank", "name", "ts", "dur"))  # (the process group and sequence: not read here)
    if keyed is None:
        return None
    matched, unmatched, use_seq = keyed.frame, keyed.unmatched, keyed.use_seq
    if len(matched) == 0:
        return None
    matched["end"] = matched["ts"] + matched["dur"]
    offsets = _clock_offsets(matched, ranks)
    matched["aligned_ts"] = matched["ts"] - matched["rank"].map(offsets).to_numpy(np.int64)
    matched["aligned_end"] = matched["end"] - matched["rank"].map(offsets).to_numpy(np.int64)

    by_key = matched.groupby("key", sort=False)
    first_arrival = by_key["aligned_ts"].transform("min")
    matched["arrival"] = matched["aligned_ts"] - first_arrival  # small numbers: exact in float64 medians
    del first_arrival  # (the intermediate tables are dropped as soon as read: ~1 MB at 1,024 ranks held at once)
    min_dur = by_key["dur"].transform("min")
    matched["wait"] = matched["dur"] - min_dur
    del min_dur
    # The rank that came last has the shortest kernel (ties: the lowest rank). (Only the columns read: a sort
    # of the whole frame copies its 13 columns.)
    order = matched[["key", "dur", "rank", "name"]].sort_values(["key", "dur", "rank"], kind="stable")
    first = order.groupby("key", sort=False)
    last = first.head(1).set_index("key")
    second_dur = first["dur"].nth(1)
    second = pd.Series(second_dur.to_numpy(np.int64), index=order.loc[second_dur.index, "key"].to_numpy())
    del first, order, second_dur
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
    del by_key, last, second
    for column in ("end", "aligned_end", "arrival"):  # read no more
        del matched[column]
    matched["late"] = matched["aligned_ts"] - matched["key"].map(colls["aligned_start_ns"]).to_numpy(np.int64)
    # The last rank waits 0 in its collective, so the collective's total wait is what it caused.
    caused = colls.groupby("last_rank")["wait_ns"].sum()
    critical = colls.groupby("last_rank")["critical_ns"].sum()
    last_counts = colls["last_rank"].value_counts()
    per_rank_groups = matched.groupby("rank")
    sizes = table.sizes(ranks)
    comm = table.columns(ranks, ("dur",))["dur"]
    per_rank = pd.DataFrame({"rank": np.asarray(ranks, dtype=np.int64)})
    idx = per_rank["rank"]
    per_rank["comm_ns"] = np.add.reduceat(comm, np.cumsum(sizes) - sizes)  # every rank has kernels here
    per_rank["wait_ns"] = per_rank_groups["wait"].sum().reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["last_arrivals"] = last_counts.reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["caused_wait_ns"] = caused.reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["critical_ns"] = critical.reindex(idx).fillna(0).astype(np.int64).to_numpy()
    per_rank["clock_offset_ns"] = [int(offsets[r]) for r in ranks]
    per_rank["late_ns"] = per_rank_groups["late"].sum().reindex(idx).fillna(0).astype(np.int64).to_numpy()
    del per_rank_groups, comm

    # the kernels that waited, by rank then start (a stable sort): three arrays of their own, not columns of a
    # copy of the whole frame (which they would keep alive, ~0.45 KB a rank)
    positive = (matched["wait"] > 0).to_numpy()
    rank_of, ts_of, wait_of = (matched[c].to_numpy(np.int64)[positive] for c in ("rank", "ts", "wait"))
    by_rank = np.lexsort((ts_of, rank_of))
    waits = WaitIntervals(ranks, rank_of[by_rank], ts_of[by_rank], wait_of[by_rank])
    # the keys and names as text again (codes above, so the groupings work on integers)
    colls["name"] = pd.array(table.names[colls["name"].to_numpy(np.int64)], dtype=str)
    colls.index = pd.Index(pd.array(keyed.labels[colls.index.to_numpy(np.int64)], dtype=str), name="key")
    return RankSkew(
        ranks=[int(r) for r in ranks],
        matched=len(colls),
        unmatched=unmatched,
        wait_intervals=waits,
        per_rank=per_rank,
        match_key="pg+seq" if use_seq else "order",
        collectives=colls.reset_index(),
    )


class WaitIntervals(Mapping[int, tuple[np.ndarray, np.ndarray]]):
    """:attr:`RankSkew.wait_intervals`: every rank's waits in three job arrays (sorted by rank, then start), each
    rank's pair of arrays made when asked for, not two arrays and a tuple held per rank (~0.3 KB a rank)."""

    def __init__(self, ranks: list[int], rank: np.ndarray, ts: np.ndarray, wait: np.ndarray) -> None:
        self._ranks = np.asarray(ranks, dtype=np.int64)
        self._order = np.argsort(self._ranks, kind="stable")
        self._lo = np.searchsorted(rank, self._ranks, side="left")
        self._hi = np.searchsorted(rank, self._ranks, side="right")
        self._ts, self._wait = ts, wait

    def _index(self, rank: object) -> int | None:
        if not isinstance(rank, (int, np.integer)) or len(self._ranks) == 0:
            return None
        sorted_ranks = self._ranks[self._order]
        i = int(np.searchsorted(sorted_ranks, rank))
        return int(self._order[i]) if i < len(sorted_ranks) and sorted_ranks[i] == rank else None

    def __getitem__(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        i = self._index(rank)
        if i is None:
            raise KeyError(rank)
        lo, hi = self._lo[i], self._hi[i]
        start = self._ts[lo:hi]
        return start, start + self._wait[lo:hi]

    def __contains__(self, rank: object) -> bool:
        return self._index(rank) is not None

    def __iter__(self) -> Iterator[int]:
        return (int(r) for r in self._ranks)

    def __len__(self) -> int:
        return len(self._ranks)


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
