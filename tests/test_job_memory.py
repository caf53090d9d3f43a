"""What a job's client holds per rank: name views folded into job totals, replay graphs dropped when unused.

Truth for the totals is the pandas formula the report used before (every rank's view concatenated in
rank order, grouped by name, the worst rank's row by a stable sort), computed here on the real 8-rank
DLRM job's views; the sizes are measured (bytes held, pickled sizes), not assumed.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlprof.analyzers.name_totals import KERNEL_FIRSTS, KERNEL_SUMS, OP_FIRSTS, OP_SUMS, job_name_totals
from mlprof.engine.job import Kept
from mlprof.engine.rank_task import RankPartial, TaskOptions, reduce_rank
from mlprof.results import ReducedRank
from mlprof.results import spill as spill_module
from mlprof.results.spill import spill

from conftest import external, load_script

DLRM = "facebookresearch__param/dlrm_kineto"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dlrm_partials() -> list[RankPartial]:
    files = sorted(external(DLRM).glob("*.json"))
    return [reduce_rank(str(f), TaskOptions()) for f in files]


def _concatenated(frames: list[tuple[int, pd.DataFrame]], sums: list[str], firsts: list[str], n: int) -> pd.DataFrame:
    """The report's table as it was computed from every rank's view at once (the truth)."""
    every = pd.concat([f.assign(rank=r) for r, f in sorted(frames, key=lambda x: x[0])], ignore_index=True)
    table = every.groupby("name", sort=False)[sums].sum() / n
    worst = every.sort_values("total_ns", ascending=False, kind="stable").drop_duplicates("name").set_index("name")
    table = table.join(
        worst[[*firsts, "rank", "total_ns"]].rename(columns={"rank": "worst_rank", "total_ns": "worst_total_ns"})
    )
    return table.sort_values("total_ns", ascending=False, kind="stable").reset_index()


def _rows(table: pd.DataFrame) -> list[list[Any]]:
    """Rows as plain values, a missing value (None or NaN) as None."""
    out = []
    for row in table.itertuples(index=False):
        out.append([None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in row])
    return out


def test_name_totals_equal_the_concatenated_views_whatever_order_the_ranks_arrive(
    dlrm_partials: list[RankPartial],
) -> None:
    views = [(p.analysis.rank, p.analysis.name_views) for p in dlrm_partials]
    assert all(v is not None for _, v in views)
    n = len(views)
    for seed in (0, 1):
        arrival = list(views)
        random.Random(seed).shuffle(arrival)
        kernels, ops = job_name_totals()
        for rank, (k, o) in arrival:  # type: ignore[misc]
            kernels.add(rank, k)
            ops.add(rank, o)
        want_k = _concatenated([(r, v[0]) for r, v in views], KERNEL_SUMS, KERNEL_FIRSTS, n)  # type: ignore[index]
        want_o = _concatenated([(r, v[1]) for r, v in views], OP_SUMS, OP_FIRSTS, n)  # type: ignore[index]
        got_k, got_o = kernels.table(n), ops.table(n)
        assert list(got_k.columns) == list(want_k.columns) and list(got_o.columns) == list(want_o.columns)
        assert _rows(got_k) == _rows(want_k)
        assert _rows(got_o) == _rows(want_o)
    # the real job: 8 ranks, every kernel name on most of them; the worst rank differs by name
    assert len(got_k) > 50 and len(set(got_k["worst_rank"])) > 1


def test_name_totals_hold_as_many_bytes_for_64_ranks_as_for_8(dlrm_partials: list[RankPartial]) -> None:
    """The same 8 views folded in once (ranks 0-7) and eight times over (ranks 0-63): the totals are the
    same size and give the same means (each name's sum is eight times larger over eight times the ranks)."""
    small, large = job_name_totals(), job_name_totals()
    for p in dlrm_partials:
        assert p.analysis.name_views is not None
        small[0].add(p.analysis.rank, p.analysis.name_views[0])
        for copy in range(8):
            large[0].add(copy * 8 + p.analysis.rank, p.analysis.name_views[0])
    assert len(small[0]) == len(large[0]) > 50
    assert small[0].nbytes() == large[0].nbytes()
    a, b = small[0].table(8), large[0].table(64)
    assert np.array_equal(a["total_ns"].to_numpy(), b["total_ns"].to_numpy())
    assert a["name"].tolist() == b["name"].tolist()


def _make_rank_job() -> Any:
    return load_script(ROOT / "benchmarks" / "make_rank_job.py")


def test_client_drops_views_and_graphs_of_a_job_it_will_not_replay(tmp_path: Path) -> None:
    """The generated job (DLRM rank 0 with every collective perturbed) replays 13% off its own recording on
    each rank, so the job is not replayed: each rank task already returns its replay without its graph (the
    same replay rows and error; pickled, the result is less than half of one with the graph), and the client
    keeps no name view, less than half of what a rank task returns, and its reduced tables compressed; the
    report's per-rank replay rows still come out of what is kept."""
    import dataclasses

    from mlprof.engine.rank_task import windows
    from mlprof.trace.loader import load_trace
    from mlprof.whatif import replay_rank

    template = external(f"{DLRM}/worker0_step_12.1694128201545.pt.trace.json")
    _make_rank_job().make_job(tmp_path, 3, 1, template=template, seed=1)
    files = sorted(tmp_path.glob("rank-*.json"))
    partials = [reduce_rank(str(f), TaskOptions()) for f in files]
    # the truth: the rank's replay made again from its trace, its graph kept
    trace = load_trace(files[0])
    ra = partials[0].analysis
    whole = replay_rank(trace, ra.rank, *windows(ra), ra.steps)
    assert not whole.ok and whole.graph.n_gpu > 0
    assert partials[0].replay.to_dict() == whole.to_dict()
    assert partials[0].replay.error_pct == whole.error_pct
    with_graph = dataclasses.replace(partials[0], replay=whole)
    assert len(pickle.dumps(partials[0])) < 0.5 * len(pickle.dumps(with_graph))
    for p in partials:
        with pytest.raises(RuntimeError, match="released"):
            p.replay.graph.g_dur  # noqa: B018
    rows = [p.replay.to_dict() for p in partials]
    tables = [(p.analysis.trace.gpu, p.analysis.trace.collectives, p.analysis.trace.memory) for p in partials]
    comm = [(p.signature, p.exposed_comm) for p in partials]
    full = [len(pickle.dumps(p)) for p in partials]
    assert not partials[0].replay.ok
    kept = Kept()
    for p in partials:
        kept.keep(p)
    after = [len(pickle.dumps(p)) for p in partials]
    for p, row, before_bytes, after_bytes in zip(partials, rows, full, after, strict=True):
        assert p.analysis.name_views is None
        with pytest.raises(RuntimeError, match="released"):
            p.replay.graph.g_dur  # noqa: B018
        assert p.replay.to_dict() == row
        assert after_bytes < 0.5 * before_bytes
    # the reduced tables are held compressed and read back as they were
    for p, (gpu, collectives, memory) in zip(partials, tables, strict=True):
        assert isinstance(p.analysis.trace, ReducedRank) and p.analysis.trace._tables is None
        assert len(gpu) > 0
        pd.testing.assert_frame_equal(p.analysis.trace.gpu, gpu)
        pd.testing.assert_frame_equal(p.analysis.trace.collectives, collectives)
        pd.testing.assert_frame_equal(p.analysis.trace.memory, memory)
    for p, (signature, exposed) in zip(partials, comm, strict=True):
        assert len(signature) > 0 and len(exposed[0]) > 0
        got_signature, got_exposed = p.comm_signature(), p.exposed()
        pd.testing.assert_frame_equal(got_signature, signature)
        assert all(np.array_equal(a, b) for a, b in zip(got_exposed, exposed, strict=True))
        with pytest.raises(RuntimeError, match="packed"):
            p.signature.columns  # noqa: B018
    assert len(kept.kernels) > 50 and len(kept.ops) > 50


def test_client_keeps_the_graphs_of_a_job_it_replays(dlrm_partials: list[RankPartial]) -> None:
    """The real DLRM job replays within 5% on every rank: its graphs stay for the job replay."""
    kept = Kept()
    for p in [pickle.loads(pickle.dumps(p)) for p in dlrm_partials]:
        assert p.replay.ok
        kept.keep(p)
        assert p.replay.graph.n_gpu > 0


def test_kept_tables_live_in_an_anonymous_spill_file_not_in_memory(dlrm_partials: list[RankPartial]) -> None:
    """What the client keeps packed is written to one unnamed temporary file (nothing named appears in the
    temporary directory), holds no bytes in memory, and reads back equal, also after pickling the partial."""
    partials = [pickle.loads(pickle.dumps(p)) for p in dlrm_partials[:2]]
    truth = [(p.analysis.trace.gpu, p.analysis.trace.steps, p.signature, p.exposed_comm) for p in partials]
    tmp = Path(tempfile.gettempdir())
    named_before = set(tmp.iterdir())
    kept = Kept()
    for p in partials:
        kept.keep(p)
    assert set(tmp.iterdir()) == named_before  # anonymous: deleted by the OS, nothing left on Ctrl-C
    for p, (gpu, steps, signature, exposed) in zip(partials, truth, strict=True):
        spilled = [*p.analysis.trace._packed, *p.packed]
        assert all(not s.in_memory for s in spilled)
        # the file holds the compressed pickle of the signature (the fifth value kept)
        assert spilled[4].raw() == zlib.compress(pickle.dumps(signature, protocol=pickle.HIGHEST_PROTOCOL), 1)
        pd.testing.assert_frame_equal(p.analysis.trace.gpu, gpu)
        pd.testing.assert_frame_equal(p.analysis.trace.steps, steps)
        again = pickle.loads(pickle.dumps(p))  # carries the bytes, spilled again in this process
        pd.testing.assert_frame_equal(again.comm_signature(), signature)
        assert all(np.array_equal(a, b) for a, b in zip(again.exposed(), exposed, strict=True))


def test_spill_file_read_in_a_forked_child_and_kept_in_memory_without_a_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forked worker reads values spilled before the fork and spills into a file of its own; where no
    temporary file can be made (the temporary directory does not exist) the bytes stay in memory, equal."""
    global _SPILLED_BEFORE_FORK
    value = {"a": np.arange(1000, dtype=np.int64), "b": "x" * 500}
    _SPILLED_BEFORE_FORK = before = spill(value)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply(_read_inherited_and_spill_in_child)
    assert np.array_equal(got["a"], value["a"]) and got["b"] == value["b"]
    assert np.array_equal(before.load()["a"], value["a"])  # the parent's file was not written over by the child
    store = spill_module._Store()
    monkeypatch.setattr(spill_module, "_STORE", store)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    kept = spill(value)
    assert kept.in_memory and store._failed
    assert np.array_equal(kept.load()["a"], value["a"])


_SPILLED_BEFORE_FORK: Any = None


def test_spilled_runs_hold_many_values_in_one_number_at_consecutive_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's client holds each kept rank's spilled tables as runs (:func:`spill_run`): 4 values from 4 threads
    at once each read back equal to its own value, each value's bytes are its zlib level-1 pickle (computed here),
    a run pickles with its bytes (unpickled, new rows, equal values), and 5,000 runs of four hold under 200 bytes a
    run in memory (tracemalloc: ~185; four handle objects and their tuple were ~460 before runs); where no
    temporary file can be made the bytes stay in memory, equal."""
    import threading
    import tracemalloc

    from mlprof.results.spill import SpilledRun, spill_run

    values = {t: [{"t": t, "k": k, "a": np.arange(50 * k + t, dtype=np.int64)} for k in range(4)] for t in range(4)}
    runs: dict[int, list[SpilledRun]] = {t: [] for t in values}

    def spill_many(t: int) -> None:
        for _ in range(50):
            runs[t].append(spill_run(values[t]))

    threads = [threading.Thread(target=spill_many, args=(t,)) for t in values]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t, held in runs.items():
        for run in held:
            assert len(run) == 4 and [int(s) for s in run] == list(range(int(run[0]), int(run[0]) + 4))
            for k, s in enumerate(run):
                want = zlib.compress(pickle.dumps(values[t][k], protocol=pickle.HIGHEST_PROTOCOL), 1)
                assert s.raw() == want and s.nbytes == len(want) and not s.in_memory
    again = pickle.loads(pickle.dumps(runs[2][7]))
    assert isinstance(again, SpilledRun) and int(again[0]) > int(runs[3][-1][0])
    for k, s in enumerate(again):
        got = s.load()
        assert got["k"] == k and np.array_equal(got["a"], values[2][k]["a"])
    with pytest.raises(IndexError):
        again[4]

    small = [1, 2, 3, 4]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    many = [spill_run(small) for _ in range(5000)]
    per_run = (tracemalloc.get_traced_memory()[0] - before) / len(many)
    tracemalloc.stop()
    assert per_run < 200  # the handle (48), four rows of three int64 (96, the arrays grow by ~1/16), the list's slot
    store = spill_module._Store()
    monkeypatch.setattr(spill_module, "_STORE", store)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    kept = spill_run(values[1])
    assert all(s.in_memory for s in kept) and store._failed
    assert [np.array_equal(s.load()["a"], v["a"]) for s, v in zip(kept, values[1], strict=True)] == [True] * 4


def test_spill_table_rows_hold_3_bytes_and_read_back_every_size_and_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spill table is ~2.5 bytes of offset a row (a uint16 distance from its block of 16 rows' first offset;
    the file as runs of rows, the size from the next row's offset): 20,000 values of sizes 0 to 3,999 bytes (raw
    rows) each read back equal from a fresh store, at most 3 bytes a row traced while they are spilled (the arrays
    grow by ~1/16; uint32 offsets were ~4.3, a file index and a size a row more ~10.6), no block held wide; then
    rows in a second file (a forked child's: the first file's last row sized by where that file ended) and in
    memory (writing failed) read back equal with their sizes, and offsets 64 KB or more past their block's first
    (not written: the table's own column) read back as appended, that block held as int64."""
    import tracemalloc

    from mlprof.results.spill import RawRows, _Offsets

    store = spill_module._Store()
    monkeypatch.setattr(spill_module, "_STORE", store)
    datas = [bytes([k % 251]) * (k % 4000) for k in range(20000)]
    spill(0)  # the file made before tracing
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rows = RawRows()
    rows_before = tracemalloc.get_traced_memory()[0]
    for data in datas:
        rows.append(data)
    table = tracemalloc.get_traced_memory()[0] - rows_before - sys.getsizeof(rows._items.values)
    tracemalloc.stop()
    assert before <= rows_before
    assert table / len(datas) <= 3 and not store.offsets.wide, table / len(datas)  # measured 2.60
    assert list(rows) == datas and [store.size(int(r)) for r in rows._items] == [len(d) for d in datas]
    assert store.offsets.near.itemsize == 2 and len(store.where.firsts) == 1
    monkeypatch.setattr(store, "_pid", -2)  # as in a forked child: the next value goes to a file of its own
    second = [b"x" * k for k in (5, 0, 7)]
    for data in second:
        rows.append(data)
    assert len(store.files) == 2 and list(store.where.files) == [0, 1]

    def fail(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "_write", fail)
    third = [b"", b"yz", b"w" * 300]
    for data in third:
        rows.append(data)
    assert list(store.where.files) == [0, 1, -1]
    every = datas + second + third
    assert list(rows) == every and [store.size(int(r)) for r in rows._items] == [len(d) for d in every]
    assert [store.where[int(r)] for r in rows._items] == [0] * 20000 + [1] * 3 + [-1] * 3
    offsets = _Offsets()
    for offset in (0, 2**16 - 1, 3):
        offsets.append(offset)
    assert not offsets.wide
    for offset in (2**32, 5 * 2**40, 9):
        offsets.append(offset)
    assert [offsets[k] for k in range(6)] == [0, 2**16 - 1, 3, 2**32, 5 * 2**40, 9] and len(offsets) == 6
    assert list(offsets.wide) == [0]


def test_spilled_value_reads_back_whole_while_another_thread_puts() -> None:
    """A row's size is where the next row starts or the file's end: a put advances the end before its row is in
    the table, so a read from another thread in between (the window held open here: the put stopped just before
    its row is added) took the new value's bytes as the last row's too (17 bytes read for 10 without the lock)."""
    import threading

    store = spill_module._Store()
    store.put(b"x" * 10)
    entered, go = threading.Event(), threading.Event()
    add_row = store._row

    def row_after_a_pause(where: int, offset: int) -> Any:
        entered.set()
        go.wait(5)
        return add_row(where, offset)

    store._row = row_after_a_pause
    putting = threading.Thread(target=store.put, args=(b"y" * 7,))
    putting.start()
    assert entered.wait(5)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(store.get(0)))
    reader.start()
    reader.join(0.3)  # the read waits for the put's lock (before the fix it read at once, the wrong length)
    go.set()
    putting.join(5)
    reader.join(5)
    assert read == [b"x" * 10]
    assert store.get(1) == b"y" * 7 and store.size(1) == 7


def _read_inherited_and_spill_in_child() -> Any:
    inherited = _SPILLED_BEFORE_FORK.load()  # read from the parent's file through the inherited descriptor
    parents = spill_module._STORE._file
    mine = spill(inherited)
    assert spill_module._STORE._file is not parents and spill_module._STORE._pid == os.getpid()
    return mine.load()


def test_kept_ranks_hold_no_trace_metadata_in_memory(dlrm_partials: list[RankPartial]) -> None:
    """The 8 DLRM ranks each list the node's GPUs (read from each file's deviceProperties); kept, no rank holds
    its reduced trace or its metadata in memory (no ``ReducedRank``, ``TraceMeta`` or ``DeviceInfo`` reachable
    from the kept results: they are in the rank's cold record in the spill file), its rank is read without them,
    and read back every rank's metadata, devices included, equals what was read."""
    import gc

    from mlprof.trace.model import DeviceInfo, TraceMeta

    partials = [pickle.loads(pickle.dumps(p)) for p in dlrm_partials]
    read = [pickle.dumps(p.analysis.trace.meta) for p in partials]
    assert all(len(p.analysis.trace.meta.devices) > 0 for p in partials)
    kept = Kept()
    for p in partials:
        kept.keep(p)
    spill_module._LAST_COLD[:] = [None, None, None]  # the record read last is kept by design: not part of a rank

    def reachable(roots: list[Any]) -> list[Any]:
        seen, todo, out = set(), list(roots), []
        while todo:
            obj = todo.pop()
            if id(obj) in seen or isinstance(obj, type):
                continue
            seen.add(id(obj))
            out.append(obj)
            todo.extend(gc.get_referents(obj))
        return out

    held = reachable(partials)
    assert not [o for o in held if isinstance(o, ReducedRank | TraceMeta | DeviceInfo)]
    assert [p.analysis.rank for p in partials] == [pickle.loads(m).rank for m in read]
    for p, meta in zip(partials, read, strict=True):
        assert pickle.dumps(p.analysis.trace.meta) == meta


def test_job_signature_table_holds_every_ranks_kernels_in_rank_order(dlrm_partials: list[RankPartial]) -> None:
    """The client adds each rank's communication signature to one job table as the ranks arrive (any order);
    read back, the table is the rank-ordered concatenation of the real DLRM signatures, in ~50 bytes a kernel
    (the signatures as DataFrames: ~8 KB a rank of pandas objects)."""
    partials = [pickle.loads(pickle.dumps(p)) for p in dlrm_partials]
    signatures = {p.analysis.rank: p.comm_signature() for p in partials}
    random.Random(3).shuffle(partials)
    kept = Kept()
    for p in partials:
        kept.keep(p)
    ranks = sorted(signatures)
    cols = kept.comm.columns(ranks)
    want = pd.concat([signatures[r].assign(rank=r) for r in ranks], ignore_index=True)
    assert len(want) > 8 * 5
    assert cols["rank"].tolist() == want["rank"].tolist()
    assert kept.comm.names[cols["name"]].tolist() == want["name"].tolist()
    assert kept.comm.pgs[cols["pg"]].tolist() == want["pg"].tolist()
    for c in ("seq", "ts", "dur"):
        assert np.array_equal(cols[c], want[c].to_numpy(np.int64))
    assert kept.comm.sizes(ranks).tolist() == [len(signatures[r]) for r in ranks]
    assert kept.comm.nbytes <= (5 * 4 + 8) * max(64, 2 * len(want))  # int32 columns but the start clocks
    assert all(cols[c].dtype == np.int64 for c in cols)
    # a value past int32 (a sequence number, a duration) widens its column: read back as added
    from mlprof.analyzers.rank_skew import CommTable

    table, added = CommTable(), []
    for k, r in enumerate(ranks):
        signature = signatures[r].copy()
        if k >= 3:
            signature["seq"] += 2**31 + k
        if k == 5:
            signature["dur"] -= 2**40
        table.add(r, signature)
        added.append(signature.assign(rank=r))
    every = pd.concat(added, ignore_index=True)
    got = table.columns(ranks)
    for c in ("rank", "seq", "ts", "dur"):
        assert got[c].dtype == np.int64 and np.array_equal(got[c], every[c].to_numpy(np.int64)), c
    assert table.names[got["name"]].tolist() == every["name"].tolist()


def test_matching_on_the_job_table_equals_a_brute_force_matching(dlrm_partials: list[RankPartial]) -> None:
    """The collectives matched on the job's table (by order: the n-th kernel of a name on every rank), checked
    against plain loops over the real DLRM signatures: each rank's communication time, its wait (its kernel's
    excess over the shortest kernel of the same collective) and where (``wait_intervals``), and how often it came
    last (shortest kernel, lowest rank on ties)."""
    from mlprof.analyzers.rank_skew import CommTable, match_table

    signatures = {p.analysis.rank: p.comm_signature() for p in dlrm_partials}
    ranks = sorted(signatures)
    table = CommTable()
    for r in reversed(ranks):
        table.add(r, signatures[r])
    skew = match_table(table, ranks)
    assert skew is not None and skew.match_key == "order"
    kernels: dict[tuple[str, int], dict[int, int]] = {}
    starts: dict[tuple[str, int, int], int] = {}
    for r in ranks:
        seen: dict[str, int] = {}
        sig = signatures[r]
        for name, dur, ts in zip(sig["name"], sig["dur"], sig["ts"], strict=True):
            n = seen[name] = seen.get(name, -1) + 1
            kernels.setdefault((name, n), {})[r] = int(dur)
            starts[(name, n, r)] = int(ts)
    on_all = {k: d for k, d in kernels.items() if len(d) == len(ranks)}
    wait = dict.fromkeys(ranks, 0)
    last = dict.fromkeys(ranks, 0)
    intervals: dict[int, list[tuple[int, int]]] = {r: [] for r in ranks}
    for (name, n), durs in on_all.items():
        shortest = min(durs.values())
        for r, d in durs.items():
            wait[r] += d - shortest
            if d > shortest:
                intervals[r].append((starts[(name, n, r)], starts[(name, n, r)] + d - shortest))
        last[min(r for r, d in durs.items() if d == shortest)] += 1
    # each rank's waits [start, start + wait), by start (the job's arrays, each rank's pair made when asked for)
    assert len(skew.wait_intervals) == len(ranks) and list(skew.wait_intervals) == ranks
    assert skew.wait_intervals.get(max(ranks) + 1) is None and max(ranks) + 1 not in skew.wait_intervals
    for r in ranks:
        got_s, got_e = skew.wait_intervals[r]
        assert got_s.dtype == got_e.dtype == np.int64
        assert list(zip(got_s.tolist(), got_e.tolist(), strict=True)) == sorted(intervals[r])
    assert sum(len(v) for v in intervals.values()) > 0
    per = skew.per_rank.set_index("rank")
    assert skew.matched == len(on_all) > 0 and skew.unmatched == sum(len(d) for d in kernels.values()) - len(
        on_all
    ) * len(ranks)
    assert per["comm_ns"].to_dict() == {r: int(signatures[r]["dur"].sum()) for r in ranks}
    assert per["wait_ns"].to_dict() == wait and sum(wait.values()) > 0
    assert per["last_arrivals"].to_dict() == last


def test_matched_skew_holds_its_ranks_without_an_int_object_a_rank(dlrm_partials: list[RankPartial]) -> None:
    """The DLRM signatures as ranks 300-1,323 (past CPython's cached small ints, as a 1,024-rank job's): the
    matching's ``ranks`` are those given, in order, held 8 bytes a rank in an array, not a reference to each int
    object given (32 bytes an int past 256, held to the end of the job)."""
    import sys
    from array import array

    from mlprof.analyzers.rank_skew import CommTable, match_table

    signatures = [p.comm_signature() for p in dlrm_partials]
    ranks = [300 + k for k in range(1024)]
    table = CommTable()
    for r in ranks:
        table.add(r, signatures[r % len(signatures)])
    refs = [sys.getrefcount(r) for r in ranks]
    skew = match_table(table, ranks)
    assert skew is not None and skew.matched > 0
    assert list(skew.ranks) == ranks and len(skew.ranks) == 1024
    assert type(skew.ranks) is array and skew.ranks.itemsize == 8
    assert [sys.getrefcount(r) for r in ranks] == refs  # none of the given int objects is held


def test_client_holds_steps_and_causes_as_rows_of_job_tables(dlrm_partials: list[RankPartial]) -> None:
    """Kept, each real DLRM rank's steps and causes are rows of the job's two tables and read back equal to
    what the rank task returned (values, dtypes, columns, index); the causes set again (the client splits the
    communication) read back as set, written over the rank's rows when they are as many; the job's stacked
    steps equal the concatenation of the ranks' frames; pickled, a kept rank is a plain RankAnalysis with the
    same tables; and each further rank's rows hold a small part of the bytes its two DataFrames did
    (tracemalloc)."""
    import tracemalloc

    from mlprof.results import RankAnalysis
    from mlprof.results.job_frames import HeldRank, JobFrames, Rows, stacked_steps

    partials = [pickle.loads(pickle.dumps(p)) for p in dlrm_partials]
    truth = [(p.analysis.steps.copy(), p.analysis.causes.copy()) for p in partials]
    assert all(len(s) > 0 and len(c) > 0 for s, c in truth)
    kept = Kept()
    for p in partials:
        kept.keep(p)
    ranks = [p.analysis for p in partials]
    for ra, (steps, causes) in zip(ranks, truth, strict=True):
        assert isinstance(ra, HeldRank)
        assert isinstance(ra.rows("steps"), Rows) and isinstance(ra.rows("causes"), Rows)
        pd.testing.assert_frame_equal(ra.steps, steps)
        pd.testing.assert_frame_equal(ra.causes, causes)
        plain = pickle.loads(pickle.dumps(ra))
        assert type(plain) is RankAnalysis
        pd.testing.assert_frame_equal(plain.steps, steps)
    changed = truth[0][1].copy()
    changed.iloc[:, 0] += 7
    read = ranks[0].causes  # read last: the rows' frame is cached until they are set again
    rows = ranks[0].rows("causes")
    assert isinstance(rows, Rows)
    table_rows = rows.table.n
    ranks[0].causes = changed
    pd.testing.assert_frame_equal(ranks[0].causes, changed)
    assert not ranks[0].causes.equals(truth[0][1])
    pd.testing.assert_frame_equal(read, truth[0][1])  # a frame read before is the rows' copy: unchanged
    # as many rows, the same columns: written over the rank's rows, the job's table has no more rows (its columns
    # may widen: a value set that differs from its column's first, + 7 here)
    assert ranks[0].rows("causes") is rows and rows.table.n == table_rows
    pd.testing.assert_frame_equal(ranks[1].causes, truth[1][1])
    fewer = changed.iloc[:-1].reset_index(drop=True)
    ranks[0].causes = fewer
    pd.testing.assert_frame_equal(ranks[0].causes, fewer)
    assert ranks[0].rows("causes") is not rows
    stacked = stacked_steps(ranks)
    assert stacked is not None
    pd.testing.assert_frame_equal(stacked, pd.concat([s for s, _ in truth], ignore_index=True))

    def held_bytes(make: Any) -> int:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        held = make()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert held is not None
        return after - before

    blobs = [pickle.dumps((s, c)) for s, c in truth]
    as_frames = held_bytes(lambda: [pickle.loads(b) for b in blobs])

    def as_rows(times: int) -> int:
        job = JobFrames()
        read = (pickle.loads(b) for b in blobs * times)  # each rank's frames dropped once held, as the client does
        return held_bytes(lambda: [(job.hold("steps", s), job.hold("causes", c)) for s, c in read])

    # The job's tables cost a few KB once (their first buffers, the columns index); each further rank adds its
    # rows (the buffers grow by doubling) and two small handles: measured ~0.95 KB a rank, against ~6.6 KB as
    # the rank's two DataFrames.
    per_rank = (as_rows(8) - as_rows(1)) / (7 * len(blobs))
    assert as_frames > 5_000 * len(blobs)
    assert per_rank < 1_500


def test_ranks_own_findings_are_held_in_the_spill_file_once_merged(dlrm_partials: list[RankPartial]) -> None:
    """Combined from kept ranks, the real DLRM job's per-rank findings (each rank's list, and the merge's input
    ``diagnosis.per_rank``) are held in the spill file, not in memory, and read back equal to those of the same
    ranks combined without being kept (lists in memory); the job's merged findings are the same."""
    from mlprof.engine.job import combine
    from mlprof.results.spill import Spilled, SpilledLists

    plain = combine([pickle.loads(pickle.dumps(p)) for p in dlrm_partials], "dlrm", TaskOptions())
    kept = Kept()
    partials = [pickle.loads(pickle.dumps(p)) for p in dlrm_partials]
    for p in partials:
        kept.keep(p)
    held = combine(partials, "dlrm", TaskOptions(), kept)
    assert held.diagnosis is not None and plain.diagnosis is not None
    assert isinstance(held.diagnosis.per_rank, SpilledLists) and isinstance(plain.diagnosis.per_rank, list)

    def dicts(findings: Any) -> list[Any]:
        return [f.to_dict() for f in findings]

    assert sum(len(ra.findings) for ra in plain.ranks) > len(plain.ranks)
    for a, b in zip(plain.ranks, held.ranks, strict=True):
        assert isinstance(b.__dict__["findings"], Spilled)
        assert dicts(b.findings) == dicts(a.findings)
    assert [dicts(x) for x in held.diagnosis.per_rank] == [dicts(x) for x in plain.diagnosis.per_rank]
    assert dicts(held.findings) == dicts(plain.findings) and len(plain.findings) > 0


def test_report_text_and_data_are_not_held_twice_over() -> None:
    """A 1,024-rank job's report is ~4 MB of JSON: its data decoded from the encoded values
    (``Report.of_encoded``) equals ``Report(data)``, and ``to_json`` gives the same text as encoding, indenting,
    escaping (C1 controls, line separators) and adding the newline in one expression, while holding less at
    once (tracemalloc peak, measured 2.12x the text: the indented bytes and the decoded text; that expression
    held 2.66x: the compact bytes, the decoded text and its copy with the newline)."""
    import tracemalloc

    import msgspec

    from mlprof.results import Report
    from mlprof.untrusted import json_text

    def one_expression(report: Report) -> str:
        return json_text(msgspec.json.format(msgspec.json.encode(report.data), indent=2).decode()) + "\n"

    odd = Report({"schema_version": "1.6", "trace": {"path": "a\x85b\u2028c"}, "ms": (0.25, 3)})
    assert odd.to_json() == one_expression(odd) and "\\u0085" in odd.to_json() and "\\u2028" in odd.to_json()
    rows = [{"rank": i, "path": f"rank-{i}.json", "ms": (i * 0.25, i)} for i in range(20_000)]
    data = {"schema_version": "1.6", "ranks": rows, "trace": {"path": "job"}}
    report = Report(data)
    again = Report.of_encoded(msgspec.json.encode(data))
    assert again == report and again.data["ranks"][3]["ms"] == [0.75, 3]
    want = one_expression(report)
    tracemalloc.start()
    tracemalloc.reset_peak()
    text = report.to_json()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert text == want and len(text) > 2_000_000
    assert peak < 2.4 * len(text)


def _merged_over_lists(per_rank: list[list[Any]], n: int) -> list[dict[str, Any]]:
    """The job findings as the merge formula gives them with every rank's findings in memory at once: grouped by
    rule and merge key, the worst by ``max``, the means over ``n`` ranks, the per-rank figures (all ranks up to
    32, else the 16 largest)."""
    import copy

    from mlprof.rules.base import ms
    from mlprof.rules.registry import BY_ID

    groups: dict[tuple[str, str], list[Any]] = {}
    for findings in per_rank:
        for f in findings:
            groups.setdefault((f.rule, BY_ID[f.rule].merge_key(f)), []).append(f)
    out = []
    for group in groups.values():
        worst = max(group, key=lambda f: (f.time_lost_ns_per_step, f.evidence.get("growth_mib_per_step", 0)))
        job = copy.deepcopy(worst)
        job.time_lost_ns_per_step = sum(f.time_lost_ns_per_step for f in group) / n
        job.claimed = {k: sum(f.claimed.get(k, 0.0) for f in group) / n for k in worst.claimed}
        job.ranks = sorted(r for f in group for r in f.ranks)
        shown = group if len(group) <= 32 else sorted(group, key=lambda f: (-f.time_lost_ns_per_step, f.ranks[0]))[:16]
        job.evidence = {
            "ranks_with_finding": f"{len(group)} of {n}",
            "time_lost_ms_per_step_by_rank": {str(f.ranks[0]): ms(f.time_lost_ns_per_step) for f in shown},
            "worst_rank": worst.ranks[0],
            "worst_rank_evidence": worst.evidence,
        }
        if len(shown) < len(group):
            job.evidence["ranks_shown"] = f"the {len(shown)} largest of {len(group)} (all ranks: cross_rank.per_rank)"
        job.step_ns = 1.0
        job.title = BY_ID[job.rule].merged_title(job, worst, len(group), n, None)
        out.append(job.to_dict())
    return out


def test_merge_reads_the_ranks_findings_one_rank_at_a_time(dlrm_partials: list[RankPartial]) -> None:
    """The real DLRM ranks' findings, copied to 80 ranks (rank r: rank r % 8's findings, time lost scaled by a
    factor that repeats, so ties occur), merged from the spill file (``SpilledLists``, as a job's client holds
    them) equal the merge formula over lists in memory, also where more than 32 ranks have a finding (the 16
    largest shown); while merging, no more than one rank's findings plus one per job finding (the worst) are
    alive at once, where the lists in memory hold all 80 ranks'."""
    import gc
    import weakref

    from mlprof.results.spill import SpilledLists
    from mlprof.rules.engine import _merge

    n = 80
    per_rank = []
    for r in range(n):
        own = [pickle.loads(pickle.dumps(f)) for f in dlrm_partials[r % 8].findings]
        for f in own:
            f.ranks = [r]
            f.time_lost_ns_per_step *= 1 + (r * 7 % 5) / 4
        per_rank.append(own)
    assert sum(len(x) for x in per_rank) > 3 * n
    want = _merged_over_lists(per_rank, n)
    counts: dict[str, int] = {}
    for findings in per_rank:
        for f in {f.rule for f in findings}:
            counts[f] = counts.get(f, 0) + 1
    assert max(counts.values()) > 32  # the largest-16 path is taken

    alive: list[weakref.ref[Any]] = []
    most = 0

    class Watched(SpilledLists):
        def __getitem__(self, i: Any) -> Any:
            nonlocal most
            gc.collect()
            most = max(most, sum(1 for ref in alive if ref() is not None))
            got = super().__getitem__(i)
            alive.extend(weakref.ref(f) for f in got)
            return got

    spilled = Watched(per_rank)
    largest_rank = max(len(x) for x in per_rank)
    del per_rank
    got = _merge(spilled, [None] * n, 1.0, None)  # type: ignore[list-item]
    assert [f.to_dict() for f in got] == want
    assert 0 < most <= largest_rank + len(want)


def test_report_is_written_piece_by_piece_without_decoding_it(tmp_path: Path) -> None:
    """A report built by an analysis holds its compact JSON, not decoded values: ``to_json`` and the pieces
    ``json_chunks`` writes give the text of formatting the decoded values whole (msgspec ``format``, the escapes,
    the newline), also when every list and object is split into elements (a split size of 0: every level of
    the real 8-rank DLRM report and of a report with a C1 control, a line separator and empty containers);
    written through ``write_output`` the file holds those bytes, while holding under a third of the text at
    once (tracemalloc: 0.06x; formatting it whole held 2.2x)."""
    import tracemalloc

    import msgspec

    from mlprof.api import analyze
    from mlprof.results import Report
    from mlprof.results.report import _indented
    from mlprof.safe_write import write_output
    from mlprof.untrusted import json_text

    def whole(data: Any) -> str:
        return json_text(msgspec.json.format(msgspec.json.encode(data), indent=2).decode()) + "\n"

    dlrm = analyze(str(external(DLRM)), jobs=1)
    assert "data" not in dlrm.__dict__  # not decoded by the analysis
    text = dlrm.to_json()
    assert "".join(dlrm.json_chunks()) == text and "data" not in dlrm.__dict__
    odd = {"schema_version": "1.6", "a": [{"p": "x\x85y\u2028z", "e": [], "o": {}}, 1.5, None], "b": {}}
    for data in (msgspec.json.decode(text), odd):
        report = Report.of_encoded(msgspec.json.encode(data))
        want = whole(data)
        assert report.to_json() == want and "".join(report.json_chunks()) == want
        for split in (0, 64):
            assert "".join(json_text(p) for p in _indented(msgspec.json.encode(data), 2, 0, split)) + "\n" == want
    assert "\\u0085" in whole(odd) and "\\u2028" in whole(odd)
    # the decoded values are the report once read: a change shows in what is written
    dlrm.data["notes"] = ["changed"]
    assert '"changed"' in "".join(dlrm.json_chunks()) and dlrm.to_json() == whole(dlrm.data)

    rows = [
        {"rank": i, "path": f"rank-{i}.json", "ms": {f"c{j}": i * 0.25 + j for j in range(40)}} for i in range(3_000)
    ]
    big = Report.of_encoded(msgspec.json.encode({"schema_version": "1.6", "ranks": rows}))
    del rows
    want = big.to_json()
    out = tmp_path / "report.json"
    tracemalloc.start()
    tracemalloc.reset_peak()
    write_output(out, big.json_chunks())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.read_bytes() == want.encode() and len(want) > 2_000_000
    assert peak < len(want) / 3


def test_report_rows_encoded_as_built_give_the_same_report(tmp_path: Path) -> None:
    """``build_report`` encodes a job's per-rank rows as it builds them (``to_json_dict(encode_rows=True)``):
    the report's JSON equals encoding the plain values (the real 8-rank DLRM job, whose steady-state records
    and what-if rows are per rank, and a generated 40-rank job), the report holds them as a snapshot
    (``Report.of_parts``: changing the analysis after does not change it, and nothing is decoded until read), and
    for the 40-rank job the values built that way, their rows in the spill file, hold over 3 KB a rank less than
    the plain values (tracemalloc of each built alone)."""
    import tracemalloc

    import msgspec

    from mlprof.engine import analyze_paths
    from mlprof.results import Report
    from mlprof.results.report import encode_parts
    from mlprof.results.schema import build_report, to_json_dict
    from mlprof.results.spill import RawRows

    template = external(f"{DLRM}/worker0_step_12.1694128201545.pt.trace.json")
    _make_rank_job().make_job(tmp_path, 40, 24, template=template, seed=3)
    sizes: list[int] = []
    for job in (analyze_paths(str(external(DLRM)), jobs=1), analyze_paths(str(tmp_path), jobs=1)):
        plain = msgspec.json.encode(to_json_dict(job))
        assert encode_parts(to_json_dict(job, encode_rows=True)) == plain
        report = build_report(job)
        # built, the report is a snapshot: what the analysis holds may change, the report does not
        assert job.diagnosis is not None
        job.diagnosis.record_next.append("changed after the report")
        job.diagnosis.rule_outliers.append({"rule": "changed"})
        assert report.to_json() == Report_text(plain) and "".join(report.json_chunks()) == Report_text(plain)
        assert "data" not in report.__dict__ and report.data == msgspec.json.decode(plain)
        for encode_rows in (False, True):
            in_memory = len(spill_module._STORE.memory)
            tracemalloc.start()
            values = to_json_dict(job, encode_rows=encode_rows)
            # not counted: the spill table's int64 arrays, which grow (and are copied when they move) with every
            # value the process spills, the earlier tests' included
            held = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, spill_module.__file__)])
            sizes.append(sum(t.size for t in held.traces))
            tracemalloc.stop()
            assert len(spill_module._STORE.memory) == in_memory  # the rows are in the file
            del values, held
    assert sizes[2] - sizes[3] > 40 * 3 * 1024, sizes  # measured 6.0 KB a rank less (2.6 with the rows in memory)

    # rows in the spill file, empty or not, at any depth: written as the same values encoded whole; pickled,
    # they carry their bytes
    rows = RawRows([b'{"x":1,"y":[1,2]}', b"[]"])
    assert rows[1] == b"[]" and rows[:1] == [b'{"x":1,"y":[1,2]}'] and list(pickle.loads(pickle.dumps(rows))) == [*rows]
    values = {"schema_version": "1.6", "a": RawRows(), "b": {"c": rows, "d": [1]}, "e": rows}
    report = Report.of_parts(values)
    want = {"schema_version": "1.6", "a": [], "b": {"c": [{"x": 1, "y": [1, 2]}, []], "d": [1]}}
    want["e"] = want["b"]["c"]  # type: ignore[index]
    assert report.to_json() == "".join(report.json_chunks()) == Report_text(msgspec.json.encode(want))
    assert report.data == want


