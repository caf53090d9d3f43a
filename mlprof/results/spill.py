"""Values a job's client holds per rank, compressed and kept in an anonymous temporary file instead of memory.

A job's client keeps, for every rank, a few small tables that it reads once or twice
(:meth:`mlprof.results.ReducedRank.pack`, :meth:`mlprof.engine.rank_task.RankPartial.pack`).
Held as compressed bytes in memory they grow the client by ~7 KB a rank; written to one
anonymous temporary file (:func:`tempfile.TemporaryFile`: it has no name, or loses it at
once, and the operating system deletes it when it is closed or when the process ends,
Ctrl-C and kill included) only the offsets stay in memory, and the bytes are read back
when the table is asked for. mlprof writes only into this file, which it created.

Where no temporary file can be made or written (no writable temporary directory, a full
disk), the bytes stay in memory: the same values, only the memory is not saved.
"""

from __future__ import annotations

import bisect
import io
import os
import pickle
import tempfile
import threading
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, TypeVar, overload

from mlprof.results.narrow_ints import NarrowInts

_HAS_PREAD = hasattr(os, "pread") and hasattr(os, "pwrite")


class Spilled(int):
    """One value pickled and compressed, in the process's spill file (or in memory where that failed).

    The handle is only a number, the value's row in the process's spill table (:class:`_Store`: the offsets in an
    array, not in the handle): ~32 bytes a value held, where an object with its file, offset and
    size was ~130 (a job's client holds ~10 a rank). Handles compare by identity where it matters (``is``); two
    handles are never equal values in the table's sense unless they are the same row.

    Pickling it carries the bytes, not the row: unpickled in another process it is spilled there."""

    __slots__ = ()

    @property
    def nbytes(self) -> int:
        """Compressed size in bytes."""
        return _STORE.size(int(self))

    @property
    def in_memory(self) -> bool:
        """Whether the bytes are held in memory (no spill file could be written)."""
        return int(self) in _STORE.memory

    def raw(self) -> bytes:
        """The compressed bytes."""
        return _STORE.get(int(self))

    def load(self) -> Any:
        """The value, unpickled afresh."""
        return pickle.loads(zlib.decompress(self.raw()))

    def __bool__(self) -> bool:  # a handle is a value held, row 0 included
        return True

    def __repr__(self) -> str:
        return f"Spilled(row={int(self)}, nbytes={self.nbytes})"

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (_from_raw, (self.raw(),))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[bytes]]:
        return self.__reduce__()

    def __copy__(self) -> Spilled:  # immutable, as the old handle object was in effect
        return self

    def __deepcopy__(self, memo: Any) -> Spilled:
        return self


class SpilledRun(int):
    """Several values spilled together (:func:`spill_run`), at consecutive rows of the spill table: one number
    holds the first row and the count (``row << 4 | count``), where a tuple of handles was ~70 bytes plus ~48 a
    value. Indexed or iterated it gives each value's :class:`Spilled` handle; pickled it carries every value's
    bytes."""

    __slots__ = ()

    def __len__(self) -> int:
        return int(self) & 15

    def __getitem__(self, k: int) -> Spilled:
        k = range(len(self))[k]
        return Spilled((int(self) >> 4) + k)

    def __iter__(self) -> Iterator[Spilled]:
        first = int(self) >> 4
        return iter([Spilled(first + k) for k in range(len(self))])

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"SpilledRun(row={int(self) >> 4}, n={len(self)})"

    def __reduce__(self) -> tuple[Any, tuple[tuple[bytes, ...]]]:
        return (_run_from_raw, (tuple(s.raw() for s in self),))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[tuple[bytes, ...]]]:
        return self.__reduce__()

    def __copy__(self) -> SpilledRun:
        return self

    def __deepcopy__(self, memo: Any) -> SpilledRun:
        return self


def spill_run(values: Sequence[Any]) -> SpilledRun:
    """``values`` (at most 15) each pickled, compressed and written to the spill file, held by one number."""
    return _run_from_raw(tuple(zlib.compress(pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL), 1) for v in values))


