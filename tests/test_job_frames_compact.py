"""How few bytes a rank a job's client holds in :mod:`mlprof.results.job_frames` and :mod:`mlprof.results.spill`:
each compact holder read back against a brute-force reference (a plain list or the int64 rows as set), over
values that force every widening."""

from __future__ import annotations

import random
from typing import Any

from mlprof.results.job_frames import HotStore, _Codes


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
            values: Any = getattr(codes, "values", codes)
            total += len(values) * values.itemsize
    return total


def test_codes_read_back_every_code_set_and_widen_in_place() -> None:
    """:class:`_Codes` against a plain list over 20,000 random appends and sets: absent codes among them, codes a
    few apart (int16 offsets), then ones 2**20 apart (int32), then 2**40 apart and up to 2**62 (int64): every code
    reads back as set after each phase, and the array widens only when an offset does not fit."""
    rng = random.Random(7)
    base = 6 << 58
    for first in (0, base):  # created absent (a key first set on a later rank), or from a code
        codes, truth = _Codes(first, 3), [first] * 3
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
    """1,024 objects held in a :class:`HotStore` with a rank number, a big int, a None, an int that only some
    have and one that grows past 2**31 then 2**57 (held as it is): read back after random reads and sets in
    place, every object's dict equals a brute-force copy of what was set; held, the rank number's codes take 2
    bytes a rank (an int64 code was 8), a value set to a number 2**40 away widens that key alone."""
    rng = random.Random(3)
    store = HotStore(_Obj)
    truth: list[dict[str, Any]] = []
    views = []
    for r in range(1024):
        obj = _Obj()
        obj.rank, obj.none, obj.big = r, None, 10**12 + 3 * r
        if r % 3 == 0:
            obj.some = r * 7
        truth.append(dict(obj.__dict__))
        views.append(store.add(obj))
    assert _code_bytes(store) == 1024 * 2 * 3  # rank, big, some (none is one number)
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