def Report_text(encoded: bytes) -> str:
    import msgspec

    from mlprof.untrusted import json_text

    return json_text(msgspec.json.format(encoded, indent=2).decode()) + "\n"


def test_kept_ranks_hold_their_report_only_fields_in_the_spill_file(tmp_path: Path) -> None:
    """A generated job that is not replayed (each rank's own replay 13% off): kept, each rank's reduced trace and
    metadata, breakdown, steady-state record and measured spans, its verdicts and its replay with the replay's
    report rows (pacing, graph size) are held in the spill file, not in the objects, and read back equal to the
    rank task's; a value set again is held again; pickled, the rank's result and its replay are plain ones with
    their values; and the kept ranks hold over 3 KB a rank less than with those fields in the objects
    (tracemalloc of 12 ranks kept both ways)."""
    import copy
    import tracemalloc

    from mlprof.results.job_frames import HeldRank
    from mlprof.whatif.replay import RankReplay

    template = external(f"{DLRM}/worker0_step_12.1694128201545.pt.trace.json")
    _make_rank_job().make_job(tmp_path, 12, 6, template=template, seed=2)
    blobs = [pickle.dumps(reduce_rank(str(f), TaskOptions())) for f in sorted(tmp_path.glob("rank-*.json"))]
    originals = [pickle.loads(b) for b in blobs]
    assert not originals[0].replay.ok
    kept = Kept()
    tracemalloc.start()
    held = [kept.keep(pickle.loads(b)) for b in blobs]
    cold_bytes = _held_outside_spill_table()
    tracemalloc.stop()
    for p, o in zip(held, originals, strict=True):
        ra = p.analysis
        assert isinstance(ra, HeldRank) and not {"replay", "verdicts"} & set(p.__dict__)
        assert not {*HeldRank.COLD, "rank_replay", "rank_verdicts"} & set(ra.__dict__)
        for name in HeldRank.COLD:
            if name == "trace":  # its tables packed in the spill file: its metadata and tables read back equal
                assert pickle.dumps(ra.trace.meta) == pickle.dumps(o.analysis.trace.meta)
                for table in ("gpu", "collectives", "memory", "steps"):
                    pd.testing.assert_frame_equal(getattr(ra.trace, table), getattr(o.analysis.trace, table))
                continue
            assert pickle.dumps(getattr(ra, name)) == pickle.dumps(getattr(o.analysis, name)), name
        assert o.analysis.steady is not None and o.analysis.window_ns is not None
        assert p.verdicts == o.verdicts and ra.rank == o.analysis.rank
        assert type(p.replay) is RankReplay and p.replay.to_dict() == o.replay.to_dict()
        assert p.replay.pacing and p.replay.shape
        plain = pickle.loads(pickle.dumps(p.replay))
        assert type(plain) is RankReplay and plain.to_dict() == o.replay.to_dict()
        assert copy.copy(p.replay).to_dict() == o.replay.to_dict()
        whole = pickle.loads(pickle.dumps(p))
        assert type(whole) is RankPartial and whole.verdicts == o.verdicts
        assert whole.replay.to_dict() == o.replay.to_dict() and whole.rank_findings() == o.findings
    held[0].analysis.window_ns = (1, 2)
    assert held[0].analysis.window_ns == (1, 2) and held[1].analysis.window_ns == originals[1].analysis.window_ns
    held[0].verdicts = {"X": "y"}
    assert held[0].verdicts == {"X": "y"} and held[1].verdicts == originals[1].verdicts

    # the same ranks kept with these fields in the objects (as before): tracemalloc of what is held
    def keep_hot(p: RankPartial) -> RankPartial:
        p = kept_hot.keep(p)
        p.replay = pickle.loads(pickle.dumps(p.replay))
        p.verdicts = pickle.loads(pickle.dumps(p.verdicts))
        ra = p.analysis
        for name in HeldRank.COLD:
            ra.__dict__[name] = pickle.loads(pickle.dumps(getattr(ra, name)))
        ra.__dict__.pop("_cold")
        return p

    kept_hot = Kept()
    tracemalloc.start()
    hot = [keep_hot(pickle.loads(b)) for b in blobs]
    hot_bytes = _held_outside_spill_table()
    tracemalloc.stop()
    assert len(hot) == len(held) and cold_bytes < hot_bytes - 12 * 3000, (cold_bytes, hot_bytes)  # measured 5.4 KB


