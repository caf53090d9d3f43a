"""A sequence of ints held as narrow as its values: what a job's client keeps one number a rank in.

A job's client holds a few numbers for each of its ranks to the end (a held rank's codes in
:class:`mlprof.results.job_frames.HotStore`, the spill-table rows of a report's per-rank rows or of the ranks'
findings in :mod:`mlprof.results.spill`). Those numbers mostly step evenly from rank to rank, or lie close to
one another: held as a ``range`` while they step evenly (no bytes a value), then as offsets from the first value
in the narrowest of int16, int32 and int64, they take 0 or 2 bytes a rank where an int64 array took 8.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

_LEAST = {"h": -(2**15), "i": -(2**31), "q": -(2**63)}
"""The least value of each typecode, never an offset: it stands for the sequence's ``absent`` value."""
_WIDER = ("h", "i", "q")


class NarrowInts(Sequence[int]):
    """Ints appended or set in place, held as a ``range`` while they step evenly (none of them ``absent``), then as
    offsets from the first value held in the narrowest of int16, int32 and int64 that every offset so far fits,
    widened in place when one does not.

    ``absent``: a value held as the array type's least value, not as an offset from the others (a store's "no
    value here" code, far from its other codes, would otherwise widen every rank's offset to int64)."""

    __slots__ = ("absent", "base", "values")

    def __init__(self, values: Iterable[int] = (), absent: int | None = None) -> None:
        self.absent = absent
        self.base: int | None = None
        """The value offsets are from (None until one not ``absent`` is held as an offset)."""
        self.values: range | array[int] = range(0)
        """The values while they step evenly, else their offsets from :attr:`base`."""
        for value in values:
            self.append(value)

    @classmethod
    def repeat(cls, value: int, n: int, absent: int | None = None) -> NarrowInts:
        """``n`` times ``value`` (one array made at once, not ``n`` appends)."""
        out = cls(absent=absent)
        if n <= 1 and value != absent:
            out.values = range(value, value + n)
        elif value == absent:
            out.values = array("h", [_LEAST["h"]]) * n
        else:
            out.base, out.values = value, array("h", [0]) * n
        return out

    def append(self, value: int) -> None:
        values = self.values
        if isinstance(values, range):
            n = len(values)
            if value != self.absent:
                step = value - values[-1] if n == 1 else values.step if n else 1
                if step and (n == 0 or value == values[-1] + step):
                    self.values = range(values.start if n else value, value + step, step)
                    return
            self._uneven()
        self._put(None, value)

    def grow(self) -> None:
        """One more value, set right after (:meth:`HotStore.hold`): while the values step evenly, the next step;
        else ``absent``."""
        values = self.values
        if isinstance(values, range) and len(values) >= 2:
            self.values = range(values.start, values.stop + values.step, values.step)
        else:
            assert self.absent is not None
            self.append(self.absent)

    def __setitem__(self, i: int, value: int) -> None:
        values = self.values
        if isinstance(values, range):
            if values[i] == value:
                return
            self._uneven()
        self._put(i, value)

    def _uneven(self) -> None:
        """Hold the values as offsets from now on."""
        even = self.values
        self.values = array("h")
        for value in even:
            self._put(None, value)

    def _put(self, i: int | None, value: int) -> None:
        """``value`` appended (``i`` None) or set at ``i``, the array widened first where its offset does not fit."""
        values = self.values
        assert isinstance(values, array)
        if value == self.absent:
            offset = _LEAST[values.typecode]
        else:
            if self.base is None:
                self.base = value
            offset = value - self.base
            if not _LEAST[values.typecode] < offset <= -1 - _LEAST[values.typecode]:
                typecode = next((t for t in _WIDER if _LEAST[t] < offset <= -1 - _LEAST[t]), None)
                if typecode is None:  # (a StopIteration here would end whatever generator fed the value)
                    raise OverflowError(f"{value} is not within int64 of the first value held, {self.base}")
                old, new = _LEAST[values.typecode], _LEAST[typecode]
                values = self.values = array(typecode, [new if v == old else v for v in values])
        if i is None:
            values.append(offset)
        else:
            values[i] = offset

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> list[int]: ...

    def __getitem__(self, i: int | slice) -> int | list[int]:
        if isinstance(i, slice):
            return [self._value(v) for v in self.values[i]] if isinstance(self.values, array) else list(self.values[i])
        v = self.values[i]
        return self._value(v) if isinstance(self.values, array) else v

    def _value(self, offset: int) -> int:
        if offset == _LEAST[self.values.typecode]:  # type: ignore[union-attr]
            assert self.absent is not None
            return self.absent
        assert self.base is not None
        return self.base + offset

    def __iter__(self) -> Iterator[int]:
        values = self.values
        if isinstance(values, range):
            yield from values
            return
        for offset in values:
            yield self._value(offset)


__all__ = ["NarrowInts"]
