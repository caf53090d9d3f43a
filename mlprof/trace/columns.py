"""Turning lists of decoded Python values into compact numpy columns.

Strings become integer codes into one :class:`SymbolTable` per trace (names repeat:
a 2 GB trace has millions of events but a few thousand distinct kernel names), so a
name column costs 4 bytes per event and filters are integer comparisons. Integer
arguments arrive as ``int``, ``str``, ``float``, ``None`` or integers above int64
(``Comms Id``); :func:`to_int64` takes the fast path when they are plain ints and
converts value by value only when they are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: the trace reader's column build needs numpy only
    import pandas as pd

MISSING_INT = -1
"""Missing integer argument (``correlation``, ``stream``, ``bytes`` ...)."""

_INT64_MAX = 2**63 - 1


class SymbolTable:
    """Interns strings to dense int32 codes; code 0 is the empty string."""

    def __init__(self) -> None:
        self._index: dict[str | None, int] = {"": 0, None: 0}  # None: the empty string too (see encode)
        self.strings: list[str] = [""]

    @classmethod
    def of(cls, strings: list[str]) -> SymbolTable:
        """The table whose codes are the positions in ``strings`` (distinct, ``""`` first), as built elsewhere."""
        if not strings or strings[0] != "":
            raise ValueError("a symbol table starts with the empty string")
        table = cls()
        table.strings = strings
        table._index = {text: code for code, text in enumerate(strings)}
        if len(table._index) != len(strings):
            raise ValueError("symbol strings repeat")
        table._index[None] = 0
        return table

    def code(self, text: str) -> int:
        found = self._index.get(text)
        if found is None:
            found = len(self.strings)
            self._index[text] = found
            self.strings.append(text)
        return found

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        """Codes for ``values``; ``None`` is the empty string, other types via ``str``."""
        if len(values) == 0:
            return np.empty(0, dtype=np.int32)
        if values[0] is None and values.count(None) == len(values):  # an argument most events lack
            return np.zeros(len(values), dtype=np.int32)
        found = self.encode_text(values)
        if found is not None:
            return found
        import pandas as pd

        local_codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
        mapping = np.fromiter(
            (self.code(u if isinstance(u, str) else _text(u)) for u in uniques),
            dtype=np.int32,
            count=len(uniques),
        )
        mapping = np.append(mapping, np.int32(0))  # the -1 sentinel (None/NaN) maps to ""
        return mapping[local_codes]

    def encode_text(self, values: Sequence[Any]) -> np.ndarray | None:
        """:meth:`encode` of values that are all text or None; None if one is not.

        Once a trace's names are known (after its first slices), each value is looked up once: no distinct values
        are found first."""
        try:
            return np.fromiter(map(self._index.__getitem__, values), dtype=np.int32, count=len(values))
        except (KeyError, TypeError):  # text not seen yet, or not text
            pass
        text = factorize_text(values)
        if text is None:
            return None
        codes, distinct = text
        found = np.fromiter((0 if u is None else self.code(u) for u in distinct), dtype=np.int32, count=len(distinct))
        return found[codes]

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        """A pandas Categorical of the strings present, categories sorted.

        Sorting makes the tables independent of the order strings were first met,
        so a trace read by worker processes is identical to one read sequentially.
        """
        # Codes are dense in [0, len(strings)): a count finds the used ones (sorted) in one
        # pass; np.unique hashes or sorts (~20x slower on a million codes).
        used = np.flatnonzero(np.bincount(codes, minlength=len(self.strings)))
        strings = np.array([self.strings[i] for i in used], dtype=object)
        order = np.argsort(strings, kind="stable")
        remap = np.zeros(len(self.strings), dtype=np.int32)
        remap[used[order]] = np.arange(len(used), dtype=np.int32)
        # An Index, not a list: pandas infers and checks a list of categories at ~10x the cost.
        import pandas as pd

        return pd.Categorical.from_codes(remap[codes], categories=pd.Index(strings[order].tolist()))


def factorize_text(values: Sequence[Any]) -> tuple[np.ndarray, list[str | None]] | None:
    """Codes into the distinct values of a column of ``str``/``None``, first seen first.

    Hashing in a dict is done in C (about twice as fast as ``pd.factorize`` on an object
    array, which must be built first). Returns ``None`` when any value is not a ``str``
    or ``None`` (numbers that compare equal across types, NaN), for the caller's general path.
    """
    try:
        index: dict[Any, int] = dict.fromkeys(values, 0)
    except TypeError:  # unhashable junk
        return None
    if not all(u is None or type(u) is str for u in index):
        return None
    for i, u in enumerate(index):
        index[u] = i
    codes = np.fromiter(map(index.__getitem__, values), dtype=np.intp, count=len(values))
    return codes, list(index)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def to_int64(values: Sequence[Any], missing: int = MISSING_INT) -> np.ndarray:
    """Integers as int64; ``None``, non-numeric text and out-of-range values become ``missing``."""
    n = len(values)
    if n and values[0] is None and values.count(None) == n:  # an argument this family lacks
        return np.full(n, missing, dtype=np.int64)
    try:  # fast path: plain ints only (most columns of most families)
        return np.fromiter(values, dtype=np.int64, count=n)
    except (TypeError, ValueError, OverflowError):
        pass
    try:  # ints with gaps: a generator is cheaper than any type sorting here
        return np.fromiter((missing if v is None else v for v in values), dtype=np.int64, count=n)
    except (TypeError, ValueError, OverflowError):
        pass
    mixed = _mixed_to_int64(values, missing)
    if mixed is not None:
        return mixed
    return np.fromiter((_int_or(v, missing) for v in values), dtype=np.int64, count=n)


_KIND_OF_TYPE: dict[type, int] = {int: 0, str: 1, type(None): 2}
_INT64_MIN = -(2**63)


def _mixed_to_int64(values: Sequence[Any], missing: int) -> np.ndarray | None:
    """:func:`_int_or` of every value, vectorised, for columns of ``int``, ``str`` and ``None``.

    :func:`to_int64` calls it once some value did not convert as numpy converts it
    (``"stream 7"``), when the old per-value path applied :func:`_int_or` to every value.
    Ints are converted as one array, text once per distinct string. Returns ``None``
    (the caller takes the per-value path) for other types or ints beyond int64.
    """
    n = len(values)
    try:
        kind = np.fromiter(map(_KIND_OF_TYPE.__getitem__, map(type, values)), dtype=np.int8, count=n)
    except KeyError:
        return None
    arr = np.fromiter(values, dtype=object, count=n)
    out = np.full(n, missing, dtype=np.int64)
    is_int = kind == 0
    if is_int.any():
        try:
            ints = arr[is_int].astype(np.int64)
        except OverflowError:
            return None
        out[is_int] = np.where(ints == _INT64_MIN, missing, ints)  # _int_or's range excludes -2**63
    is_str = kind == 1
    if is_str.any():
        text = factorize_text(arr[is_str].tolist())  # all str: never None
        assert text is not None
        codes, uniques = text
        out[is_str] = np.array([_int_or(t, missing) for t in uniques], dtype=np.int64)[codes]
    return out


def _int_or(value: Any, missing: int) -> int:
    if value is None or isinstance(value, bool):
        return missing
    if isinstance(value, int):
        return value if -_INT64_MAX <= value <= _INT64_MAX else missing
    if isinstance(value, float):
        return int(value) if value == value and abs(value) < _INT64_MAX else missing
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("stream "):
            text = text[7:]
        try:
            parsed = int(text)
        except ValueError:
            return missing
        return parsed if -_INT64_MAX <= parsed <= _INT64_MAX else missing
    return missing