def _held_outside_spill_table() -> int:
    """Bytes traced since ``tracemalloc.start()`` but the spill table's rows (:meth:`spill._Store._row` and its
    columns' appends): both ways spill as many rows, and the table's arrays (every row the process ever
    spilled, grown ~6% at a time) count whole when they grow while traced (~0.3 MB for the ~20k rows of the
    earlier tests in the session), in one window or the other depending on how many rows came before. Nor what
    finding those rows' source lines costs here: ``inspect`` reads spill.py into ``linecache`` in the first window
    whenever an earlier test cleared it (test_bad_input's tracebacks: ~37 KB counted cold, not hot)."""
    import inspect
    import linecache
    import tracemalloc

    rows = []
    for code in (spill_module._Store._row, spill_module._Offsets.append, spill_module._Where.append):
        lines, first = inspect.getsourcelines(code)
        rows += [tracemalloc.Filter(False, spill_module.__file__, lineno=first + k) for k in range(len(lines))]
    lookups = [tracemalloc.Filter(False, module.__file__) for module in (tracemalloc, linecache, inspect)]
    snapshot = tracemalloc.take_snapshot().filter_traces([*rows, *lookups])
    return sum(trace.size for trace in snapshot.traces)


def _twice(x: int, arg: int) -> int:
    return x * arg


