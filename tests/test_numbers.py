"""Exact microsecond -> nanosecond conversion of raw JSON number text."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mlprof.trace import numbers
from mlprof.trace.numbers import MISSING_NS, in_sorted, raw_us_to_ns, sorted_inverse, sorted_unique


def test_float_microseconds_keep_every_nanosecond() -> None:
    # float64 would turn this into ...582.9880 +- 0.125 us; we must not.
    out = raw_us_to_ns([b"1712195495505582.988", b"1712195495505582.989"])
    assert out.tolist() == [1712195495505582988, 1712195495505582989]


def test_integers_fractions_signs_and_missing() -> None:
    raws = [b"5", b"", b"4.9", b"-3.25", b"1623143093496523", b"1.23456", b"0.0005", b"7."]
    assert raw_us_to_ns(raws).tolist() == [5000, MISSING_NS, 4900, -3250, 1623143093496523000, 1235, 1, 7000]


def test_odd_texts_take_the_careful_path() -> None:
    raws = [b"1e3", b'"12"', b"abc", b"12.3.4", b"nan", b"123456789012345678"]
    assert raw_us_to_ns(raws).tolist() == [1_000_000, 12_000, MISSING_NS, MISSING_NS, MISSING_NS, MISSING_NS]


@given(st.lists(st.decimals(min_value=-(10**15), max_value=10**15, places=3, allow_nan=False), min_size=1))
def test_matches_decimal_arithmetic(values: list[Decimal]) -> None:
    raws = [format(v, "f").encode() for v in values]
    expected = [int(v * 1000) for v in values]
    assert raw_us_to_ns(raws).tolist() == expected


def test_empty_input() -> None:
    assert raw_us_to_ns([]).dtype == np.int64


def test_sorted_unique_matches_numpy_unique() -> None:
    """The sort-based replacement for plain ``np.unique`` gives numpy's own answer (values, dtype, NaN)."""
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 3, 50, 5000):
        for dtype in (np.int64, np.int32, np.float64):
            values = rng.integers(-40, 40, size=n).astype(dtype)
            if dtype == np.float64 and n > 3:
                values[::4] = np.nan
            got, want = sorted_unique(values), np.unique(values)
            assert got.dtype == want.dtype
            assert np.array_equal(got, want, equal_nan=True)


def test_sorted_inverse_and_in_sorted_match_numpy() -> None:
    """np.unique(return_inverse=True) and np.isin by a sort and a search: numpy's own answers, int64 positions."""
    rng = np.random.default_rng(11)
    for n in (0, 1, 2, 3, 50, 5000):
        for dtype in (np.int64, np.int32, np.int8):
            values = rng.integers(-40, 40, size=n).astype(dtype)
            uniques, inverse = sorted_inverse(values)
            want_u, want_inv = np.unique(values, return_inverse=True)
            assert uniques.dtype == want_u.dtype and np.array_equal(uniques, want_u)
            assert inverse.dtype == np.int64 and np.array_equal(inverse, want_inv)
            for m in (0, 1, 7, 60):
                pool = sorted_unique(rng.integers(-50, 50, size=m).astype(dtype))
                assert np.array_equal(in_sorted(values, pool), np.isin(values, pool))


_EPOCH_US = st.integers(min_value=-(10**17), max_value=10**17)


@given(st.lists(_EPOCH_US, min_size=1), st.booleans())
def test_one_call_layouts_match_decimal_arithmetic(whole: list[int], three_decimals: bool) -> None:
    """All-integer and all-three-decimal columns (what Kineto writes) take the one-call path, exactly."""
    values = [Decimal(v) / 1000 if three_decimals else Decimal(v) for v in whole]
    raws = [format(v, ".3f" if three_decimals else "f").encode() for v in values]
    limit = 2**62 - 1
    expected = [int(v * 1000) if abs(v * 1000) <= limit else MISSING_NS for v in values]
    assert numbers._plain_to_ns(b",".join(raws), len(raws)) is not None
    assert raw_us_to_ns(raws).tolist() == expected


@given(st.lists(st.tuples(_EPOCH_US, st.integers(min_value=0, max_value=3)), min_size=1))
def test_integers_among_one_to_three_decimals_take_the_one_call_path(values: list[tuple[int, int]]) -> None:
    """Integers and values with one to three decimals in one column (``1694128201426556.0`` next to ``"dur": 5``,
    as the DLRM traces write) take the one-call path too, exactly."""
    decimals = [Decimal(v) / 10**k for v, k in values]
    raws = [format(d, f".{k}f").encode() for d, (_, k) in zip(decimals, values, strict=True)]
    limit = 2**62 - 1
    expected = [int(d * 1000) if abs(d * 1000) <= limit else MISSING_NS for d in decimals]
    assert numbers._plain_to_ns(b",".join(raws), len(raws)) is not None
    assert raw_us_to_ns(raws).tolist() == expected
    assert numbers._slow_parse(raws).tolist() == expected


@given(st.lists(st.sampled_from([b"", b"-", b"-.123", b".5", b"1e3", b'"7"', b"1-2", b"--1", b"9" * 19, b"12.5"])))
def test_one_call_path_declines_what_it_cannot_parse(odd: list[bytes]) -> None:
    raws = [b"1712195495505582.988", *odd]
    fast = numbers._plain_to_ns(b",".join(raws), len(raws))
    one_by_one = numbers._slow_parse(raws)  # the per-value regex path
    assert fast is None or fast.tolist() == one_by_one.tolist()
    assert raw_us_to_ns(raws).tolist() == one_by_one.tolist()


_NUMBERISH = st.text(alphabet='0123456789.-+eE "_x', max_size=24).map(str.encode)


@given(st.lists(st.one_of(_NUMBERISH, st.sampled_from([b"1.0000000000000002e+16", b"null", b"1.5e3", b"2.00001x"]))))
def test_each_value_reads_the_same_whatever_its_neighbours(raws: list[bytes]) -> None:
    """A value's nanoseconds do not depend on which other values share its batch: the vector paths give what
    the per-value path gives for each text alone (found by the fuzz test: ``1.0000000000000002e+16`` read as
    1 us next to plain numbers, as missing next to ``null``)."""
    assert raw_us_to_ns(raws).tolist() == numbers._slow_parse(raws).tolist()
