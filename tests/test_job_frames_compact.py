"""How few bytes a rank a job's client holds in :mod:`mlprof.results.job_frames` and :mod:`mlprof.results.spill`:
each compact holder read back against a brute-force reference (a plain list or the int64 rows as set), over
values that force every widening."""

from __future__ import annotations

import random
from array import array
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlprof.results.job_frames import _ABSENT, HotStore
from mlprof.results.narrow_ints import NarrowInts
from mlprof.results.spill import spill


class _Obj:
    """A plain object held by a :class:`HotStore` (its instance dict is what the store codes)."""

    rank: int
    none: None
    big: int
    some: int


def _code_bytes(store: HotStore) -> int:
    """Bytes of the store's per-key code arrays (a key coded alike for every rank is one number: 0 bytes)."""
    total = 0
    for codes in store._codes.values():
        if not isinstance(codes, int):
            total += _row_bytes(codes)
    return total


def test_codes_read_back_every_code_set_and_widen_in_place() -> None:
    """:class:`NarrowInts` (a store's codes) against a plain list over 20,000 random appends and sets: absent codes
    among them, codes a few apart (int16 offsets), then ones 2**20 apart (int32), then 2**40 apart and up to 2**62
    (int64): every code reads back as set after each phase, and the array widens only when an offset does not fit."""
    rng = random.Random(7)
    base = 6 << 58
    for first in (0, base):  # created absent (a key first set on a later rank), or from a code
        codes, truth = NarrowInts.repeat(first, 3, absent=_ABSENT), [first] * 3
        for phase, (spread, typecode) in enumerate(((1000, "h"), (2**20, "i"), (2**40, "q"))):
            for _ in range(5000 if phase < 2 else 2000):
                code = 0 if rng.random() < 0.1 else base + rng.randrange(-spread, spread)
                if rng.random() < 0.5:
                    codes.append(code)
                    truth.append(code)
                else:
                    k = rng.randrange(len(truth))
                    codes[k] = code
                    truth[k] = code
            assert [codes[k] for k in range(len(truth))] == truth and len(codes) == len(truth)
            assert codes.values.typecode == typecode, (phase, codes.values.typecode)
        codes.append((1 << 62) - 1)
        codes[0] = 0
        assert codes[len(codes) - 1] == (1 << 62) - 1 and codes[0] == 0


def test_hot_store_reads_back_random_dicts_and_holds_2_bytes_a_rank_a_key() -> None:
    """1,024 objects held in a :class:`HotStore` with a rank number (in a shuffled order, as ranks finish), a
    number that steps evenly (as a rank's rows of a job table), a None, an int that only some have and one that
    grows past 2**31 then 2**57 (held as it is): read back after random reads and sets in place, every object's
    dict equals a brute-force copy of what was set; held, the rank number's codes take 2 bytes a rank (an int64
    code was 8), the evenly stepping ones none; a value set to a number 2**40 away widens that key alone, one set
    off the step holds that key's codes as offsets."""
    rng = random.Random(3)
    store = HotStore(_Obj)
    truth: list[dict[str, Any]] = []
    views = []
    order = list(range(1024))
    rng.shuffle(order)
    for k, r in enumerate(order):
        obj = _Obj()
        obj.rank, obj.none, obj.big = r, None, 10**12 + 3 * k
        if r % 3 == 0:
            obj.some = r * 7
        truth.append(dict(obj.__dict__))
        views.append(store.add(obj))
    assert _code_bytes(store) == 1024 * 2 * 2  # rank, some (none is one number, big a range)
    assert isinstance(store._codes["big"].values, range)  # type: ignore[union-attr]
    for _ in range(3000):
        k = rng.randrange(1024)
        view, want = views[k], truth[k]
        assert {n: getattr(view, n) for n in want} == want
        change = rng.random()
        if change < 0.2:
            view.big = want["big"] = 10**12 + rng.randrange(2**40)
        elif change < 0.25 and "some" in want:
            del view.some
            del want["some"]
        elif change < 0.3:
            view.some = want["some"] = rng.choice((5, 2**31 + 5, 2**57 + 5, 2**70))
    for view, want in zip(views, truth, strict=True):
        got = store.get(store.index(view)).__dict__
        assert got == want
    assert store._codes["rank"].values.typecode == "h"  # type: ignore[union-attr]
    assert store._codes["big"].values.typecode == "q"  # type: ignore[union-attr]