def test_local_pool_submits_a_few_tasks_a_worker_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_local`` with a pool: results in input order and one progress call per task, with at most
    ``AHEAD_PER_WORKER`` tasks a worker submitted and not yet taken (every task's future held at once was ~1.6 KB
    a task of the client's peak: 1.6 MB at 1,024 ranks)."""
    from concurrent.futures import ProcessPoolExecutor

    from mlprof.engine import executors

    submitted: list[int] = []
    submit = ProcessPoolExecutor.submit

    def counting(self: ProcessPoolExecutor, fn: Any, *args: Any) -> Any:
        submitted.append(1)
        return submit(self, fn, *args)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", counting)
    taken: list[int] = []
    ahead: list[int] = []

    def keep(result: int) -> int:
        taken.append(result)
        ahead.append(len(submitted) - 1 - len(taken))  # less the pool's first, empty task
        return result

    progress: list[tuple[int, int]] = []
    out = executors.run_local(_twice, list(range(40)), 3, 2, lambda d, t: progress.append((d, t)), keep=keep)
    assert out == [3 * i for i in range(40)] and sorted(taken) == out
    assert progress == [(d, 40) for d in range(1, 41)]
    assert 0 <= max(ahead) < executors.AHEAD_PER_WORKER * 2


def test_kept_ranks_are_views_over_codes_and_keep_what_is_set(dlrm_partials: list[RankPartial]) -> None:
    """Kept, the 8 DLRM ranks are views (two slots each) over the job's two stores: no rank result or analysis
    object is alive but the one of each store read last; every view reads back what the rank task returned
    (rank, steps, causes, signature, findings, verdicts, metadata); what is set or changed in place through a view
    (notes extended, causes and findings set, a verdict set) is read back so after every other rank was read;
    pickled, a view is the plain result with the values set. Held for 64 copies of a rank kept: the views and the
    stores' codes < 250 bytes a rank (tracemalloc of the stores' module but the job tables' rows), nothing held
    as an object, where the objects (the result and analysis, their dicts, rows, lists, handles) were ~1.1 KB."""
    import gc
    import inspect
    import tracemalloc

    from mlprof.engine.job import _KeptPartial
    from mlprof.results import job_frames
    from mlprof.results.job_frames import HeldRank, HotStore

    blobs = [pickle.dumps(p) for p in dlrm_partials]
    truth = [pickle.loads(b) for b in blobs]
    kept = Kept()
    views = [kept.keep(pickle.loads(b)) for b in blobs]
    gc.collect()
    assert all(isinstance(v, _KeptPartial) and isinstance(v.analysis, HeldRank) for v in views)
    alive = [o for o in gc.get_objects() if type(o) in (HeldRank, _KeptPartial)]
    assert len(alive) <= 2, len(alive)
    assert isinstance(kept.hot, HotStore)

    def read_all() -> None:
        for v, t in zip(views, truth, strict=True):
            assert v.analysis.rank == t.analysis.rank and v.rank == t.rank
            pd.testing.assert_frame_equal(v.analysis.steps, t.analysis.steps)
            pd.testing.assert_frame_equal(v.comm_signature(), t.signature)
            assert v.rank_findings() == t.findings
            assert pickle.dumps(v.analysis.trace.meta) == pickle.dumps(t.analysis.trace.meta)

    read_all()
    for v, t in zip(views, truth, strict=True):
        pd.testing.assert_frame_equal(v.analysis.causes, t.analysis.causes)
        assert v.verdicts == t.verdicts and v.analysis.notes == t.analysis.notes
    views[0].analysis.notes.extend(["note on rank 0"])
    changed = truth[3].analysis.causes + 7
    views[3].analysis.causes = changed
    views[5].analysis.findings = truth[5].findings[:1]
    views[6].verdicts = {"X": "y"}
    read_all()
    assert views[0].analysis.notes == [*truth[0].analysis.notes, "note on rank 0"]
    assert views[1].analysis.notes == truth[1].analysis.notes
    pd.testing.assert_frame_equal(views[3].analysis.causes, changed)
    pd.testing.assert_frame_equal(views[4].analysis.causes, truth[4].analysis.causes)
    assert views[5].analysis.findings == truth[5].findings[:1] and views[6].verdicts == {"X": "y"}
    assert views[7].verdicts == truth[7].verdicts
    plain = pickle.loads(pickle.dumps(views[3]))
    assert type(plain) is RankPartial and type(plain.analysis).__name__ == "RankAnalysis"
    pd.testing.assert_frame_equal(plain.analysis.causes, changed)
    assert plain.analysis.rank == truth[3].analysis.rank and plain.verdicts == truth[3].verdicts

    # what 64 kept copies of one rank hold (untrusted replays: nothing but the codes and views in memory)
    one = dlrm_partials[1]
    one_blob = pickle.dumps(_untrusted(one))
    many = Kept()
    copies = [pickle.loads(one_blob) for _ in range(64)]
    tracemalloc.start()
    kept_views = [many.keep(p) for p in copies]
    del copies
    gc.collect()
    rows = []
    for table_code in (job_frames._Table, job_frames._grown):
        lines, first = inspect.getsourcelines(table_code)
        rows += [tracemalloc.Filter(False, job_frames.__file__, lineno=first + k) for k in range(len(lines))]
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, job_frames.__file__), *rows])
    held = sum(trace.size for trace in snapshot.traces)
    tracemalloc.stop()
    assert not [o for o in gc.get_objects() if type(o) in (HeldRank, _KeptPartial) and o.rank == one.rank][1:]
    assert not many.hot._extras and not many.partials._extras
    assert len(kept_views) == 64 and held / 64 < 250, held / 64  # measured 180