def _run_from_raw(datas: tuple[bytes, ...]) -> SpilledRun:
    if not 0 < len(datas) < 16:
        raise ValueError(f"a spilled run holds 1 to 15 values, not {len(datas)}")
    with _STORE.lock:  # consecutive rows: no other thread's value between them
        first = _STORE.put(datas[0])
        for data in datas[1:]:
            _STORE.put(data)
    return SpilledRun(int(first) << 4 | len(datas))


def spill(value: Any) -> Spilled:
    """``value`` pickled, compressed (zlib level 1) and written to the spill file."""
    return _from_raw(zlib.compress(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 1))


def _from_raw(data: bytes) -> Spilled:
    return _STORE.put(data)


class _Store:
    """The process's spill file, appended to, and its table: per value held, its offset (:class:`_Offsets`; a handle
    is a row number): ~2.5 bytes a row, where three int64 were 24 (a job's client spills ~14 values a rank). The
    file a row is in changes only when a forked child makes its own or writing fails: held as
    runs of rows (:class:`_Where`); a row's size is where the next row of its file starts, or the file's end
    (values are written one after another, :meth:`size`): a file index and a size a row were 6 bytes more. The
    file is made on first use, and again in a forked child (which then never writes into its parent's file; it can
    still read values spilled before the fork, whose rows name the parent's file). Bytes that could not be written
    (no temporary directory, a full disk) are held in :attr:`memory` by row."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._file: IO[bytes] | None = None
        self._pid = -1
        self._end = 0
        self._failed = False
        self.files: list[IO[bytes]] = []
        self._ends: list[int] = []
        """The end of each file of :attr:`files` but the last as this process knows it (a parent's file: where it
        ended at the fork; the last file's is :attr:`_end`)."""
        self.where = _Where()
        """Per row: the index in :attr:`files` of the file holding it, -1 where the bytes are in memory."""
        self.offsets = _Offsets()
        self.memory: dict[int, bytes] = {}

    def _row(self, where: int, offset: int) -> Spilled:
        row = len(self.offsets)
        self.where.append(where)
        self.offsets.append(offset)
        return Spilled(row)

    def size(self, row: int) -> int:
        """The size in bytes of row ``row``'s value."""
        where = self.where[row]
        if where < 0:
            return len(self.memory[row])
        following = row + 1
        with self.lock:  # a value being put has advanced the file's end before its row is in the table
            if following < len(self.offsets) and self.where[following] == where:
                end = self.offsets[following]
            else:
                end = self._ends[where] if where < len(self._ends) else self._end
        return end - self.offsets[row]

    def put(self, data: bytes) -> Spilled:
        with self.lock:
            if not self._failed:
                try:
                    if (self._file is None or self._pid != os.getpid()) and len(self.files) >= _MAX_FILES:
                        raise OSError("too many spill files")  # pragma: no cover - a chain of 32,767 forks
                    if self._file is None or self._pid != os.getpid():
                        file = tempfile.TemporaryFile()  # noqa: SIM115 - open for the process's life
                        if self.files:
                            self._ends.append(self._end)  # the parent's file as it ended at the fork
                        self._file = file
                        self._pid, self._end = os.getpid(), 0
                        self.files.append(file)
                    offset = self._end
                    self._write(self._file, offset, data)
                except OSError:
                    self._failed = True  # no temporary directory, or a full disk: keep bytes in memory from now on
                else:
                    self._end += len(data)
                    return self._row(len(self.files) - 1, offset)
            held = self._row(-1, 0)
            self.memory[int(held)] = data
            return held

    def get(self, row: int) -> bytes:
        where = self.where[row]
        if where < 0:
            return self.memory[row]
        return self.read(self.files[where], self.offsets[row], self.size(row))

    @staticmethod
    def _write(file: IO[bytes], offset: int, data: bytes) -> None:
        if _HAS_PREAD:
            view, fd = memoryview(data), file.fileno()
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        else:  # pragma: no cover - platforms without pwrite
            file.seek(offset)
            file.write(data)
            file.flush()

    def read(self, file: IO[bytes], offset: int, size: int) -> bytes:
        if _HAS_PREAD:  # no shared file position: safe from threads and from a forked child
            parts, fd = [], file.fileno()
            while size:
                part = os.pread(fd, size, offset)
                if not part:
                    raise OSError("spill file shorter than written")
                parts.append(part)
                size, offset = size - len(part), offset + len(part)
            return b"".join(parts)
        with self.lock:  # pragma: no cover - platforms without pread
            file.seek(offset)
            return file.read(size)


_MAX_FILES = 2**15 - 1
"""Files a process's spill table can name (:attr:`_Store.where` is int16)."""


class _Offsets:
    """The spill table's offsets by blocks of 16 rows: each block's first offset (int64) and each row's distance
    from it (uint16): 2.5 bytes a row where uint32 offsets were 4 (a job's client spills values of ~0.9 KB, at
    most a few KB: a block spans ~15 KB). A block whose rows do not all lie within 64 KB past its first (a large
    value; a forked child's file or memory, offset 0, starting within it) holds its offsets as int64 as well
    (:attr:`wide`); its rows' distances are 0 there."""

    __slots__ = ("firsts", "near", "wide")

    def __init__(self) -> None:
        self.firsts = array("q")
        self.near = array("H")
        self.wide: dict[int, array[int]] = {}
        """Per block whose rows do not fit uint16 distances, its rows' offsets."""

    def append(self, offset: int) -> None:
        row = len(self.near)
        block = row >> _BLOCK_BITS
        if block == len(self.firsts):
            self.firsts.append(offset)
        distance = offset - self.firsts[block]
        wide = self.wide.get(block)
        if wide is None and not 0 <= distance <= 0xFFFF:
            first = self.firsts[block]
            wide = array("q", [first + d for d in self.near[block << _BLOCK_BITS :]])
            self.wide[block] = wide  # complete before it is seen: a reader without the lock reads either form
        if wide is not None:
            wide.append(offset)
            distance = 0
        self.near.append(distance)

    def __getitem__(self, row: int) -> int:
        distance = self.near[row]  # IndexError past the last row
        block = row >> _BLOCK_BITS
        wide = self.wide.get(block)
        if wide is not None:
            return wide[row & _BLOCK_MASK]
        return self.firsts[block] + distance

    def __len__(self) -> int:
        return len(self.near)


_BLOCK_BITS = 4
_BLOCK_MASK = (1 << _BLOCK_BITS) - 1


class _Where:
    """The spill table's file index per row, held as runs: the first row of each run of rows in one file (the file
    changes only when a forked child makes its own, or -1 once writing fails), ~2 runs a process."""

    __slots__ = ("files", "firsts", "n")

    def __init__(self) -> None:
        self.firsts = array("q")
        self.files = array("h")
        self.n = 0

    def append(self, where: int) -> None:
        if not self.files or self.files[-1] != where:
            self.firsts.append(self.n)
            self.files.append(where)
        self.n += 1

    def __getitem__(self, row: int) -> int:
        if not 0 <= row < self.n:
            raise IndexError(row)
        return self.files[bisect.bisect_right(self.firsts, row) - 1]

    def __len__(self) -> int:
        return self.n


_STORE = _Store()


T = TypeVar("T")


class ReadOnAccess(Sequence[T]):
    """A sequence whose values are made when indexed or iterated, each by :meth:`_read` from one of ``_items``
    (what is held is small: a spill-table row, a rank's result; what is read is not)."""

    __slots__ = ()
    _items: Sequence[Any]

    def _read(self, item: Any) -> T:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self._read(item) for item in self._items[i]]
        return self._read(self._items[i])

    def __iter__(self) -> Iterator[T]:
        for item in self._items:
            yield self._read(item)


