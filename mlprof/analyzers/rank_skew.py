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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from mlprof.trace.model import Trace

SIGNATURE_COLUMNS = ("name", "pg", "seq", "ts", "dur")


class RankSkew(msgspec.Struct):
    """Matched collectives across ranks and the wait each rank spent in them."""

    ranks: Sequence[int]
    """The job's ranks in the order the matching took them: an ``array("q")`` from :func:`match_table` (8 bytes a
    rank, not an int object a rank past 256 held to the end: ~24 KB at 1,024 ranks)."""
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
    collectives: pd.DataFrame = msgspec.field(default_factory=pd.DataFrame)
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
    if len(traces) < 2:
        return None  # (before the signatures: one rank has nothing to match them with)
    ranks = [t.meta.rank if t.meta.rank is not None else i for i, t in enumerate(traces)]
    return match_collectives(ranks, [comm_signature(t) for t in traces])


class CommTable:
    """Every rank's communication signature (:func:`comm_signature`) as one job table, built rank by rank.

    A job's client adds each rank's signature as its task returns (:class:`mlprof.engine.job.Kept`) and
    matches the collectives on this one table: it holds ~18 bytes per kernel (six columns, names and process
    groups as codes into the job's lists of distinct strings; a column is the narrowest of int8, int16, int32 and
    int64 that holds its every value, widened at the first that does not fit: ranks below 32,768 in two bytes, a
    job's few names and process groups in one, the start clocks in eight) instead of a DataFrame per rank (~8 KB of
    pandas objects each, and a list of 1,024 of them concatenated for the matching). Read, a column is int64.
    """

    COLUMNS = ("rank", "name", "pg", "seq", "ts", "dur")

    def __init__(self) -> None:
        self._names: dict[str, int] = {}
        self._pgs: dict[str, int] = {}
        self._rows: list[np.ndarray] = [np.empty(64, dtype=np.int8) for _ in self.COLUMNS]
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
        values = (
            np.full(n, rank, dtype=np.int64),
            _codes(signature["name"], self._names),
            _codes(signature["pg"], self._pgs),
            signature["seq"].to_numpy(np.int64),
            signature["ts"].to_numpy(np.int64),
            signature["dur"].to_numpy(np.int64),
        )
        size = len(self._rows[0])
        if start + n > size:
            size = max(2 * size, start + n)
        for c, value in enumerate(values):
            held = self._rows[c]
            dtype = np.promote_types(held.dtype, _narrowest(int(value.min()), int(value.max())))
            if dtype != held.dtype or len(held) < size:
                grown = np.empty(size, dtype=dtype)
                grown[:start] = held[:start]
                held = self._rows[c] = grown
            held[start : start + n] = value
        self._n = start + n

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (the buffers, grown by doubling)."""
        return sum(int(column.nbytes) for column in self._rows)

    def columns(self, ranks: list[int], names: tuple[str, ...] = COLUMNS) -> dict[str, np.ndarray]:
        """The kernels of ``ranks``, rank after rank in that order (as ``pd.concat`` of their signatures): the
        columns ``names``."""
        index = self.index(ranks)
        return {c: self.column(c, index) for c in self.COLUMNS if c in names}

    def index(self, ranks: list[int]) -> np.ndarray:
        """The rows of the kernels of ``ranks``, rank after rank in that order (each rank's signatures in the order
        added)."""
        _, start, n = self._blocks_of(ranks)
        if len(n) == 0:
            return np.zeros(0, np.int64)
        ends = np.cumsum(n)
        return np.repeat(start - (ends - n), n) + np.arange(int(ends[-1]), dtype=np.int64)

    def column(self, name: str, index: np.ndarray, *, as_held: bool = False) -> np.ndarray:
        """Column ``name`` at rows ``index`` (:meth:`index`): int64, or ``as_held`` as narrow as held (int8 to
        int64: codes and ranks read as labels, not computed with)."""
        values = self._rows[self.COLUMNS.index(name)][: self._n][index]
        return values if as_held else values.astype(np.int64, copy=False)

    def sizes(self, ranks: list[int]) -> np.ndarray:
        """Kernels per rank of ``ranks``."""
        slot, _, n = self._blocks_of(ranks)
        out = np.zeros(len(ranks), dtype=np.int64)
        np.add.at(out, slot, n)
        return out

    def release(self) -> None:
        """Drop the kernels' rows once read (what a job's client does after matching): the names, process groups
        and each signature's size are kept; :meth:`columns` and :meth:`index` are not read again."""
        self._rows = [np.empty(0, dtype=np.int64) for _ in self.COLUMNS]
        self._n = 0

    def _blocks_of(self, ranks: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The place in ``ranks``, first row and rows of each signature added for one of ``ranks``, rank after rank
        in the order of ``ranks`` and in the order added for each (int64 arrays; no per-rank objects)."""
        rank, start, n = (np.array(column, dtype=np.int64) for column in self._blocks)
        wanted = np.asarray(ranks, dtype=np.int64).reshape(-1)
        if len(np.unique(wanted)) < len(wanted):  # a rank asked for twice: its kernels twice
            by_rank: dict[int, list[int]] = {}
            for i, r in enumerate(rank.tolist()):
                by_rank.setdefault(r, []).append(i)
            picks = [(k, i) for k, r in enumerate(wanted.tolist()) for i in by_rank.get(r, [])]
            at = np.array([i for _, i in picks], dtype=np.int64)
            return np.array([k for k, _ in picks], dtype=np.int64), start[at], n[at]
        if len(wanted) == 0 or len(rank) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        by_value = np.argsort(wanted, kind="stable")
        place = np.minimum(np.searchsorted(wanted, rank, sorter=by_value), len(wanted) - 1)
        slot = by_value[place]
        found = np.flatnonzero(wanted[slot] == rank)
        found = found[np.argsort(slot[found], kind="stable")]
        return slot[found], start[found], n[found]

    @property
    def names(self) -> np.ndarray:
        """The distinct kernel names, by code."""
        return _strings(self._names)

    @property
    def pgs(self) -> np.ndarray:
        """The distinct process group names (``""``: none recorded), by code."""
        return _strings(self._pgs)


_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_NARROW = tuple((np.dtype(t), int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in (np.int8, np.int16, np.int32))


def _narrowest(lo: int, hi: int) -> np.dtype[Any]:
    """The narrowest of int8, int16, int32 and int64 that holds every value from ``lo`` to ``hi``."""
    for dtype, least, most in _NARROW:
        if least <= lo and hi <= most:
            return dtype
    return np.dtype(np.int64)


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


class _Keyed(msgspec.Struct):
    """The matched kernels of a job (key: an integer in the sort order of the key's text, :attr:`labels`)."""

    columns: dict[str, np.ndarray]
    """rank, name and pg (codes), seq, ts, dur, key (code) of each matched kernel, in the table's row order."""
    labels: np.ndarray
    """The key's text by code: ``pg#seq#occurrence`` or ``name#occurrence``."""
    unmatched: int
    use_seq: bool


def _index_type(n: int) -> type[np.signedinteger]:
    """int32 for positions or codes below ``n`` where they fit (the matching's arrays of every kernel at half the
    bytes), else int64."""
    return np.int32 if n <= _I32_MAX else np.int64


def _starts(ordered: np.ndarray) -> np.ndarray:
    """Where each run of equal values of ``ordered`` starts."""
    new = np.ones(len(ordered), dtype=bool)
    new[1:] = ordered[1:] != ordered[:-1]
    return np.flatnonzero(new)


def _runs(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A stable sort of the rows by ``keys`` (the first one the primary key) and the start of each run of rows
    with equal keys in that order (positions into it): a group-by of integer columns in numpy."""
    order = np.lexsort(keys[::-1])
    new = np.zeros(len(order), dtype=bool)
    new[:1] = True
    for k in keys:
        ordered = k[order]
        new[1:] |= ordered[1:] != ordered[:-1]
    return order, np.flatnonzero(new)


def _run_of_rows(order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each row's run (see :func:`_runs`), by row."""
    run = np.empty(len(order), dtype=np.int64)
    run[order] = np.repeat(np.arange(len(starts), dtype=np.int64), np.diff(starts, append=len(order)))
    return run


def _medians(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The median of each run of ``values`` (sorted within each run, runs starting at ``starts``) as float64:
    the middle value, or the mean of the two middle ones (what pandas' group-by median gives)."""
    sizes = np.diff(starts, append=len(values))
    lower, upper = values[starts + (sizes - 1) // 2], values[starts + sizes // 2]
    return (lower.astype(np.float64) + upper.astype(np.float64)) / 2


def _run_medians(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The median of each run of ``values`` (runs of ``sizes`` at ``starts``, in any order within a run) as float64
    (:func:`_medians`). Values >= 0: one int64 a kernel, ``run * span + value``, sorted in place, read back ``%
    span`` (a lexsort by run and value held its order, the runs and the sorted copy: 20 bytes a kernel more);
    a lexsort when the runs times the values' span passes int64."""
    span = int(values.max()) + 1 if len(values) else 1
    if len(starts) * span < 2**63 and not (values < 0).any():
        key = np.repeat(np.arange(len(starts), dtype=np.int64) * span, sizes)
        key += values
        key.sort()
        lower, upper = key[starts + (sizes - 1) // 2] % span, key[starts + sizes // 2] % span
        return (lower.astype(np.float64) + upper.astype(np.float64)) / 2
    run = np.repeat(np.arange(len(starts), dtype=_index_type(len(starts))), sizes)
    by_value = np.lexsort((values, run))
    del run
    return _medians(values[by_value], starts)


def _keyed(
    table: CommTable, ranks: list[int], columns: tuple[str, ...] = CommTable.COLUMNS, as_held: tuple[str, ...] = ()
) -> _Keyed | None:
    """Each kernel's collective key, and the kernels whose key is on enough ranks (see :func:`matched_kernels`):
    their ``columns`` of the table and their key. (Integer arrays sorted and cut into runs, no pandas group-by:
    the matching's peak at 1,024 ranks is a few arrays of every rank's kernels.) ``as_held``: columns read as
    held (as narrow as their values, :meth:`CommTable.column`); the key is int32 up to 2**31 keys."""
    n = len(ranks)
    if n < 2 or (table.sizes(ranks) == 0).any():
        return None
    index = table.index(ranks)  # (each column read from the table when needed, one or two at once)
    use_seq = bool((table.column("seq", index) >= 0).all())
    if use_seq:
        no_pg = np.array([p == "" for p in table.pgs], dtype=bool)
        use_seq = not no_pg[table.column("pg", index)].any()
    # (as held: int8 to int64, grouped and read back as the same numbers)
    parts = [table.column(c, index, as_held=True) for c in (("rank", "pg", "seq") if use_seq else ("rank", "name"))]
    # the n-th kernel of its (rank, name) or (rank, pg, seq), in the table's order
    order, starts = _runs(parts)
    nth = np.arange(len(order), dtype=np.int64)
    nth -= np.repeat(starts, np.diff(starts, append=len(order)))
    occurrence = np.empty(len(order), dtype=np.int64)
    occurrence[order] = nth
    del nth, order, starts
    parts = [*parts[1:], occurrence]
    del occurrence
    order, starts = _runs(parts)
    distinct = _run_of_rows(order, starts)
    unique = [p[order[starts]].tolist() for p in parts]
    del order, starts, parts
    if use_seq:
        pgs = table.pgs
        text = [f"{pgs[p]}#{s}#{o}" for p, s, o in zip(*unique, strict=True)]
    else:
        names = table.names
        text = [f"{names[m]}#{o}" for m, o in zip(*unique, strict=True)]
    del unique
    # codes in the order of the keys' text, so that sorting by key sorts as the text would
    by_text = sorted(range(len(text)), key=text.__getitem__)
    code_of = np.empty(len(text), dtype=_index_type(len(text)))
    code_of[by_text] = np.arange(len(text), dtype=code_of.dtype)
    key = code_of[distinct]
    del distinct
    labels = np.empty(len(text), dtype=object)
    labels[:] = [text[i] for i in by_text]
    counts = np.bincount(key, minlength=len(text))[key]
    keep = counts >= 2 if use_seq else counts == n
    del counts
    unmatched = int(len(keep) - np.count_nonzero(keep))
    index = index[keep]
    values = {c: table.column(c, index, as_held=c in as_held) for c in CommTable.COLUMNS if c in columns}
    del index
    values["key"] = key[keep]
    return _Keyed(values, labels, unmatched, use_seq)


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
    cols = keyed.columns
    out = pd.DataFrame(
        {
            "name": table.names[cols["name"]],
            "pg": table.pgs[cols["pg"]],
            "seq": cols["seq"],
            "ts": cols["ts"],
            "dur": cols["dur"],
            "rank": cols["rank"],
            "key": keyed.labels[cols["key"]],
        }
    )
    return out, keyed.unmatched, keyed.use_seq


def match_collectives(ranks: list[int], signatures: list[pd.DataFrame]) -> RankSkew | None:
    """Match the ranks' signatures (see :func:`comm_signature`); None with < 2 ranks or a rank without collectives."""
    if len(signatures) < 2 or any(len(s) == 0 for s in signatures):
        return None
    return match_table(CommTable.of(ranks, signatures), ranks)


def match_table(table: CommTable, ranks: list[int], *, release: bool = False) -> RankSkew | None:
    """Match the collectives of ``ranks`` in the job's signature table; None with < 2 ranks or a rank without
    collectives. ``release``: the table's rows are dropped (:meth:`CommTable.release`) as soon as read, before
    the matching's arrays are made (a job's client: 48 bytes a kernel, ~0.4 MB at 1,024 ranks).

    In numpy on the matched kernels' columns: put once in the order of their collective (key), then duration,
    then rank, so that each collective is a run of the columns (``reduceat`` for its minimum, maximum and sum,
    its medians from the sorted run, a collective's value per kernel by ``np.repeat``), each rank's sums by
    ``np.add.at``; a handful of arrays of the job's kernels at once, none an index into the others (a pandas
    group-by of a 13-column frame held ~230 bytes a kernel)."""
    # (the process group and sequence: not read here; ranks and names are labels: read as narrow as held)
    keyed = _keyed(table, ranks, ("rank", "name", "ts", "dur"), as_held=("rank", "name"))
    if keyed is None:
        return None
    unmatched, use_seq, labels, columns = keyed.unmatched, keyed.use_seq, keyed.labels, keyed.columns
    del keyed  # (each array dropped once read: the peak is the few arrays of every kernel held at once)
    if len(columns["key"]) == 0:
        return None
    sizes = table.sizes(ranks)
    comm = table.columns(ranks, ("dur",))["dur"]
    comm_ns = np.add.reduceat(comm, np.cumsum(sizes) - sizes)  # every rank has kernels here
    del comm, sizes
    if release:
        table.release()
    # The rank that came last has the shortest kernel (ties: the lowest rank): each collective's run, sorted by
    # duration then rank, starts with it. ``order`` (each kernel's place in the table's order) is kept for the
    # order of the waits below; each column is put in this order as the one before it is dropped.
    order = np.lexsort((columns["rank"], columns["dur"], columns["key"]))
    key, rank, name, dur, ts = (columns.pop(c)[order] for c in ("key", "rank", "name", "dur", "ts"))
    order = order.astype(_index_type(len(order)))
    starts = _starts(key)
    sizes = np.diff(starts, append=len(key))
    keys, last_name, last_dur = key[starts], name[starts], dur[starts]
    last_rank = rank[starts].astype(np.int64)
    del name, key
    critical = np.where(sizes > 1, dur[np.minimum(starts + 1, len(dur) - 1)] - last_dur, 0)
    median_dur = _medians(dur, starts)
    aligned_end = ts + dur  # the end, aligned in place below
    wait = dur
    wait -= np.repeat(last_dur, sizes)
    del dur
    wait_sum = np.add.reduceat(wait, starts)

    rank_array = np.asarray(ranks, dtype=np.int64)
    by_value = np.argsort(rank_array, kind="stable")
    # each kernel's rank's place in ranks
    slot = by_value.astype(_index_type(len(ranks)))[np.searchsorted(rank_array, rank, sorter=by_value)]
    offsets = _clock_offsets(slot, starts, aligned_end, ranks)
    offset_of = offsets[slot]
    aligned_end -= offset_of
    end_spread = np.maximum.reduceat(aligned_end, starts) - np.minimum.reduceat(aligned_end, starts)
    del aligned_end
    aligned_ts = ts - offset_of
    del offset_of
    min_ts = np.minimum.reduceat(aligned_ts, starts)
    arrival = aligned_ts - np.repeat(min_ts, sizes)
    spread = np.maximum.reduceat(arrival, starts)
    median_arrival = _run_medians(arrival, starts, sizes)
    del arrival
    aligned_start = min_ts + np.round(median_arrival).astype(np.int64)
    late = aligned_ts
    late -= np.repeat(aligned_start, sizes)
    del aligned_ts
    wait_ns, late_ns = _sums(slot, wait, len(ranks)), _sums(slot, late, len(ranks))
    del late, slot

    # the kernels that waited, by rank then start, then their order in the table (a stable sort of the table's
    # order): three arrays of their own, made before the tables below (the kernels' arrays dropped first)
    waited = np.flatnonzero(wait > 0)
    waited = waited[np.lexsort((order[waited], ts[waited], rank[waited]))]
    del order
    waited_rank, waited_ts, waited_wait = rank[waited], ts[waited], wait[waited]
    del waited, rank, ts, wait  # (before the waits' own arrays are made)
    waits = WaitIntervals(ranks, waited_rank, waited_ts, waited_wait)
    del waited_rank, waited_ts, waited_wait
    colls = pd.DataFrame(
        {
            "key": pd.array(labels[keys], dtype=str),
            "name": pd.array(table.names[last_name], dtype=str),
            "ranks": sizes.astype(np.int64),
            "last_rank": last_rank,
            "spread_ns": spread,
            "end_spread_ns": end_spread,
            "median_dur_ns": np.round(median_dur).astype(np.int64),
            "wait_ns": wait_sum,
            "critical_ns": critical.astype(np.int64),
            "aligned_start_ns": aligned_start,
        }
    )
    # The last rank waits 0 in its collective, so the collective's total wait is what it caused.
    last_slot = by_value[np.searchsorted(rank_array, last_rank, sorter=by_value)]
    per_rank = pd.DataFrame({"rank": rank_array})
    per_rank["comm_ns"] = comm_ns
    per_rank["wait_ns"] = wait_ns
    per_rank["last_arrivals"] = np.bincount(last_slot, minlength=len(ranks)).astype(np.int64)
    per_rank["caused_wait_ns"] = _sums(last_slot, wait_sum, len(ranks))
    per_rank["critical_ns"] = _sums(last_slot, critical, len(ranks))
    per_rank["clock_offset_ns"] = offsets
    per_rank["late_ns"] = late_ns
    return RankSkew(
        ranks=array("q", ranks),
        matched=len(colls),
        unmatched=unmatched,
        wait_intervals=waits,
        per_rank=per_rank,
        match_key="pg+seq" if use_seq else "order",
        collectives=colls,
    )


def _sums(slot: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``values`` summed by ``slot`` (0 <= slot < n), int64."""
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, slot, values.astype(np.int64, copy=False))
    return out


class WaitIntervals(Mapping[int, tuple[np.ndarray, np.ndarray]]):
    """:attr:`RankSkew.wait_intervals`: every rank's waits in three job arrays (sorted by rank, then start), each
    rank's pair of arrays made when asked for, not two arrays and a tuple held per rank (~0.3 KB a rank). The
    waits are held int32 while every one fits (ns: up to ~2.1 s), read back int64. Once read (a job's client reads
    each rank's waits once, when it splits the rank's communication), the arrays can be held in the process's
    spill file (:meth:`spill`) until asked for again."""

    _ARRAYS = ("_ranks", "_order", "_lo", "_hi", "_ts", "_wait")

    def __init__(self, ranks: list[int], rank: np.ndarray, ts: np.ndarray, wait: np.ndarray) -> None:
        self._ranks = np.asarray(ranks, dtype=np.int64)
        self._order = np.argsort(self._ranks, kind="stable")
        self._lo = np.searchsorted(rank, self._ranks, side="left")
        self._hi = np.searchsorted(rank, self._ranks, side="right")
        fits = len(wait) == 0 or (int(wait.min()) >= _I32_MIN and int(wait.max()) <= _I32_MAX)
        self._ts, self._wait = ts, wait.astype(np.int32) if fits else wait  # (a wait is read back as int64: below)
        self._spilled: Any = None
        """The arrays' handle in the spill file (:class:`mlprof.results.spill.Spilled`) while held there."""

    def spill(self, put: Callable[[list[np.ndarray]], Any]) -> None:
        """Hold the arrays where ``put`` keeps them (a job's client passes :func:`mlprof.results.spill.spill`: the
        process's spill file), read back whole on first use through the handle's ``load()``: what a job's client
        does once every rank's communication is split (the waits of 1,024 ranks of 8 collectives are ~0.1 MB,
        otherwise held through the job's rules and report, which do not read them). The caller passes the store
        (the results layer sits above the analyzers)."""
        if self._spilled is None:
            self._spilled = put([self.__dict__.pop(name) for name in self._ARRAYS])

    def __getattr__(self, name: str) -> np.ndarray:
        # only reached for an array held in the spill file: every array is read back and held again
        spilled = self.__dict__.get("_spilled")
        if name not in self._ARRAYS or spilled is None:
            raise AttributeError(name)
        self.__dict__.update(zip(self._ARRAYS, spilled.load(), strict=True))
        self._spilled = None
        array: np.ndarray = self.__dict__[name]
        return array

    def __getstate__(self) -> dict[str, Any]:
        # pickled or copied with its arrays (a spill file's handle is this process's)
        return {**{name: getattr(self, name) for name in self._ARRAYS}, "_spilled": None}

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
        start = self._ts[lo:hi].copy()  # (a view would hold every rank's starts as long as it is held)
        return start, start + self._wait[lo:hi].astype(np.int64)

    def __contains__(self, rank: object) -> bool:
        return self._index(rank) is not None

    def __iter__(self) -> Iterator[int]:
        return (int(r) for r in self._ranks)

    def __len__(self) -> int:
        return len(self._ranks)


def _clock_offsets(slot: np.ndarray, starts: np.ndarray, end: np.ndarray, ranks: list[int]) -> np.ndarray:
    """Each rank's clock minus the first rank's: the median difference of the same collectives' end times
    (``slot``: each kernel's rank's place in ``ranks``; the kernels in order of their collective, each
    collective's run starting at ``starts``), rounded, int64 by place in ``ranks`` (an array: a dict of an int
    per rank held ~0.1 KB a rank beside the matching's arrays).

    A rank that shares no matched collective with the first rank keeps offset 0 (with sequence
    matching in disjoint process groups there is no common event to align on). The differences are taken exactly in
    int64 (epoch-ns ends, ~1.7e18, are past float64's exact integers: converted first, as the pandas version did
    when a collective left the first rank out, they were off by up to a few hundred ns), then their medians in
    float64 (small numbers: exact; the conversion keeps the order, so the middle of the sorted integers is the
    middle of the sorted floats).

    The matching's arrays of every kernel are alive here: this step held a sort order and sorted copies of every
    kernel's rank and difference beside them (~34 bytes a kernel). Now each kernel is one int64, ``slot * span
    + difference - lowest`` (a kernel of a collective without the first rank in a last group), sorted in place,
    and each rank's median is read at the middle of its run (~24 bytes a kernel; a lexsort only when the
    ranks times the differences' span passes int64).
    """
    n, size = len(ranks), len(slot)
    sizes = np.diff(starts, append=size)
    ref_at = np.flatnonzero(slot == 0)  # the first rank's kernels: one a collective at most
    ref_end = np.zeros(len(starts), dtype=np.int64)
    on_ref = np.zeros(len(starts), dtype=bool)
    of_ref = np.searchsorted(starts, ref_at, side="right") - 1
    ref_end[of_ref], on_ref[of_ref] = end[ref_at], True
    diff = np.repeat(ref_end, sizes)
    np.subtract(end, diff, out=diff)
    ok = np.repeat(on_ref, sizes)
    del ref_end, on_ref, sizes
    if not ok.any():
        return np.zeros(n, dtype=np.int64)
    lo = int(np.min(diff, where=ok, initial=np.iinfo(np.int64).max))
    span = int(np.max(diff, where=ok, initial=np.iinfo(np.int64).min)) - lo + 1
    if (n + 1) * span < 2**63:
        diff -= lo
        np.multiply(diff, ok, out=diff)
        group = slot.astype(np.int64)
        np.putmask(group, ~ok, n)
        del ok
        group *= span
        diff += group
        del group
        diff.sort()
        # each rank's run in the sorted numbers (a search of n + 1 bounds: no count over every kernel)
        found_at, at, count = _nonempty(np.searchsorted(diff, np.arange(n + 1, dtype=np.int64) * span))
        lower = diff[at + (count - 1) // 2] % span + lo
        upper = diff[at + count // 2] % span + lo
    else:  # differences too far apart to share an int64 with the rank: sort the pairs
        of = slot[ok]
        diff = diff[ok]
        del ok
        order = np.lexsort((diff, of))
        counts = np.bincount(of, minlength=n)
        del of
        diff = diff[order]
        del order
        found_at, at, count = _nonempty(np.concatenate([[0], np.cumsum(counts)]))
        lower, upper = diff[at + (count - 1) // 2], diff[at + count // 2]
    del diff
    med = (lower.astype(np.float64) + upper.astype(np.float64)) / 2
    rounded = np.rint(med).astype(np.int64)  # (half to even, as Python's round)
    del med
    rank_array = np.asarray(ranks, dtype=np.int64).reshape(-1)
    if len(np.unique(rank_array)) < n:  # a rank twice: each place takes the rank's last found offset
        found = dict(zip(rank_array[found_at].tolist(), rounded.tolist(), strict=True))
        return np.array([found.get(r, 0) for r in rank_array.tolist()], dtype=np.int64)
    offsets = np.zeros(n, dtype=np.int64)
    offsets[found_at] = rounded
    return offsets


def _nonempty(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs ``bounds[i]:bounds[i + 1]`` that are not empty: their ``i``, start and size."""
    sizes = np.diff(bounds)
    at = np.flatnonzero(sizes)
    return at, bounds[:-1][at], sizes[at]