def test_codes_that_step_evenly_hold_no_bytes_until_one_does_not() -> None:
    """:class:`NarrowInts` (a store's codes) against a plain list: codes a fixed step apart (as :meth:`HotStore.hold`
    adds them: one more, then set) are a ``range``; a code set to what it holds keeps it; one set off the step, an
    absent one appended, or one more off the step turn the codes into offsets that read back every code; a key first
    coded alike then differing on the last rank steps from there."""
    base = 6 << 58
    for spoil in ("set", "absent", "append"):
        codes, truth = NarrowInts.repeat(base, 1, absent=_ABSENT), [base]
        for k in range(1, 3000):
            if k == 1:
                codes.append(base + 5)
            else:
                codes.grow()
                codes[k] = base + 5 * k
            truth.append(base + 5 * k)
        codes[17] = truth[17]
        assert isinstance(codes.values, range) and [codes[k] for k in range(3000)] == truth and len(codes) == 3000
        assert codes[-1] == truth[-1] and _row_bytes(codes) == 0
        if spoil == "set":
            codes[17] = truth[17] = base + 1
        else:
            code = 0 if spoil == "absent" else base - 4
            codes.append(code)
            truth.append(code)
        assert isinstance(codes.values, array) and [codes[k] for k in range(len(truth))] == truth
        assert _row_bytes(codes) == 2 * len(truth)
    store = HotStore(_Obj)
    for r in range(100):
        obj = _Obj()
        obj.rank = 0 if r < 99 else 5
        store.hold(obj)
    held = store._codes["rank"]
    assert isinstance(held, NarrowInts) and [store.get(r).rank for r in range(100)] == [0] * 99 + [5]


