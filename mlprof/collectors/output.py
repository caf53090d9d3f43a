"""The run folder: where a profiled run's files go and how they are written safely.

Layout (``out_dir/<name>/``)::

    trace.rank<N>.json.gz            Kineto trace of the first profiling cycle of rank N
    cycles/<K>/trace.rank<N>.json.gz later cycles (``repeat``/``every``), one loadable job per cycle
    counters.rank<N>.csv             GPU counters sampled by rank N (NVML, DCGM); see COUNTER_COLUMNS
    meta.json                        run metadata, written by rank 0 (see runinfo.py)

Counters are plain CSV, not gzipped: ``mlprof.trace.loader`` treats ``*.gz`` files in a
run folder as traces. Every file is written to a temporary name first and renamed, so
a crash or a full disk never leaves a half-written file under its final name.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COUNTER_COLUMNS: tuple[str, ...] = ("ts", "device", "metric", "value", "source")
"""``ts`` int epoch ns (``time.time_ns()``), ``device`` int GPU index, ``metric`` canonical name,
``value`` float in the metric's canonical unit, ``source`` ``nvml`` or ``dcgm``."""

CounterRow = tuple[int, int, str, float, str]


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder as seen by one rank."""

    path: Path
    rank: int

    def trace_path(self, cycle: int = 1) -> Path:
        """Cycle 1 sits at the top; later cycles in ``cycles/<K>/`` so each stays a one-trace-per-rank job."""
        name = f"trace.rank{self.rank}.json.gz"
        return self.path / name if cycle <= 1 else self.path / "cycles" / str(cycle) / name

    @property
    def counters_path(self) -> Path:
        return self.path / f"counters.rank{self.rank}.csv"

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"


def run_folder_name(name: str | None, start_ns: int) -> str:
    """The user's name made one folder name (:func:`safe_folder_name`), else the local start time
    ``YYYYmmdd-HHMMSS``."""
    if name:
        return safe_folder_name(name)
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(start_ns / 1e9))


_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
MAX_NAME_BYTES = 200


def safe_folder_name(name: str) -> str:
    """``name`` as exactly one path component inside ``out_dir``, never outside it.

    Path separators and control characters become ``_``; leading dots become ``_`` (no
    ``..``, and no hidden folder the loader would skip); the name is cut to
    :data:`MAX_NAME_BYTES` bytes of UTF-8 (file systems allow 255).
    ``"../../escape"`` is ``"___.._escape"``.
    """
    safe = _UNSAFE.sub("_", name)
    stripped = safe.lstrip(".")
    safe = "_" * (len(safe) - len(stripped)) + stripped
    safe = safe.encode("utf-8", "replace")[:MAX_NAME_BYTES].decode("utf-8", "ignore")
    return safe or "_"


def make_run_folder(out_dir: str | os.PathLike[str], name: str | None, rank: int, start_ns: int) -> RunFolder:
    """Create the folder. A generated (timestamp) name gets ``-2``, ``-3``... if taken; a given name is reused
    as is, so that every rank of a job writes into the same folder."""
    base = Path(out_dir) / run_folder_name(name, start_ns)
    path = base
    if not name:
        n = 2
        while path.exists():
            path = base.with_name(f"{base.name}-{n}")
            n += 1
    path.mkdir(parents=True, exist_ok=True)
    return RunFolder(path=path, rank=rank)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: the old file survives a failed write."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def gzip_file(src: Path, dst: Path, *, level: int = 6) -> None:
    """Gzip ``src`` into ``dst`` (via a temporary name), then delete ``src``.

    ``mtime=0`` and no file name in the header: the archive depends only on the data.
    On failure the partial output is removed and ``src`` is left in place, so the
    uncompressed trace is still there to be read.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with (
            src.open("rb") as fin,
            tmp.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=level) as fout,
        ):
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    src.unlink(missing_ok=True)


class CounterFile:
    """Appends counter rows to ``counters.rank<N>.csv`` (header written once).

    Rows are appended in batches from the sampler thread, so a crash of the job keeps
    everything up to the last flush; a failed append raises and leaves the rows with
    the caller, which keeps them for the next try.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows_written = 0
        self._lock = threading.Lock()

    def append(self, rows: Iterable[CounterRow]) -> int:
        text = "".join(f"{ts},{dev},{metric},{value!r},{source}\n" for ts, dev, metric, value, source in rows)
        if not text:
            return 0
        with self._lock:
            new = not self.path.exists()
            if new:
                text = ",".join(COUNTER_COLUMNS) + "\n" + text
            with self.path.open("a", encoding="utf-8") as fh:
                size = fh.tell()
                try:
                    fh.write(text)
                    fh.flush()
                except OSError:
                    # Disk full mid-write: cut the partial line so the file stays valid CSV.
                    with _suppress_oserror():
                        fh.truncate(size)
                    raise
            n = text.count("\n") - (1 if new else 0)
            self.rows_written += n
        return n


@contextmanager
def _suppress_oserror() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass
