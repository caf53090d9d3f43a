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

import os
import pickle
import tempfile
import threading
import zlib
from collections.abc import Iterable, Sequence
from typing import IO, Any, overload

_HAS_PREAD = hasattr(os, "pread") and hasattr(os, "pwrite")


class Spilled:
    """One value pickled and compressed, in the process's spill file (or in memory where that failed).

    Pickling it carries the bytes, not the offset: unpickled in another process it is spilled there."""

    __slots__ = ("_data", "_file", "_offset", "_size")

    def __init__(self, file: IO[bytes] | None, offset: int, size: int, data: bytes | None) -> None:
        self._file = file
        self._offset = offset
        self._size = size
        self._data = data

    @property
    def nbytes(self) -> int:
        """Compressed size in bytes."""
        return self._size

    @property
    def in_memory(self) -> bool:
        """Whether the bytes are held in memory (no spill file could be written)."""
        return self._data is not None

    def raw(self) -> bytes:
        """The compressed bytes."""
        if self._data is not None:
            return self._data
        assert self._file is not None
        return _STORE.read(self._file, self._offset, self._size)

    def load(self) -> Any:
        """The value, unpickled afresh."""
        return pickle.loads(zlib.decompress(self.raw()))

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (_from_raw, (self.raw(),))


def spill(value: Any) -> Spilled:
    """``value`` pickled, compressed (zlib level 1) and written to the spill file."""
    return _from_raw(zlib.compress(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 1))


def _from_raw(data: bytes) -> Spilled:
    return _STORE.put(data)


class _Store:
    """The process's spill file, appended to; made on first use, and again in a forked child (which then never
    writes into its parent's file; it can still read values spilled before the fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._pid = -1
        self._end = 0
        self._failed = False

    def put(self, data: bytes) -> Spilled:
        with self._lock:
            if self._failed:
                return Spilled(None, 0, len(data), data)
            try:
                if self._file is None or self._pid != os.getpid():
                    self._file = tempfile.TemporaryFile()  # noqa: SIM115 - open for the process's life
                    self._pid, self._end = os.getpid(), 0
                offset = self._end
                self._write(self._file, offset, data)
            except OSError:
                self._failed = True  # no temporary directory, or a full disk: keep bytes in memory from now on
                return Spilled(None, 0, len(data), data)
            self._end += len(data)
            return Spilled(self._file, offset, len(data), None)

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
        with self._lock:  # pragma: no cover - platforms without pread
            file.seek(offset)
            return file.read(size)


_STORE = _Store()


class SpilledLists(Sequence[list[Any]]):
    """A sequence of lists, each held in the spill file and read back (a new list) when indexed.

    What a job's client keeps of each rank's findings once the job's are merged: read again only by a caller
    that asks for one rank's (the last one read is kept)."""

    def __init__(self, lists: Iterable[list[Any]] = ()) -> None:
        self._held = [spill(values) for values in lists]
        self._last: tuple[int, list[Any]] | None = None

    def append(self, values: list[Any]) -> None:
        """Add one more list, spilled now (a job's client spills each rank's findings as it judges the rank)."""
        self._held.append(spill(values))

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
            self._last = (i, self._held[i].load())
        return self._last[1]

    def spilled(self, i: int) -> Spilled:
        """Rank ``i``'s list as held."""
        return self._held[i]


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
        if record is None:
            raise AttributeError(self.name)
        return _cold_values(record)[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


def hold_cold(obj: Any, names: Iterable[str]) -> None:
    """Move ``obj``'s fields ``names`` (each a :class:`Cold` of its class) into one record in the spill file."""
    own = obj.__dict__
    record = _cold_values(own["_cold"]) if "_cold" in own else {}
    record = {**record, **{n: own.pop(n) for n in names if n in own}}
    own["_cold"] = spill(record)


_LAST_COLD: list[Any] = [None, None]
"""The cold record read last and its values."""


def _cold_values(record: Spilled) -> dict[str, Any]:
    if _LAST_COLD[0] is not record:
        _LAST_COLD[:] = [record, record.load()]
    values: dict[str, Any] = _LAST_COLD[1]
    return values