def test_job_table_reads_back_every_row_as_written_whatever_the_values() -> None:
    """A job table against the int64 rows set (brute force: a list of every frame as held, compared after all
    were held): 400 random frames of 1-5 rows and nine columns (zeros; whole us in ns; clocks of whole us then,
    from the 200th, of ns; values that cross int8, int16 and int32 in turn; int64's least and greatest values;
    a constant; a column that turns negative; one set to random int64s from the 300th), a seventh of them
    written over. Every row reads back as set; the columns widen as their values call for and no further."""
    from mlprof.results.job_frames import JobFrames

    rng = np.random.default_rng(11)
    columns = ["zero", "us", "clock", "crossing", "extreme", "const", "negative", "random", "one"]
    job = JobFrames()
    held, want = [], []
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    for k in range(400):
        n = int(rng.integers(1, 6))
        clock = 1_700_000_000_000_000_000 + rng.integers(0, 5_000_000, n) * 1000
        frame = pd.DataFrame(
            {
                "zero": np.zeros(n, dtype=np.int64),
                "us": rng.integers(0, 2_000, n) * 1000,
                "clock": clock + (rng.integers(0, 1000, n) if k >= 200 else 0),
                "crossing": rng.integers(0, 1 + [100, 30_000, 2**31 - 2, 2**40][k // 100], n),
                "extreme": rng.choice(np.array([lo, hi, 0, -1], dtype=np.int64), n) if k >= 50 else np.full(n, hi),
                "const": np.full(n, 123_456_789_000),
                "negative": -rng.integers(0, 2**20, n) if k >= 120 else np.full(n, 5),
                "random": rng.integers(lo, hi, n, endpoint=True) if k >= 300 else np.full(n, 7),
                "one": np.ones(n, dtype=np.int64),
            }
        )
        rows = job.hold("t", frame)
        if k % 7 == 3:
            frame = frame.assign(one=frame["one"] + 1, us=frame["us"] + 1000)
            assert job.hold("t", frame, over=rows) is rows
        held.append(rows)
        want.append(frame)
        if k in (99, 199, 299):
            (table,) = job._tables.values()
            got = dict(zip(columns, table.dtypes(), strict=True))
            expect = {99: "int8", 199: "int16", 299: "int32"}[k]
            assert got["zero"] == "const" and got["const"] == "const" and got["crossing"] == expect, (k, got)
            assert got["random"] == "const" and got["one"] == "int8" and got["us"] == "int16", (k, got)
            assert got["clock"] == ("int32" if k < 200 else "int64") and got["extreme"] == "int64", (k, got)
    for rows, frame in zip(held, want, strict=True):
        np.testing.assert_array_equal(rows.values(), frame.to_numpy(np.int64))
        pd.testing.assert_frame_equal(rows.frame(), frame)
    (table,) = job._tables.values()
    assert table.dtypes() == ["const", "int16", "int64", "int64", "int64", "const", "int32", "int64", "int8"]


def test_job_tables_hold_few_bytes_a_rank_of_a_generated_jobs_causes() -> None:
    """1,024 ranks' causes as a generated job has them (one row a rank, 20 columns: 9 the same on every rank, 4
    of two values 2,000-60,000 ns apart, 7 spread over ~4 ms; every value whole us): held, the table reads back
    every rank's row and holds 18 bytes a rank (int32 columns were 80): 14 for the 7 spread columns (int16 steps of
    1,000 ns), one for each two-valued column, none for the others."""
    from mlprof.results.job_frames import JobFrames

    rng = np.random.default_rng(2)
    job = JobFrames()
    columns = [f"c{j}" for j in range(20)]
    want, held = [], []
    for _ in range(1024):
        row = [0, 258_000, 209_000, 424_000, 143_000, 0, 1000, 0, 0]
        row += [int(rng.choice([9_000, 11_000])), int(rng.choice([153_000, 207_000]))]
        row += [int(rng.choice([52_000, 67_000])), int(rng.choice([30_000, 90_000]))]
        row += [int(v) * 1000 for v in rng.integers(1_000, 5_000, 7)]
        frame = pd.DataFrame([row], columns=columns)
        held.append(job.hold("causes", frame))
        want.append(row)
    got = np.concatenate([r.values() for r in held])
    np.testing.assert_array_equal(got, np.array(want, dtype=np.int64))
    assert job.nbytes == 1024 * (4 + 7 * 2), job.nbytes


def test_row_numbers_read_back_every_row_and_widen_in_place() -> None:
    """:class:`NarrowInts` against a plain list: 3,000 rows near the first (int16), then rows 2**20 on
    (int32), then past 2**40 (int64), some below the first: every row reads back by index, slice and
    iteration after each phase, and the array is as narrow as the rows so far allow."""
    rng = random.Random(5)
    rows, truth = NarrowInts(), []
    for spread, typecode in ((20_000, "h"), (2**20, "i"), (2**40, "q")):
        for _ in range(3000):
            row = 50_000 + rng.randrange(-min(spread, 50_000), spread)
            rows.append(row)
            truth.append(row)
        assert [rows[k] for k in range(len(truth))] == truth == list(rows) == rows[:]
        assert rows[5:-7:3] == truth[5:-7:3] and rows[-1] == truth[-1] and len(rows) == len(truth)
        assert isinstance(rows.values, array) and rows.values.typecode == typecode


def _row_bytes(held: Any) -> int:
    """Bytes a holder's rows take (0 while they are a ``range``; an int64 array before :class:`NarrowInts`)."""
    values = getattr(held, "values", held)
    return 0 if isinstance(values, range) else int(values.itemsize * len(values))


def test_rows_that_step_evenly_hold_no_bytes_until_one_does_not() -> None:
    """Rows appended a fixed step apart (4, -3, then a repeated row) are a ``range`` (0 bytes a row) and read back
    by index, negative index, slice and iteration; the first row off the step turns them into int16 distances
    that still read back every row; a first row alone, and two equal rows, read back too."""
    for step in (4, -3):
        truth = [100_000 + step * k for k in range(5000)]
        rows = NarrowInts(truth)
        assert _row_bytes(rows) == 0 and list(rows) == truth and rows[-1] == truth[-1] and rows[7] == truth[7]
        assert rows[10:20:3] == truth[10:20:3] and rows[::-1] == truth[::-1] and len(rows) == 5000
        rows.append(100_001)
        truth.append(100_001)
        assert list(rows) == truth and [rows[k] for k in range(len(truth))] == truth and rows[-2:] == truth[-2:]
        assert _row_bytes(rows) == 2 * len(truth)
    # a value more than int64 from the first one held: one clear error, the values held unchanged (not a
    # StopIteration, which a generator feeding the values would turn into a RuntimeError)
    far = NarrowInts([5, 9])
    with pytest.raises(OverflowError, match="not within int64"):
        far.append(5 + 2**63)
    with pytest.raises(OverflowError, match="not within int64"):
        NarrowInts(v for v in (0, 1, -(2**63) - 1))
    assert list(far) == [5, 9]
    same = NarrowInts([7, 7, 8])
    assert list(same) == [7, 7, 8] and same[1] == 7 and list(NarrowInts([9])) == [9] and not list(NarrowInts())


def test_report_rows_and_rank_findings_hold_at_most_2_bytes_a_row() -> None:
    """4,096 byte strings held as :class:`RawRows` a report row each (interleaved with a second one's, as a
    job's report writes its per-rank rows: rows 2 apart) and 1,024 lists as :class:`SpilledLists` (the ranks'
    findings, with a value spilled between some): each read back as held; the report's rows hold no bytes a row
    (a ``range``), the findings 2 bytes a list (an int64 row was 8)."""
    from mlprof.results.spill import RawRows, SpilledLists

    datas = [f"row {k} ".encode() * (k % 5 + 1) for k in range(4096)]
    raw, other = RawRows(), RawRows()
    for data in datas:
        raw.append(data)
        other.append(data[:3])
    lists = SpilledLists([[k, "x" * (k % 3)] for k in range(512)])
    for k in range(512, 1024):
        lists.append([k, "x" * (k % 3)])
        if k % 3 == 0:
            spill(k)
    assert list(raw) == datas and raw[17] == datas[17] and raw[100:103] == datas[100:103]
    assert list(other) == [d[:3] for d in datas]
    assert [lists[k] for k in range(1024)] == [[k, "x" * (k % 3)] for k in range(1024)]
    assert _row_bytes(raw._items) == 0 and _row_bytes(other._items) == 0
    assert _row_bytes(lists._held) == 2 * 1024


def test_spill_offsets_read_back_every_offset_in_under_3_bytes_a_row() -> None:
    """:class:`_Offsets` against a plain list: 60,000 offsets of values spilled one after another (mostly
    0.1-3 KB, one in 500 of 50-500 KB), a new file every ~7,000 rows (offsets from 0 again, within a block) and
    runs of rows in memory (offset 0): every offset reads back as appended, and 60,000 offsets of ~0.9 KB values
    (a job's client's) take < 2.7 bytes a row traced (uint32 offsets were 4)."""
    import tracemalloc

    from mlprof.results.spill import _Offsets

    rng = random.Random(9)
    offsets, truth, end = _Offsets(), [], 0
    for k in range(60_000):
        if k % 7_001 == 7_000:
            end = 0  # a forked child's file
        offset = 0 if 30_000 <= k < 30_037 else end
        offsets.append(offset)
        truth.append(offset)
        end += rng.randrange(50_000, 500_000) if rng.random() < 0.002 else rng.randrange(100, 3000)
    assert [offsets[k] for k in range(len(truth))] == truth and len(offsets) == len(truth)
    assert 0 < len(offsets.wide) < 400
    tracemalloc.start()
    small, end = _Offsets(), 0
    for _ in range(60_000):
        small.append(end)
        end += rng.randrange(100, 1700)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert held / 60_000 < 2.7 and not small.wide, held / 60_000
