"""Exact conversion of JSON timestamps (microseconds) to int64 nanoseconds.

Kineto writes ``ts``/``dur`` either as integer microseconds (2021-2023 traces) or as
float microseconds with three decimals (2024+, ``1712195495505582.988``). A float64
has 53 bits of mantissa, so epoch microseconds lose ~0.25 us of precision: enough to
flip which of two back-to-back kernels ends first. We therefore never go through
float for decimal text: the raw JSON texts are split at the dot and both halves are
parsed as integers by numpy's C string routines.

Anything unusual (exponent notation, quoted numbers, junk) takes a per-value path
that rounds through float, or marks the value missing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

MISSING_NS = np.iinfo(np.int64).min
"""Sentinel for an absent or unreadable ``ts``/``dur``."""

TIME_LIMIT_NS = 2**62 - 1
"""Largest magnitude of a time or duration we accept (~146 years): within it, ``ts + dur``
and the difference of any two times fit in int64. Beyond it a value is corrupt and
is treated as unreadable, instead of wrapping around silently."""
_WHOLE_LIMIT_US = TIME_LIMIT_NS // 1000


def raw_us_to_ns(raws: Sequence[bytes | memoryview]) -> np.ndarray:
    """Parse JSON number texts in microseconds into int64 nanoseconds.

    Empty texts (absent fields), texts that are not numbers and values beyond
    :data:`TIME_LIMIT_NS` become :data:`MISSING_NS`: a corrupt timestamp drops that
    one event, not the trace.
    Fraction digits past the nanosecond are rounded half up.
    """
    n = len(raws)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    joined = b",".join(raws)
    fast = _plain_to_ns(joined, n)
    if fast is not None:
        return fast
    texts = np.array(joined.split(b","))
    if len(texts) != n:  # a comma inside a value
        return _slow_parse(raws)
    empty = np.strings.str_len(texts) == 0
    if empty.any():
        texts = np.where(empty, b"0", texts)
    odd = np.empty(0, dtype=np.intp)  # values whose fraction is not all digits
    try:
        if b"." not in joined:
            whole = texts.astype(np.int64)
            in_range = (whole >= -_WHOLE_LIMIT_US) & (whole <= _WHOLE_LIMIT_US)
            out = np.where(in_range, whole, 0) * 1000
        else:
            int_part, _, frac = np.strings.partition(texts, b".")
            whole = int_part.astype(np.int64)
            in_range = (whole >= -_WHOLE_LIMIT_US) & (whole <= _WHOLE_LIMIT_US)
            whole = np.where(in_range, whole, 0)
            # A fraction that is not all digits ("1.5e3", "1.00001x") is read value by value below:
            # only its first four bytes would be looked at here, and its result would then depend
            # on whether a neighbour in the same batch sent the whole batch down the careful path.
            odd = np.flatnonzero(~np.strings.isdigit(frac) & (np.strings.str_len(frac) > 0))
            if len(odd):
                frac = np.where(np.strings.isdigit(frac), frac, b"")
            frac4 = np.strings.ljust(frac, 4, b"0").astype("S4")
            frac4 = np.where(np.strings.str_len(frac4) == 0, b"0", frac4)
            frac_ns = (frac4.astype(np.int64) + 5) // 10
            negative = np.strings.startswith(int_part, b"-")
            out = np.where(negative, whole * 1000 - frac_ns, whole * 1000 + frac_ns)
    except (ValueError, OverflowError):
        return _slow_parse(raws)
    out[empty | ~in_range | (out > TIME_LIMIT_NS) | (out < -TIME_LIMIT_NS)] = MISSING_NS
    if len(odd):
        out[odd] = _slow_parse([raws[i] for i in odd.tolist()])
    return out


def plain_us_to_ns(raws: Sequence[bytes | memoryview]) -> np.ndarray | None:
    """:func:`raw_us_to_ns` of texts all in one of the common layouts (see :func:`_plain_to_ns`), else None.

    Each value's result is its own (never depends on the other texts), so texts of several columns parse in one call.
    """
    n = len(raws)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    return _plain_to_ns(b",".join(raws), n)


_PLAIN_CHARS = b"0123456789-.,"
_POWERS_OF_TEN = np.array([1, 10, 100, 1000], dtype=np.int64)


def _plain_to_ns(joined: bytes, n: int) -> np.ndarray | None:
    """The common layouts parsed in one C call, or ``None`` for :func:`raw_us_to_ns`'s general path.

    All integers (2021-2023 Kineto) or all with exactly three decimals (2024+): with the dots
    removed, the latter are the nanoseconds themselves. Integers and values with one to three
    decimals mixed (``1694128201426556.0`` with ``"dur": 5``): each without its dot, times
    ``10 ** (3 - decimals)``. ``np.fromstring`` parses int64 text exactly, ~10x faster than
    splitting into an array of byte strings and ``astype``. Values that could pass int64 before
    the range check take the general path.
    """
    if joined.translate(None, _PLAIN_CHARS):  # a byte other than these (~4x faster than a table lookup)
        return None
    buf = np.frombuffer(joined, dtype=np.uint8)
    commas = np.flatnonzero(buf == ord(","))
    if len(commas) != n - 1:
        return None
    ends = np.append(commas, len(buf))
    starts = np.concatenate(([0], commas + 1))
    lengths = ends - starts
    if lengths.min() == 0 or lengths.max() > 21:  # sign, 19 digits and a dot at most
        return None
    digits, first = lengths, starts  # of each value: its digits (and a dot), where its first digit is
    if b"-" in joined:
        dashes = np.flatnonzero(buf == ord("-"))
        signed = np.isin(starts, dashes)
        if int(signed.sum()) != len(dashes) or bool((lengths[signed] < 2).any()):
            return None  # a sign only first in a value, and never a whole value
        digits, first = lengths - signed, starts + signed
    scale = None  # where the values' decimals differ: 10 ** (3 - decimals) of each value
    if b"." not in joined:
        micro = True
    elif len(dots := np.flatnonzero(buf == ord("."))) == n and bool((ends - dots == 4).all()):
        micro, joined, digits = False, joined.replace(b".", b""), digits - 1
    else:  # integers and 1-3 decimals mixed (``1694128201426556.0``, ``"dur": 5``): each without its dot, scaled
        owner = np.searchsorted(ends, dots)  # the value of each dot
        decimals = ends[owner] - dots - 1
        if bool((owner[1:] == owner[:-1]).any()) or decimals.min() < 1 or decimals.max() > 3:
            return None  # two dots in a value, or a dot last or followed by more than three digits
        if bool((dots <= first[owner]).any()):
            return None  # no digit before the dot
        exponent = np.full(n, 3, dtype=np.intp)
        exponent[owner] = 3 - decimals
        scale = _POWERS_OF_TEN[exponent]
        digits = digits.copy()
        digits[owner] -= 1
        micro, joined = False, joined.replace(b".", b"")
    top = int(digits.max())
    if top > 19 or (top == 19 and bool((buf[first[digits == 19]] >= ord("9")).any())):
        return None  # could pass int64 (9.2e18); below 9e18 every 19-digit value fits
    try:
        values = np.fromstring(joined, dtype=np.int64, sep=",")
    except ValueError:
        return None
    if len(values) != n:
        return None
    if scale is not None:  # ns = value * scale, where that stays within the limit
        in_range = np.abs(values) <= TIME_LIMIT_NS // scale
        values = np.where(in_range, values, 0) * scale
        values[~in_range] = MISSING_NS
        return values
    limit = _WHOLE_LIMIT_US if micro else TIME_LIMIT_NS
    if values.min() >= -limit and values.max() <= limit:  # all within range (every real trace): no masks
        if micro:
            values *= 1000
        return values
    if micro:
        in_range = (values >= -_WHOLE_LIMIT_US) & (values <= _WHOLE_LIMIT_US)
        values = np.where(in_range, values, 0) * 1000
        values[~in_range] = MISSING_NS
    values[(values > TIME_LIMIT_NS) | (values < -TIME_LIMIT_NS)] = MISSING_NS
    return values


_DECIMAL = re.compile(rb"(-?)(\d+)(?:\.(\d*))?")


def _parse_one(text: bytes) -> int:
    """Exact for plain decimals, rounded through float for exponent notation."""
    text = text.strip().strip(b'"')
    match = _DECIMAL.fullmatch(text)
    if match:
        sign, whole, frac = match.groups()
        frac4 = (frac or b"").ljust(4, b"0")[:4]
        value = int(whole) * 1000 + (int(frac4) + 5) // 10
        value = -value if sign else value
    else:
        try:
            value = round(float(text) * 1000)
        except (ValueError, OverflowError):
            return int(MISSING_NS)
    return value if abs(value) <= TIME_LIMIT_NS else int(MISSING_NS)


def _slow_parse(raws: Sequence[bytes | memoryview]) -> np.ndarray:
    return np.fromiter((_parse_one(bytes(r)) for r in raws), dtype=np.int64, count=len(raws))


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for a 1-D numeric array, by sorting.

    numpy >= 2.3 finds plain ``np.unique`` values with a hash table, which on this
    machine takes ~0.7 s for 800 k distinct int64 against ~6 ms for a sort; the
    attribution and causes call it on every range boundary of a trace.

    The sort is numpy's stable one (timsort for int64), which merges runs already in order: the
    callers pass concatenations of sorted arrays (each layer's starts, its ends, the windows), and
    on tiled x4 the attribution's 810 k boundaries sort in 3.4 ms against 42.5 ms with the default
    quicksort, the causes' 965 k in 4.9 against 50.8 ms (on random int64 it is ~20% slower). Integers
    sort to one order whichever algorithm; among equal floats (0.0 and -0.0) the first given is kept.
    """
    flat = np.sort(np.asarray(values).ravel(), kind="stable")
    if len(flat) < 2:
        return flat
    keep = np.empty(len(flat), dtype=bool)
    keep[0] = True
    np.not_equal(flat[1:], flat[:-1], out=keep[1:])
    if flat.dtype.kind == "f":  # np.unique keeps one NaN (sorted last)
        nan = np.isnan(flat)
        keep &= ~nan
        if nan.any():
            keep[np.flatnonzero(nan)[0]] = True
    return flat[keep]


def sorted_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for a 1-D integer array, by sorting (see :func:`sorted_unique`):
    each value's position among the distinct values (int64). numpy's own took 11-12 ms for the 89 k device ops'
    streams and names of tiled x4 (sorted_unique and a search: ~3 ms)."""
    uniques = sorted_unique(values)
    return uniques, np.searchsorted(uniques, values).astype(np.int64, copy=False)


def in_sorted(values: np.ndarray, uniques: np.ndarray) -> np.ndarray:
    """``np.isin(values, uniques)`` where ``uniques`` is sorted and distinct (:func:`sorted_unique`'s): one search
    of each value (np.isin sorts both again: 17 ms for tiled x4's 235 k runtime calls' correlation ids)."""
    if len(uniques) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(uniques, values), len(uniques) - 1)
    return uniques[at] == values