class RawRows(ReadOnAccess[bytes]):
    """Byte strings each written as is (not pickled, not compressed) to the spill file, held by their rows of the
    spill table (:class:`NarrowInts`: 0-2 bytes a string here while the rows are close, 4 in the table): read back
    one at a time, in order, when iterated or indexed.

    What a job's report holds of its per-rank rows (each row's compact JSON, ~0.8 KB) until they are written
    (:meth:`mlprof.results.Report.json_chunks`): 1,024 ranks' four rows were ~3.4 MB held in memory. Pickled, it
    carries the bytes; unpickled in another process they are spilled there."""

    __slots__ = ("_items",)
    _items: NarrowInts

    def __init__(self, datas: Iterable[bytes] = ()) -> None:
        self._items = NarrowInts()
        for data in datas:
            self.append(data)

    def append(self, data: bytes) -> None:
        self._items.append(int(_STORE.put(data)))

    def _read(self, row: int) -> bytes:
        return _STORE.get(row)

    def __repr__(self) -> str:
        return f"RawRows(n={len(self)})"

    def __reduce__(self) -> tuple[Any, tuple[list[bytes]]]:
        return (RawRows, (list(self),))


class SpilledLists(Sequence[list[Any]]):
    """A sequence of lists, each held in the spill file and read back (a new list) when indexed.

    What a job's client keeps of each rank's findings once the job's are merged: read again only by a caller
    that asks for one rank's (the last one read is kept)."""

    def __init__(self, lists: Iterable[list[Any]] = ()) -> None:
        self._held = NarrowInts(int(spill(values)) for values in lists)
        """The lists' rows of the spill table (2 bytes a list while they are close; a handle object and its list
        slot were 56)."""
        self._last: tuple[int, list[Any]] | None = None

    def append(self, values: list[Any]) -> None:
        """Add one more list, spilled now (a job's client spills each rank's findings as it judges the rank)."""
        self._held.append(int(spill(values)))

    def __len__(self) -> int:
        return len(self._held)

    @overload
    def __getitem__(self, i: int) -> list[Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[list[Any]]: ...

    def __getitem__(self, i: int | slice) -> list[Any] | list[list[Any]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        if self._last is None or self._last[0] != i:
            self._last = (i, Spilled(self._held[i]).load())
        return self._last[1]

    def spilled(self, i: int) -> Spilled:
        """Rank ``i``'s list as held."""
        return Spilled(self._held[i])


class Cold:
    """A field an object keeps in its *cold record*: fields read once or twice per report, held together in the
    spill file (:func:`hold_cold`) and read back on use, the record read last kept in memory. Setting the field
    holds the new value in the object again."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        own = obj.__dict__
        if self.name in own:
            return own[self.name]
        record = own.get("_cold")
        values = _cold_values(record) if record is not None else {}
        if self.name not in values:
            raise AttributeError(self.name)
        return values[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


def cold_fields(namespace: dict[str, Any]) -> tuple[str, ...]:
    """The names of the :class:`Cold` fields of a class body (``cold_fields(locals())`` after declaring them), in
    the order declared: each field is declared once, as its descriptor."""
    return tuple(name for name, value in namespace.items() if isinstance(value, Cold))


def hold_cold(obj: Any, names: Iterable[str]) -> None:
    """Move ``obj``'s fields ``names`` (each a :class:`Cold` of its class) into one record in the spill file."""
    own = obj.__dict__
    record = _cold_values(own["_cold"]) if "_cold" in own else {}
    record = {**record, **{n: own.pop(n) for n in names if n in own}}
    own["_cold"] = _spill_record(record)


class _RecordPickler(pickle.Pickler):
    """Pickles a cold record with the spill handles in it (a held rank's packed tables) as their rows of this
    process's spill table, not as their bytes: a handle pickled as usual carries its bytes, and each read of the
    record would write them to the spill file again."""

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is Spilled:
            return ("s", int(obj))
        if kind is SpilledRun:
            return ("r", int(obj))
        return None


class _RecordUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        kind, row = pid
        return Spilled(row) if kind == "s" else SpilledRun(row)


def _spill_record(record: dict[str, Any]) -> Spilled:
    buffer = io.BytesIO()
    _RecordPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(record)
    return _from_raw(zlib.compress(buffer.getvalue(), 1))


def _load_record(record: Spilled) -> dict[str, Any]:
    values: dict[str, Any] = _RecordUnpickler(io.BytesIO(zlib.decompress(record.raw()))).load()
    return values


_LAST_COLD: list[Any] = [None, None, None]
"""The cold record read last (its store and row) and its values."""


def _cold_values(record: Spilled) -> dict[str, Any]:
    if _LAST_COLD[0] is not _STORE or _LAST_COLD[1] != int(record):
        _LAST_COLD[:] = [_STORE, int(record), _load_record(record)]
    values: dict[str, Any] = _LAST_COLD[2]
    return values


def same_handle(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are handles of the same value: the same row of the spill table (rows are never reused; a
    handle read back from a record is a new object)."""
    return a is b or (type(a) is type(b) and type(a) in (Spilled, SpilledRun) and int(a) == int(b))