def _untrusted(p: RankPartial) -> RankPartial:
    """A copy of ``p`` whose replay is 2x off its recording (not trusted: the job is not replayed, no graph held)."""
    q = pickle.loads(pickle.dumps(p))
    q.replay.replayed_ns = 2 * q.replay.recorded_ns
    assert not q.replay.ok
    return q


def test_job_tables_hold_narrow_columns_and_widen_a_column_that_does_not_fit() -> None:
    """A job table holds each column as steps from its first value, as narrow as they fit: 300 random tables
    (1-4 rows, five columns: small ns, clocks ~1.7e18 spread over 1e17, a column that crosses 2**31 after the
    100th, negatives near -2**31, zeros) held and some written over (+ 1) read back equal to the int64 frames set
    (brute force: each kept frame compared with what was set, after all were held); the clock column is int64
    from the first, the crossing one from the 100th, the negatives (10 apart) int8; and 1,000 rows of values
    within 5,000 of the first hold int16, a quarter of one int64 matrix's bytes."""
    from mlprof.results.job_frames import JobFrames

    rng = np.random.default_rng(5)
    job = JobFrames()
    columns = ["ns", "clock", "crossing", "negative", "zero"]
    held, want = [], []
    for k in range(300):
        n = int(rng.integers(1, 5))
        frame = pd.DataFrame(
            {
                "ns": rng.integers(0, 2**31 - 1, n),
                "clock": rng.integers(1_700_000_000_000_000_000, 1_700_000_100_000_000_000, n),
                "crossing": rng.integers(0, 2**31 - 1, n) + (2**31 if k >= 100 else 0),
                "negative": rng.integers(-(2**31), -(2**31) + 10, n),
                "zero": np.zeros(n, dtype=np.int64),
            }
        )
        rows = job.hold("t", frame)
        if k % 7 == 3:  # set again: as many rows, written over them
            frame = frame + 1
            assert job.hold("t", frame, over=rows) is rows
        held.append(rows)
        want.append(frame)
        if k == 99:
            (table,) = job._tables.values()
            assert table.dtypes() == ["int32", "int64", "int32", "int8", "int8"]  # zero: some rows set again + 1
    for rows, frame in zip(held, want, strict=True):
        pd.testing.assert_frame_equal(rows.frame(), frame)
    (table,) = job._tables.values()
    assert table.dtypes() == ["int32", "int64", "int64", "int8", "int8"]
    small = JobFrames()
    frame = pd.DataFrame(np.arange(5000, dtype=np.int64).reshape(1000, 5), columns=columns)
    for k in range(1000):
        small.hold("t", frame.iloc[k : k + 1].reset_index(drop=True))
    assert small.nbytes == 1024 * 5 * 2  # int16: each column's values within 5,000 of its first


