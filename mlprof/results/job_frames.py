"""A job's per-rank tables (steps, causes) held as rows of one job table each, not as a DataFrame per rank.

A job's client keeps every rank's per-step attribution and causes for the cross-rank rules
and the report. As one small DataFrame per rank they cost ~5 KB each of pandas objects
(block managers, indexes, the column names' lookup table each frame builds on first use)
for ~100-200 bytes of numbers: ~10 KB a rank, 10 MB at 1,024 ranks. Here every rank's
table of the same columns is a slice of one growable int64 matrix of the job
(:class:`JobFrames`), and :class:`HeldRank` (a :class:`RankAnalysis`) hands out a DataFrame
built from its rows on each read (~6 us: one block, the job's one columns index).

Only tables that come back exactly are held this way: every column int64, a default
``RangeIndex``, unique column labels, no ``attrs``; any other table is kept as it is.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mlprof.results.measurements import RankAnalysis
from mlprof.results.narrow_ints import NarrowInts
from mlprof.results.spill import Cold, ReadOnAccess, Spilled, SpilledRun, cold_fields, hold_cold, same_handle


class _Table:
    """The rows of one kind of table (one column set) of every rank, column by column as narrow as its values:
    a column is held as its first value (its *base*), a scale (1,000 while every value's distance from the base
    is a whole number of 1,000s: ns read from a trace of whole us) and each row's distance from the base over
    the scale in the narrowest of int8, int16, int32 and int64 that fits every row so far; a column whose every
    value is its base holds no bytes a row. A job's steps and causes are mostly zeros and ns of similar size on
    every rank, its step starts clocks close to one another: ~0.4 of int32 columns' bytes on a generated job,
    none of a column of zeros. The columns of one width are one matrix (:attr:`groups`); a value that does not
    fit its column's width or scale widens the column (the table's rows held again); read back, the rows are
    int64 as written (arithmetic in int64, wrapping: exact for any int64 values)."""

    __slots__ = ("base", "capacity", "columns", "groups", "high", "kind", "low", "n", "scale")

    def __init__(self, columns: pd.Index) -> None:
        self.columns = columns
        self.n = 0
        self.capacity = 16
        self.base = np.zeros(len(columns), dtype=np.int64)
        self.scale = np.full(len(columns), _SCALE, dtype=np.int64)
        self.kind = np.zeros(len(columns), dtype=np.int8)
        """Per column, its width: an index in :data:`_KINDS` (0: every value is the base, no bytes a row)."""
        self.low, self.high = _LOW[self.kind], _HIGH[self.kind]
        """Per column, the least and greatest steps its width holds."""
        self.groups: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        """Per width held: its columns, their matrix (a row per row), their bases and scales (None: all 1)."""

    @property
    def nbytes(self) -> int:
        return sum(int(matrix.nbytes) for _, matrix, _, _ in self.groups)

    def dtypes(self) -> list[str]:
        """Each column's width as held: ``"const"`` (its base on every row) or a numpy integer type's name."""
        return ["const" if k == 0 else np.dtype(_KINDS[k]).name for k in self.kind]

    def append(self, values: np.ndarray) -> Rows:
        start, k = self.n, len(values)
        if start + k > self.capacity:
            self.capacity = max(2 * self.capacity, start + k)
            self.groups = [(at, _grown(m, self.capacity, start), b, sc) for at, m, b, sc in self.groups]
        self.n = start + k
        self.write(start, values)
        return Rows(self, start, k)

    def write(self, start: int, values: np.ndarray) -> None:
        """``values`` (int64, a row per row) over the rows from ``start`` (rows below :attr:`n`)."""
        if len(values) == 0:
            return
        if start == 0 and not self.groups and not self.kind.any() and self.n == len(values):
            self.base = values[0].copy()  # the first rows written: each column's base is its first value
        steps = self._steps(values)
        if steps is None:
            self._plan(start, values)
            return
        for at, matrix, _, _ in self.groups:
            matrix[start : start + len(values)] = steps[:, at]

    def _steps(self, values: np.ndarray) -> np.ndarray | None:
        """``values`` as each column's steps from its base (int64), None unless each fits its column as held."""
        distance = values - self.base
        steps = distance // self.scale
        if (steps * self.scale != distance).any():
            return None
        if (steps.min(axis=0) < self.low).any() or (steps.max(axis=0) > self.high).any():
            return None
        return steps

    def _plan(self, start: int, values: np.ndarray) -> None:
        """Each column's scale and width again from every row held and ``values`` written from ``start``."""
        every = self.read(0, self.n)
        every[start : start + len(values)] = values
        distance = every - self.base
        scale = np.where((distance % _SCALE == 0).all(axis=0) & (self.scale == _SCALE), _SCALE, 1)
        steps = distance // scale
        low, high = steps.min(axis=0), steps.max(axis=0)
        kind = np.array(
            [
                next(k for k in range(len(_KINDS)) if _LOW[k] <= lo and hi <= _HIGH[k])
                for lo, hi in zip(low.tolist(), high.tolist(), strict=True)
            ],
            dtype=np.int8,
        )
        self.scale, self.kind = scale, np.maximum(kind, self.kind)
        self.low, self.high = _LOW[self.kind], _HIGH[self.kind]
        self.groups = []
        for k in range(1, len(_KINDS)):
            at = np.flatnonzero(self.kind == k)
            if len(at):
                matrix = np.empty((self.capacity, len(at)), dtype=_KINDS[k])
                matrix[: self.n] = steps[:, at]
                step = self.scale[at]
                self.groups.append((at, matrix, self.base[at], None if (step == 1).all() else step))

    def read(self, start: int, n: int) -> np.ndarray:
        """Rows ``start`` to ``start + n`` as one int64 matrix (a new array)."""
        out = np.empty((n, len(self.columns)), dtype=np.int64)
        out[:] = self.base
        for at, matrix, base, scale in self.groups:
            steps = matrix[start : start + n]  # int64 arithmetic with base (an int64 array) and scale
            out[:, at] = steps + base if scale is None else steps * scale + base
        return out


_SCALE = 1000
_KINDS: tuple[Any, ...] = (None, np.int8, np.int16, np.int32, np.int64)
_LOW = np.array([0, *(np.iinfo(k).min for k in _KINDS[1:])], dtype=np.int64)
_HIGH = np.array([0, *(np.iinfo(k).max for k in _KINDS[1:])], dtype=np.int64)


def _grown(rows: np.ndarray, size: int, keep: int) -> np.ndarray:
    grown = np.empty((size, rows.shape[1]), dtype=rows.dtype)
    grown[:keep] = rows[:keep]
    return grown


class Rows:
    """One rank's table: ``n`` rows of a job table from ``start``."""

    __slots__ = ("n", "start", "table")

    def __init__(self, table: _Table, start: int, n: int) -> None:
        self.table, self.start, self.n = table, start, n

    def __len__(self) -> int:
        return self.n

    def values(self) -> np.ndarray:
        """The rows as one int64 matrix (a new array)."""
        return self.table.read(self.start, self.n)

    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame of its own (a copy: changing it does not change the job's table)."""
        return pd.DataFrame(self.values(), columns=self.table.columns, copy=True)


class JobFrames:
    """The job's tables, one per (name, column set): what :class:`HeldRank` rows point into."""

    def __init__(self) -> None:
        self._tables: dict[tuple[Any, ...], _Table] = {}

    def hold(self, name: str, frame: pd.DataFrame, over: Rows | None = None) -> Rows | pd.DataFrame:
        """``frame`` as rows of the job's ``name`` table, or ``frame`` itself when it would not come back equal.

        ``over``: the rows the field held until now; a frame of as many rows and the same columns is written over
        them (a job's client sets every rank's causes again once it splits their communication: appended, the
        causes table held every rank's rows twice) and those rows are returned."""
        if not _fits(frame):
            return frame
        key = (name, str(frame.columns.dtype), *frame.columns)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = _Table(frame.columns)
        if over is not None and over.table is table and over.n == len(frame):
            table.write(over.start, frame.to_numpy(np.int64))
            return over
        return table.append(frame.to_numpy(np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the job tables' matrices (grown by doubling)."""
        return sum(t.nbytes for t in self._tables.values())


def _fits(frame: object) -> bool:
    if not isinstance(frame, pd.DataFrame) or frame.attrs or frame.columns.nlevels != 1:
        return False
    index = frame.index
    if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None):
        return False
    return frame.columns.is_unique and all(d == np.int64 for d in frame.dtypes)


class _Held:
    """A :class:`RankAnalysis` field that a :class:`HeldRank` keeps as rows of its job's tables."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name]
        if not isinstance(value, Rows):
            return value
        # The frame read last is kept: the client reads one rank's tables several times in a row, and a rank's
        # field reads as the same object until it is set again, as a plain attribute does.
        last = _LAST_READ.get(self.name)
        if last is not None and _same_rows(last[0], value):
            return last[1]
        frame = value.frame()
        _LAST_READ[self.name] = (value, frame)
        return frame

    def __set__(self, obj: Any, value: Any) -> None:
        frames: JobFrames | None = obj.__dict__.get("_job_frames")
        old = obj.__dict__.get(self.name)
        if isinstance(old, Rows):
            last = _LAST_READ.get(self.name)
            if last is not None and _same_rows(last[0], old):  # read from these rows: not what they hold from now on
                del _LAST_READ[self.name]
        if frames is not None and isinstance(value, pd.DataFrame):
            value = frames.hold(self.name, value, over=old if isinstance(old, Rows) else None)
        obj.__dict__[self.name] = value


def _same_rows(a: Any, b: Rows) -> bool:
    """The same rows of the same job table (a kept rank read again from :class:`HotStore` has new :class:`Rows`)."""
    return a is b or (type(a) is Rows and a.table is b.table and a.start == b.start and a.n == b.n)


_LAST_READ: dict[str, tuple[Any, Any]] = {}
"""Per field, what was read last (rows, spilled findings) and the value built from it."""


class _HeldFindings:
    """``findings`` of a :class:`HeldRank`: a list as set, or the rank's findings in the spill file, sorted on read."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__["findings"]
        if not isinstance(value, Spilled):
            return value
        last = _LAST_READ.get("findings")
        if last is not None and same_handle(last[0], value):
            return last[1]
        found = sorted(value.load(), key=lambda f: -f.expected_speedup)
        _LAST_READ["findings"] = (value, found)
        return found

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["findings"] = value


class HeldRank(RankAnalysis):
    """A rank's analysis as a job's client keeps it: ``steps`` and ``causes`` are rows of the job's tables, and
    once the job's findings are merged the rank's own are held in the spill file (:meth:`hold_findings`).

    Reading either gives a new DataFrame equal to the one set; setting one (the client splits the causes'
    communication into waiting and transfer) adds its rows to the job's table. Pickled or copied, it is a plain
    :class:`RankAnalysis` with its tables."""

    steps = _Held()
    causes = _Held()
    findings = _HeldFindings()
    trace = Cold()
    temporal = Cold()
    steady = Cold()
    whole_trace = Cold()
    span_override = Cold()
    window_ns = Cold()

    COLD: ClassVar[tuple[str, ...]] = cold_fields(locals())
    """Fields read once or twice per report or rule (the reduced trace with its metadata, the breakdown, the
    steady-state record, the measured spans), held together in the spill file once the rank is kept
    (:meth:`hold_cold`): ~2 KB of objects a rank. The rank's number stays in memory (:attr:`rank`)."""

    rank_verdicts = Cold()
    rank_replay = Cold()
    """A job's client holds its rank result's verdicts and unused replay in the rank's cold record too
    (:class:`mlprof.engine.job._KeptPartial`): one record a rank."""

    @classmethod
    def of(cls, ra: RankAnalysis, frames: JobFrames) -> HeldRank:
        held = cls.__new__(cls)
        held.__dict__["_job_frames"] = frames
        held.__dict__["_rank"] = ra.rank
        for f in dataclasses.fields(RankAnalysis):
            setattr(held, f.name, getattr(ra, f.name))
        return held

    @property
    def rank(self) -> int:
        """The rank's number, as :attr:`RankAnalysis.rank` read it when the rank was kept (without reading the
        trace's metadata back from the cold record)."""
        if "trace" in self.__dict__:  # set again: read it from there
            return super().rank
        rank: int = self.__dict__["_rank"]
        return rank

    def hold_cold(self, **more: Any) -> None:
        """Hold the :attr:`COLD` fields, and ``more`` (:attr:`rank_verdicts`, :attr:`rank_replay`), in the spill
        file, read back on use (the rank read last kept)."""
        self.__dict__.update(more)
        hold_cold(self, (*self.COLD, *more))

    def hold_findings(self, spilled: Spilled) -> None:
        """Hold the rank's findings as written to the spill file (unsorted): read, they come sorted by expected
        speedup, largest first, as :func:`mlprof.engine.job.combine` sets them."""
        self.__dict__["findings"] = spilled

    def rows(self, name: str) -> Rows | pd.DataFrame | None:
        """How ``steps`` or ``causes`` is held: rows of the job's table, else the DataFrame (None if not set)."""
        value: Rows | pd.DataFrame | None = self.__dict__.get(name)
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_plain, ({f.name: getattr(self, f.name) for f in dataclasses.fields(RankAnalysis)},))


def _plain(values: dict[str, Any]) -> RankAnalysis:
    return RankAnalysis(**values)


def stacked_steps(ranks: list[RankAnalysis]) -> pd.DataFrame | None:
    """Every rank's steps in rank-list order as ``pd.concat(..., ignore_index=True)`` would give them, from the
    job's steps table without a DataFrame per rank; None unless every rank is a :class:`HeldRank` whose steps are
    rows of one table and at least two ranks have steps."""
    rows = [ra.rows("steps") if isinstance(ra, HeldRank) else None for ra in ranks]
    held: list[Rows] = [r for r in rows if isinstance(r, Rows)]
    if len(held) < len(rows) or sum(1 for r in held if r.n) < 2 or any(r.table is not held[0].table for r in held):
        return None
    values = np.concatenate([r.values() for r in held if r.n])
    return pd.DataFrame(values, columns=held[0].table.columns, copy=False)


_TAG = 1 << 58
_ABSENT, _NONE, _EMPTY_LIST, _INT, _SPILLED, _RUN, _ROWS, _CONST, _VIEW, _EMPTY_DICT, _FLOAT, _EXTRA = (
    k * _TAG for k in range(12)
)
_PAYLOAD = _TAG - 1


class HotStore:
    """The instance dicts of a job's kept ranks (each a ``cls``: :class:`HeldRank`, or the rank task's result kept
    by :class:`mlprof.engine.job.Kept`), held as int64 codes, one compact array per key (:class:`NarrowInts`: 0-2 bytes
    a rank where the codes are near each other), not as objects: a rank's number,
    its rows of the job tables, its spill handles, views of another store, ``None``, empty lists and the
    ``shared`` objects each fit one code; anything else is held as it is (by index and key). Read through a view
    (:meth:`add` returns it: an object of two slots), a rank is made again from its codes (:meth:`get`; the rank
    read last kept, written back when another is read): a kept rank's objects (its analysis and result with their
    dicts, two :class:`Rows`, two empty lists, handles, ~0.7 KB) held for every rank of a job grew its client by
    ~0.5 MB at 1,024 ranks."""

    def __init__(self, cls: type, shared: tuple[Any, ...] = (), shared_types: tuple[type, ...] = ()) -> None:
        self._cls: Any = cls
        self._view = _view_class(cls)
        self._codes: dict[str, NarrowInts | int] = {}
        self._extras: dict[tuple[int, str], Any] = {}
        self._consts: list[Any] = list(shared)
        self._shared_types = (JobFrames, *shared_types)
        """Types whose objects are few and shared by the ranks (the job's tables, a GPU model's spec): held once."""
        self._floats: dict[str, array[float]] = {}
        """Per key, the floats of the ranks whose value is a float (coded :data:`_FLOAT`)."""
        self._tables: list[_Table] = []
        self._n = 0
        self._current: tuple[int, Any, dict[str, Any] | None] | None = None
        """The rank read last: its index, the object and what its dict held when made (None: added, not read)."""

    def add(self, obj: Any) -> Any:
        """Hold ``obj`` (a ``cls``; its instance dict from now on lives here) and return its view."""
        return self._view(self, self.hold(obj))

    def hold(self, obj: Any) -> int:
        """Hold ``obj`` (a ``cls``; its instance dict from now on lives here) and return its index: its view is
        ``self.views()[index]``."""
        assert type(obj) is self._cls
        i = self._n
        self._n += 1
        for codes in self._codes.values():
            if not isinstance(codes, int):
                codes.grow()  # set by _put below
        self._put(i, obj)
        return i

    def view(self, i: int) -> Any:
        """The view of the object at index ``i``."""
        return self._view(self, i)

    @staticmethod
    def of_view(obj: Any) -> HotStore | None:
        """The store ``obj`` is a view of, None if it is not a view."""
        if not isinstance(obj, _View):
            return None
        hot: HotStore = _VIEW_HOT(obj)
        return hot

    def index(self, view: Any) -> int:
        """The index of ``view``, a view of this store."""
        assert isinstance(view, _View) and _VIEW_HOT(view) is self
        i: int = _VIEW_I(view)
        return i

    def views(self, order: Sequence[int] | None = None) -> HotViews:
        """The views of the held objects in ``order`` (indices; default: the order they were added)."""
        return HotViews(self, range(self._n) if order is None else order)

    def __len__(self) -> int:
        return self._n

    def get(self, i: int) -> Any:
        """Rank ``i`` as an object: the one read last, else made from its codes (the one read last written back)."""
        current = self._current
        if current is not None:
            if current[0] == i:
                return current[1]
            self._put(*current)
        held = self._cls.__new__(self._cls)
        own = held.__dict__
        for key, codes in self._codes.items():
            code = codes if isinstance(codes, int) else codes[i]
            if code != _ABSENT:
                own[key] = self._decode(i, key, code)
        self._current = (i, held, dict(own))
        return held

    def _put(self, i: int, held: Any, made: dict[str, Any] | None = None) -> None:
        """Hold ``held``'s dict as rank ``i``'s codes; ``made``: what the dict held when made from them (a value
        still the same object is coded as it was, but a list or dict, which may have changed in place)."""
        own = held.__dict__
        for key in self._codes:
            if key not in own:
                self._set(i, key, _ABSENT)
                self._extras.pop((i, key), None)
        for key, value in own.items():
            if made is not None and made.get(key, _NOT_MADE) is value and type(value) not in (list, dict):
                continue
            if type(value) is float:
                floats = self._floats.get(key)
                if floats is None:
                    floats = self._floats[key] = array("d", [0.0]) * self._n
                floats.extend([0.0] * (self._n - len(floats)))
                floats[i] = value
                code = _FLOAT
            else:
                code = self._encode(value)
            if code == _EXTRA:
                self._extras[(i, key)] = value
            else:
                self._extras.pop((i, key), None)
            self._set(i, key, code)

    def _set(self, i: int, key: str, code: int) -> None:
        """Rank ``i``'s ``key`` coded ``code``: a key coded alike for every rank (the job's tables, ``None``, a
        shared stand-in) is one number, not an array."""
        codes = self._codes.get(key)
        if codes is None:
            codes = self._codes[key] = code if self._n == 1 else NarrowInts.repeat(_ABSENT, self._n, absent=_ABSENT)
        if isinstance(codes, int):
            if codes == code:
                return
            if i == self._n - 1:  # the last one's code (the one just held): every one before it is coded ``codes``
                codes = self._codes[key] = NarrowInts.repeat(codes, i, absent=_ABSENT)
                codes.append(code)
                return
            codes = self._codes[key] = NarrowInts.repeat(codes, self._n, absent=_ABSENT)
        codes[i] = code

    def _encode(self, value: Any) -> int:
        kind = type(value)
        if value is None:
            return _NONE
        if kind is list and not value:
            return _EMPTY_LIST
        if kind is dict and not value:
            return _EMPTY_DICT
        if kind is int and 0 <= value < _TAG:
            return _INT | value
        if kind is Spilled and int(value) < _TAG:
            return _SPILLED | int(value)
        if kind is SpilledRun and int(value) < _TAG:
            return _RUN | int(value)
        if kind is Rows and value.start < 1 << 30 and value.n < 1 << 20:
            tables = self._tables
            t = next((k for k, table in enumerate(tables) if table is value.table), len(tables))
            if t == len(tables) and t < 256:
                tables.append(value.table)
            if t < 256:
                return _ROWS | t << 50 | value.n << 30 | value.start
        if isinstance(value, _View):
            hot, i = _VIEW_HOT(value), _VIEW_I(value)
            if i < 1 << 40:
                return _VIEW | self._const(hot) << 40 | i
        consts = self._consts
        c = next((k for k, const in enumerate(consts) if const is value), None)
        if c is not None:
            return _CONST | c
        if isinstance(value, self._shared_types):
            return _CONST | self._const(value)
        return _EXTRA

    def _const(self, value: Any) -> int:
        consts = self._consts
        c = next((k for k, const in enumerate(consts) if const is value), len(consts))
        if c == len(consts):
            consts.append(value)
        return c

    def _decode(self, i: int, key: str, code: int) -> Any:
        tag, payload = code & ~_PAYLOAD, code & _PAYLOAD
        if tag == _NONE:
            return None
        if tag == _EMPTY_LIST:
            return []
        if tag == _EMPTY_DICT:
            return {}
        if tag == _FLOAT:
            return self._floats[key][i]
        if tag == _INT:
            return payload
        if tag == _SPILLED:
            return Spilled(payload)
        if tag == _RUN:
            return SpilledRun(payload)
        if tag == _ROWS:
            return Rows(self._tables[payload >> 50], payload & ((1 << 30) - 1), (payload >> 30) & ((1 << 20) - 1))
        if tag == _CONST:
            return self._consts[payload]
        if tag == _VIEW:
            hot: HotStore = self._consts[payload >> 40]
            return hot._view(hot, payload & ((1 << 40) - 1))
        return self._extras[(i, key)]


_NOT_MADE = object()

_VIEW_OWN = frozenset(("_hot", "_i", "__class__"))


class _View:
    """A kept rank of a job's client as the job's lists hold it: two slots (its :class:`HotStore` and index),
    every attribute read, set or deleted on the rank made from the store (:meth:`HotStore.get`). It is an
    instance of the store's class to every check (:func:`_view_class`); pickled or copied, what that class
    pickles to."""

    __slots__ = ()

    def __init__(self, hot: HotStore, i: int) -> None:
        _VIEW_SET_HOT(self, hot)
        _VIEW_SET_I(self, i)

    def __getattribute__(self, name: str) -> Any:
        if name in _VIEW_OWN:
            return object.__getattribute__(self, name)
        return getattr(_view_target(self), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(_view_target(self), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(_view_target(self), name)


class _ViewSlots:
    __slots__ = ("_hot", "_i")


_VIEW_HOT = _ViewSlots._hot.__get__  # type: ignore[attr-defined]
_VIEW_I = _ViewSlots._i.__get__  # type: ignore[attr-defined]
_VIEW_SET_HOT = _ViewSlots._hot.__set__  # type: ignore[attr-defined]
_VIEW_SET_I = _ViewSlots._i.__set__  # type: ignore[attr-defined]
_VIEW_CLASSES: dict[type, type] = {}


def _view_class(cls: type) -> type:
    """The view class of ``cls``: a subclass of both (so ``isinstance`` holds) with the two slots."""
    view = _VIEW_CLASSES.get(cls)
    if view is None:
        view = _VIEW_CLASSES[cls] = type(f"{cls.__name__}View", (_View, _ViewSlots, cls), {"__slots__": ()})
    return view


def _view_target(view: _View) -> Any:
    hot: HotStore = _VIEW_HOT(view)
    return hot.get(_VIEW_I(view))


class HotViews(ReadOnAccess[Any]):
    """Views of a :class:`HotStore`'s objects in a given order, each made when indexed or iterated (a view is the
    store and an index: nothing of the object is read until an attribute is): what a job's client holds as its
    list of kept ranks' results and of their contexts. A list of views held ~0.13 KB a rank each (the view, its
    index past 256 as an int object, the list's slot); here 2 bytes a rank (the order; 4 past 65,536), none while the
    order is the store's. Two reads of one position are two views of the same object (equal, not identical)."""

    __slots__ = ("_hot", "_items")

    def __init__(self, hot: HotStore, order: Sequence[int]) -> None:
        self._hot = hot
        self._items: Sequence[int] = order if isinstance(order, range) else _compact(order)
        """The objects' indices in the store, in this sequence's order."""

    def _read(self, i: int) -> Any:
        hot = self._hot
        return hot._view(hot, i)

    def sorted(self, key: Callable[[Any], Any]) -> HotViews:
        """The same views ordered by ``key`` of each (stable, as :func:`sorted`)."""
        keys = [key(view) for view in self]
        return HotViews(self._hot, [self._items[k] for k in sorted(range(len(keys)), key=keys.__getitem__)])

    def __repr__(self) -> str:
        return f"HotViews(n={len(self)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))  # pickled or copied: a list of what the objects pickle to


def _compact(order: Sequence[int]) -> Sequence[int]:
    """``order`` as a ``range`` when it is one (the store's own order), else as a uint16 array (uint32 where an
    index is 65,536 or more)."""
    n = len(order)
    if all(i == k for k, i in enumerate(order)):
        return range(n)
    return array("H" if max(order, default=0) <= 0xFFFF else "I", order)