def _many_ranks_table(dlrm_partials: list[RankPartial], n: int, long_wait_ns: int = 0) -> tuple[Any, list[int]]:
    """A job table of ``n`` ranks from the DLRM ranks' real signatures: rank r is DLRM rank r % 8, its clock moved
    by r us and its kernels r % 5 ns longer; rank 3's kernels ``long_wait_ns`` longer still."""
    from mlprof.analyzers.rank_skew import CommTable

    signatures = {p.analysis.rank: p.comm_signature() for p in dlrm_partials}
    table = CommTable()
    for r in range(n):
        sig = signatures[r % 8]
        table.add(r, sig.assign(ts=sig["ts"] + r * 1000, dur=sig["dur"] + r % 5 + (long_wait_ns if r == 3 else 0)))
    return table, list(range(n))


def test_matching_holds_few_bytes_a_kernel_at_once(dlrm_partials: list[RankPartial]) -> None:
    """The matching of a 1,024-rank job table (the DLRM ranks' real signatures repeated, 8,192 kernels) peaks at
    < 64 traced bytes a kernel over its start, what it keeps included (its columns put in collective order once,
    ranks, names, keys and positions as narrow as they fit, each rank's clock offset in an array, each collective's
    arrivals sorted as one int64 a kernel, the kernels' columns dropped before the waits' arrays are made: measured
    59.4; 77.5 before them; 106.9 when every array was int64 and several were indexed by the sort's order); the
    waits it keeps are held int32 (4 bytes a wait), and a wait past 2**31 ns is kept int64 and read back exactly
    (start + wait)."""
    import tracemalloc

    from mlprof.analyzers.rank_skew import match_table

    table, ranks = _many_ranks_table(dlrm_partials, 1024)
    kernels = table.sizes(ranks).sum()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        skew = match_table(table, ranks, release=True)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert skew is not None and skew.matched > 0 and kernels >= 8 * 1024
    assert peak < 64 * kernels, f"{peak / kernels:.1f} bytes a kernel"
    waits = skew.wait_intervals
    assert waits._wait.dtype == np.int32 and len(waits._wait) > 1024  # type: ignore[attr-defined]

    long_wait = 3 * 10**9  # rank 3's kernels 3 s longer: every one of its waits past 2**31 ns
    table, ranks = _many_ranks_table(dlrm_partials, 16, long_wait)
    sig = dlrm_partials[3].comm_signature()
    skew = match_table(table, ranks)
    assert skew is not None and skew.wait_intervals._wait.dtype == np.int64  # type: ignore[attr-defined]
    start3, end3 = skew.wait_intervals[3]
    assert start3.dtype == end3.dtype == np.int64 and len(start3) == skew.matched
    assert (end3 - start3 >= long_wait).all() and (start3 == (sig["ts"] + 3000).to_numpy()[: len(start3)]).all()


def test_job_signature_table_columns_are_as_narrow_as_their_values(dlrm_partials: list[RankPartial]) -> None:
    """A 1,024-rank job table (the DLRM ranks' real signatures repeated) holds each column in the narrowest of
    int8, int16, int32 and int64 that its values fit (truth: each column's range read back as int64): 17 bytes a
    kernel here (ranks in two, names, process groups and sequence numbers in one, durations in four, clocks in
    eight; 28 when every column but the clocks was int32); a column widened step by step (a sequence number past
    int8, int16, then int32) reads back every value as added."""
    from mlprof.analyzers.rank_skew import CommTable

    table, ranks = _many_ranks_table(dlrm_partials, 1024)
    cols = table.columns(ranks)
    capacity = len(table._rows[0])

    def narrowest(values: np.ndarray) -> int:
        lo, hi = int(values.min()), int(values.max())
        return next(b for b in (1, 2, 4, 8) if -(2 ** (8 * b - 1)) <= lo and hi < 2 ** (8 * b - 1))

    per_kernel = sum(narrowest(cols[c]) for c in CommTable.COLUMNS)
    assert per_kernel <= 17 and table.nbytes == capacity * per_kernel
    assert capacity < 2 * len(cols["rank"])
    assert [table._rows[i].dtype.itemsize for i in range(6)] == [narrowest(cols[c]) for c in CommTable.COLUMNS]

    signatures = {p.analysis.rank: p.comm_signature() for p in dlrm_partials}
    table, added = CommTable(), []
    for k, shift in enumerate((0, 300, 70_000, 2**40, 5)):
        signature = signatures[k].assign(seq=np.arange(len(signatures[k])) + shift)
        table.add(k, signature)
        added.append(signature.assign(rank=k))
        itemsize = table._rows[CommTable.COLUMNS.index("seq")].dtype.itemsize
        assert itemsize == (1, 2, 4, 8, 8)[k]
    every = pd.concat(added, ignore_index=True)
    got = table.columns(list(range(5)))
    for c in ("rank", "seq", "ts", "dur"):
        assert got[c].dtype == np.int64 and np.array_equal(got[c], every[c].to_numpy(np.int64)), c
    assert table.names[got["name"]].tolist() == every["name"].tolist()
    assert table.pgs[got["pg"]].tolist() == every["pg"].tolist()


def test_rank_measures_leave_no_tuple_a_rank(dlrm_partials: list[RankPartial]) -> None:
    """The straggler rule's per-rank measures of 1,024 ranks (the DLRM ranks' real contexts repeated) equal the
    contexts' own numbers (rank and steps int64, step, compute, wait and transfer ns float64), and building them
    leaves < 8 KB traced once the frame is dropped (CPython's free lists emptied first): a tuple a rank left
    ~90 KB of six-tuples on the tuple free list, held through the rest of a job's run."""
    import gc
    import tracemalloc

    from mlprof.analyzers.stragglers import MEASURE_COLUMNS
    from mlprof.rules.base import RankContext
    from mlprof.rules.straggler import COMPUTE_CAUSES, rank_measures

    contexts = [RankContext(p.analysis, p.analysis.causes) for p in dlrm_partials] * 128
    frame = rank_measures(contexts)
    assert list(frame.columns) == list(MEASURE_COLUMNS) and len(frame) == 1024
    assert [str(t) for t in frame.dtypes] == ["int64", "int64"] + ["float64"] * 4
    for i, ctx in enumerate(contexts):
        want = (ctx.rank, ctx.n_windows, ctx.step_ns, ctx.per_step(*COMPUTE_CAUSES))
        want += (ctx.per_step("comm.wait"), ctx.per_step("comm.transfer"))
        assert tuple(frame.iloc[i].tolist()) == want
    assert frame["compute_ns"].sum() > 0 and frame["rank"].nunique() == 8
    del frame
    gc.collect()  # (a full collection empties the free lists)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        frame = rank_measures(contexts)
        del frame
        left = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert left < 8 * 1024, left


def test_run_medians_and_clock_offsets_equal_plain_python_on_random_runs() -> None:
    """The medians of runs of arrivals (one int64 a value, sorted in place; a lexsort when the runs times the span
    passes int64) and the ranks' clock offsets (an array by place in the ranks, a rank listed twice taking its
    last found offset) on 300 random inputs equal plain Python: the mean of each sorted run's middle values (as
    float64, as :func:`_medians`), and the median of each place's end differences against the first place's
    kernel of the same collective, rounded."""
    import statistics

    from mlprof.analyzers.rank_skew import _clock_offsets, _run_medians

    rng = random.Random(11)
    for k in range(300):
        sizes = np.array([rng.randint(1, 6) for _ in range(rng.randint(1, 9))], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        top = 2**62 if k % 3 == 0 else 50  # (past int64 with several runs: the lexsort)
        values = np.array([rng.randint(0, top) for _ in range(int(sizes.sum()))], dtype=np.int64)
        want = []
        for a, n in zip(starts.tolist(), sizes.tolist(), strict=True):
            run = sorted(values[a : a + n].tolist())
            want.append((float(run[(n - 1) // 2]) + float(run[n // 2])) / 2)
        assert _run_medians(values.copy(), starts, sizes).tolist() == want

        n = rng.randint(2, 6)
        ranks = [rng.choice([3, 5, 7, 9, 11]) for _ in range(n)] if k % 4 == 1 else list(range(10, 10 + n))
        slots: list[int] = []
        ends: list[int] = []
        run_starts: list[int] = []
        for _ in range(rng.randint(1, 6)):  # a collective: a few of the places, each once
            places = rng.sample(range(n), rng.randint(1, n))
            run_starts.append(len(slots))
            slots += places
            ends += [rng.randint(-(10**6), 10**6) + 1_700_000_000_000_000_000 for _ in places]
        diffs: dict[int, list[int]] = {}
        for a, b in zip(run_starts, [*run_starts[1:], len(slots)], strict=True):
            ref = [ends[t] for t in range(a, b) if slots[t] == 0]
            for t in range(a, b) if ref else ():
                diffs.setdefault(slots[t], []).append(ends[t] - ref[0])
        per_place = {s: round(float(statistics.median(d))) for s, d in diffs.items()}
        by_rank = {ranks[s]: per_place[s] for s in sorted(per_place)}
        got = _clock_offsets(np.array(slots), np.array(run_starts), np.array(ends, dtype=np.int64), ranks)
        assert got.dtype == np.int64 and got.tolist() == [by_rank.get(r, 0) for r in ranks]


def test_waits_read_for_each_rank_do_not_hold_the_jobs_starts(dlrm_partials: list[RankPartial]) -> None:
    """Each rank's waits read from a 1,024-rank match (the DLRM ranks' real signatures repeated) are arrays of
    their own (truth: the job's start array, found by a weak reference, is freed once the waits are spilled
    while every rank's pair is still held); a view into the job's array held it, ~64 KB here, through the
    rest of a job's run. The pairs equal the job arrays' slices read before."""
    import weakref

    from mlprof.analyzers.rank_skew import match_table

    table, ranks = _many_ranks_table(dlrm_partials, 1024)
    skew = match_table(table, ranks, release=True)
    assert skew is not None
    waits = skew.wait_intervals
    starts = weakref.ref(waits._ts)  # type: ignore[attr-defined]
    want = {r: waits._ts[waits._lo[i] : waits._hi[i]].tolist() for i, r in enumerate(ranks)}  # type: ignore[attr-defined]
    pairs = {r: waits[r] for r in ranks}
    assert sum(len(s) for s, _ in pairs.values()) > 1024
    assert all(pairs[r][0].tolist() == want[r] and (pairs[r][1] >= pairs[r][0]).all() for r in ranks)
    waits.spill(spill)  # type: ignore[attr-defined]
    assert starts() is None


def test_job_client_collection_leaves_the_tuple_free_list_empty(
    dlrm_partials: list[RankPartial], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job client's collection between its phases (:func:`mlprof.engine.job._collect`, here on the real
    8-rank DLRM job with the threshold lowered to 8): 1,500 one-tuples parked on CPython's free list before (as the
    client's rank loop leaves ~2 a rank) are handed back, < 100 left (CPython's own count,
    ``sys._debugmallocstats``); without it they stayed parked through the replays and the report. Below the
    threshold nothing is collected."""
    import re
    import sys

    from mlprof.engine import job as job_module

    def parked() -> int:
        capfd.readouterr()
        sys._debugmallocstats()
        found = re.search(r"([\d,]+) free 1-sized PyTupleObjects", capfd.readouterr().err)
        assert found is not None
        return int(found.group(1).replace(",", ""))

    monkeypatch.setattr(job_module, "COLLECT_FROM_RANKS", 9)
    ones = [(k,) for k in range(1500)]
    del ones
    assert parked() >= 1500
    job_module._collect(dlrm_partials)  # 8 ranks: below
    assert parked() >= 1500
    monkeypatch.setattr(job_module, "COLLECT_FROM_RANKS", 8)
    job_module._collect(dlrm_partials)
    assert parked() < 100


def test_waits_read_back_from_the_spill_file_equal_the_waits_held(dlrm_partials: list[RankPartial]) -> None:
    """A 1,024-rank job table's waits (the DLRM ranks' real signatures repeated: ~128 KB of arrays) held in the
    spill file once read (what a job's client does after splitting every rank's communication): the object then
    holds no array, what stays in memory is under 8 KB traced (the spill table's row and its growth) where the
    arrays were 131 KB, and every rank's waits read back, pickled or copied, equal the ones read before."""
    import copy
    import tracemalloc

    from mlprof.analyzers.rank_skew import WaitIntervals, match_table

    table, ranks = _many_ranks_table(dlrm_partials, 1024)
    skew = match_table(table, ranks, release=True)
    assert skew is not None
    waits = skew.wait_intervals
    assert isinstance(waits, WaitIntervals)
    held = sum(a.nbytes for a in (waits._ts, waits._wait, waits._lo, waits._hi))  # type: ignore[attr-defined]
    assert held > 100_000
    before = {r: waits[r] for r in ranks}
    assert sum(len(start) for start, _ in before.values()) > 7 * 1024
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        waits.spill(spill)
        kept = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert set(waits.__dict__) == {"_spilled"} and kept < 8 * 1024, kept
    for again in (pickle.loads(pickle.dumps(waits)), copy.deepcopy(waits), waits):
        assert list(again) == ranks and len(again) == 1024 and 5 in again and 1024 not in again
        for r in ranks:
            assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(again[r], before[r], strict=True))


def test_merged_findings_share_one_int_a_rank(dlrm_partials: list[RankPartial]) -> None:
    """The DLRM ranks' findings copied to ranks 300-899 (past CPython's cached small ints) and merged: each merged
    finding lists its ranks in order (truth: the ranks each rule's copies were given), and the lists share one
    int object a rank, where each list held its own (32 bytes a rank a finding)."""
    from mlprof.rules.engine import _merge

    ranks = list(range(300, 900))
    per_rank = []
    fired: dict[str, set[int]] = {}
    for r in ranks:
        own = [pickle.loads(pickle.dumps(f)) for f in dlrm_partials[r % 8].findings]
        for f in own:
            f.ranks = [r]
            fired.setdefault(f.rule, set()).add(r)
        per_rank.append(own)
    got = _merge(per_rank, [None] * len(ranks), 1.0, None)  # type: ignore[list-item]
    assert len(got) >= 3 and sum(len(f.ranks) for f in got) > 3 * len(ranks)
    assert {f.rule: f.ranks for f in got} == {rule: sorted(on) for rule, on in fired.items()}
    objects = {id(r) for f in got for r in f.ranks}
    assert len(objects) == len({r for f in got for r in f.ranks}) == len(ranks)
    # the int objects are shared, the lists are not: a caller that changes one finding's ranks changes no other's
    assert len({id(f.ranks) for f in got}) == len(got)
    got[0].ranks.append(-1)
    assert all(-1 not in f.ranks for f in got[1:])


def test_report_pieces_stay_small_where_a_value_is_long(tmp_path: Path) -> None:
    """A report whose six findings list 1,024 ranks each (~24 KB of compact JSON in one list, as a 1,024-rank job's
    merged findings) is written in pieces of at most ~16 KB of text (a piece is held three or four times over while
    written; one piece of ~64 KB at a split of 32 KB), and the pieces joined are the text formatted whole."""
    import msgspec

    from mlprof.results import Report

    findings = [{"rule": f"r{k}", "ranks": list(range(1024)), "evidence": {"n": k}} for k in range(6)]
    data = {"schema_version": "1.5", "findings": findings, "notes": ["x"]}
    report = Report.of_encoded(msgspec.json.encode(data))
    assert 20_000 < len(msgspec.json.encode(findings)) < 32 * 1024
    pieces = list(report.json_chunks())
    assert "".join(pieces) == report.to_json()
    assert max(len(p) for p in pieces) < 16_000, max(len(p) for p in pieces)


def test_client_holds_no_view_a_rank_in_the_job_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generated 12-rank job analysed from its files (names sorted rank-0, rank-1, rank-10, ...: the ranks'
    results arrive out of rank order): while the job's rules run, the client holds no view object per rank (its
    ranks' results and contexts are sequences that make a view when indexed or iterated; a list of views each was
    2 views a rank, ~0.26 KB with their indices), nor once the job's analysis is returned (its ranks: one more);
    and the job's findings, per-rank findings and rank order equal those of the same results combined as plain
    objects in a list."""
    import gc

    from mlprof.engine import job as job_module
    from mlprof.results.job_frames import _View

    _make_rank_job().make_job(tmp_path, 12, 6, seed=3)
    live: list[int] = []
    diagnose = job_module.diagnose

    def counting(*args: Any, **kwargs: Any) -> Any:
        gc.collect()
        live.append(sum(1 for o in gc.get_objects() if isinstance(o, _View)))
        return diagnose(*args, **kwargs) if args else None

    monkeypatch.setattr(job_module, "diagnose", counting)
    kept = job_module.analyze_paths(str(tmp_path), jobs=1)
    monkeypatch.setattr(job_module, "diagnose", diagnose)
    counting()  # the job's analysis returned: its ranks too are made on access
    plain = job_module.combine(
        [reduce_rank(str(f), TaskOptions()) for f in sorted(tmp_path.glob("rank-*.json"))], str(tmp_path), TaskOptions()
    )
    assert len(live) == 2 and max(live) <= 4, live
    assert [ra.rank for ra in kept.ranks] == [ra.rank for ra in plain.ranks] == list(range(12))
    assert kept.diagnosis.findings == plain.diagnosis.findings and len(kept.diagnosis.findings) > 0
    assert [ra.findings for ra in kept.ranks] == [ra.findings for ra in plain.ranks]


def test_client_collects_between_its_phases_on_a_job_of_many_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client runs a full collection (which empties the interpreter's free lists), then hands the heap's free
    pages back, after the arrival, before and after the job's rules (three of each), on a job of
    ``COLLECT_FROM_RANKS`` ranks or more (here lowered to 4: a generated 6-rank job), and none on a smaller one
    (3 ranks) or under the default threshold; the analysis is the same either way."""
    import gc

    from mlprof.engine import job as job_module

    _make_rank_job().make_job(tmp_path, 6, 2, seed=4)
    partials = [reduce_rank(str(f), TaskOptions()) for f in sorted(tmp_path.glob("rank-*.json"))]
    full: list[int] = []
    trims: list[int] = []
    trim = job_module.release_freed_memory

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    def counted_trim(**how: bool) -> None:  # the real trim, counted
        trims.append(1)
        trim(**how)

    monkeypatch.setattr(job_module, "release_freed_memory", counted_trim)

    def combined(limit: int, ranks: list[RankPartial]) -> tuple[int, Any]:
        monkeypatch.setattr(job_module, "COLLECT_FROM_RANKS", limit)
        full.clear()
        trims.clear()
        gc.callbacks.append(on_gc)
        try:
            analysis = job_module.combine(pickle.loads(pickle.dumps(ranks)), str(tmp_path), TaskOptions())
        finally:
            gc.callbacks.remove(on_gc)
        return len(full), analysis

    collected, many = combined(4, partials)
    assert len(trims) == 3  # the heap's free pages handed back after the arrival, before and after the rules
    plain_collected, plain = combined(10**9, partials)
    assert not trims
    few, _ = combined(4, partials[:3])
    assert not trims
    counts = (collected, few, plain_collected)
    assert collected >= 3 and few <= collected - 3 and plain_collected <= collected - 3, counts
    assert many.diagnosis.findings == plain.diagnosis.findings


def test_job_listing_gives_the_paths_of_the_path_based_listing(tmp_path: Path) -> None:
    """A job folder's rank files listed as strings without a ``Path`` a file (:func:`job_paths`) are exactly what
    the ``Path`` listing gave (truth: ``sorted(folder.iterdir())`` filtered as before, each ``str``), for a folder
    given as absolute, with a trailing slash, relative and as "."; with run-folder side files, hidden files, a
    folder named like a trace, a link to a trace and a broken link. Listing 1,024 names peaks at < 0.2 KB a file
    traced (the ``Path`` objects and their sort were ~0.35 KB)."""
    import tracemalloc

    from mlprof.engine.sources import list_sources
    from mlprof.trace.loader import RUN_FOLDER_SIDE_FILES, TRACE_SUFFIXES, trace_files_in

    folder = tmp_path / "job"
    folder.mkdir()
    for name in ("rank-10.json", "rank-2.json.gz", "rank-1.json", "B.json", "a.json", "meta.json", "counters.json"):
        (folder / name).write_text("{}")
    (folder / ".hidden.json").write_text("{}")
    (folder / "notes.txt").write_text("")
    (folder / "sub.json").mkdir()
    (folder / "link.json").symlink_to(folder / "a.json")
    (folder / "broken.json").symlink_to(folder / "gone.json")

    def old(directory: Path) -> list[str]:
        return [
            str(p)
            for p in sorted(directory.iterdir())
            if p.is_file()
            and p.name.endswith(TRACE_SUFFIXES)
            and not p.name.startswith(".")
            and not RUN_FOLDER_SIDE_FILES.match(p.name)
        ]

    want = old(folder)
    assert [Path(p).name for p in want] == [
        "B.json",
        "a.json",
        "link.json",
        "rank-1.json",
        "rank-10.json",
        "rank-2.json.gz",
    ]
    assert list_sources(str(folder)) == want and list_sources(str(folder) + "/") == want
    assert [str(p) for p in trace_files_in(folder)] == want
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert list_sources("job") == old(Path("job")) == [f"job/{Path(p).name}" for p in want]
        os.chdir(folder)
        assert list_sources(".") == old(Path(".")) == [Path(p).name for p in want]
    finally:
        os.chdir(cwd)

    many = tmp_path / "many"
    many.mkdir()
    for k in range(1024):
        (many / f"rank-{k}.json.gz").write_bytes(b"")
    tracemalloc.start()
    try:
        listed = list_sources(str(many))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert listed == old(many) and len(listed) == 1024
    assert peak / 1024 < 200, peak / 1024


def test_merge_sums_each_cause_as_sum_does_and_holds_two_numbers_a_finding(dlrm_partials: list[RankPartial]) -> None:
    """A finding of three claimed causes copied to 600 ranks with adversarial claims (floats of every magnitude and
    sign, -0.0, ints past 2**53 and past int64, numpy floats, a cause first claimed at rank 7, findings claiming
    nothing, findings of two ranks): each merged cause is what ``sum`` gives over the findings' values (truth: the
    brute-force merge over lists, compared by type and ``repr``), and the ranks are every finding's ranks sorted.
    A group holds 16 bytes a finding (its time lost and first rank), where an array a cause and one of the ranks
    besides held 48 for three causes."""
    import random
    import tracemalloc

    from mlprof.rules.engine import _Group, _merge

    rng = random.Random(31)
    base = next(f for f in dlrm_partials[0].findings if len(f.claimed) == 3)
    causes = list(base.claimed)
    per_rank = []
    for r in range(600):
        f = pickle.loads(pickle.dumps(base))
        f.ranks = [r, r + 1000] if r % 97 == 5 else [r]
        f.time_lost_ns_per_step = 1e6 + r  # the worst: the last rank, which claims every cause
        claimed: dict[str, Any] = {}
        for c, cause in enumerate(causes if r >= 7 else causes[:2]):
            pick = rng.randrange(8) if r < 599 else 7
            if pick == 0:
                value: Any = rng.uniform(-1, 1) * 10.0 ** rng.randrange(-12, 20)
            elif pick == 1:
                value = -0.0
            elif pick == 2:
                value = rng.randrange(1 << 54)
            elif pick == 3 and r > 400 and c == 1:
                value = 1 << 64
            elif pick == 4 and c == 0:
                value = np.float64(rng.random() * 1e6)
            elif pick == 5:
                continue  # not claimed by this finding
            else:
                value = rng.random() * 10.0 ** rng.randrange(0, 9)
            claimed[cause] = value
        f.claimed = claimed if r % 11 or r == 599 else {}
        per_rank.append([f])
    want = {k: sum(f.claimed.get(k, 0.0) for fs in per_rank for f in fs) / 600 for k in per_rank[-1][0].claimed}
    assert len(want) == 3 and {type(v) for v in want.values()} == {np.float64, float}
    got = _merge(per_rank, [None] * 600, 1.0, None)  # type: ignore[list-item]
    assert len(got) == 1
    assert {k: (type(v), repr(v)) for k, v in got[0].claimed.items()} == {
        k: (type(v), repr(v)) for k, v in want.items()
    }
    assert got[0].ranks == sorted(r for fs in per_rank for f in fs for r in f.ranks)

    def held(n: int) -> int:
        findings = [pickle.loads(pickle.dumps(base)) for _ in range(n)]
        for r, f in enumerate(findings):
            f.ranks = [r + 300]
        tracemalloc.start()
        try:
            group = _Group()
            for f in findings:
                group.add(f)
            return tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    per_finding = (held(2000) - held(1000)) / 1000
    if sys.version_info < (3, 12):  # from 3.12 ``sum`` is not the running sum: each cause's values are held
        assert per_finding < 20, per_finding
