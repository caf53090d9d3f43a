"""One entry point for counter files: sniff the format, parse, return the counters table.

Formats (first match wins): SQLite (an Nsight Systems export with GPU metrics), the
mlprof collector's CSV, ``dcgmi dmon`` text, dcgm-exporter Prometheus text, DCGM
CSV dumps, nvidia-smi CSV logs. Any of them may be gzipped.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pandas as pd

from mlprof.counters.dcgm import (
    looks_like_dcgm_csv,
    looks_like_dmon,
    looks_like_prometheus,
    parse_dcgm_csv,
    parse_dmon,
    parse_prometheus,
)
from mlprof.counters.native import looks_like_native, parse_native
from mlprof.counters.nsys import read_nsys_metrics
from mlprof.counters.nvidia_smi import looks_like_nvidia_smi, parse_nvidia_smi
from mlprof.counters.text import GZIP_MAGIC, read_text
from mlprof.errors import BadInputError
from mlprof.trace.nsys import SQLITE_MAGIC


def load_counters(path: str | Path) -> pd.DataFrame:
    """Read a counters file into the table of :mod:`mlprof.counters.metrics`.

    Returns columns ``ts`` (int64 ns), ``device`` (int64), ``metric`` (categorical,
    canonical names), ``value`` (float64), ``source`` (categorical); ``attrs`` holds
    ``format``, ``time_base`` (``epoch``, ``relative`` or ``epoch (naive local time
    read as UTC)``) and optional ``notes``. Raises :class:`BadInputError` (one line)
    when the file is missing, empty or in no known format.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise BadInputError(f"{path}: no such file")
        if path.is_dir():
            raise BadInputError(f"{path}: is a directory; pass a counters file")
        with path.open("rb") as fh:
            magic = fh.read(16)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None
    if magic.startswith(SQLITE_MAGIC):
        return _tag(read_nsys_metrics(path), "nsys-sqlite")
    text = read_text(path)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise BadInputError(f"{path}: empty counters file")
    fmt = _text_format(lines)
    if fmt == "mlprof":
        return _tag(parse_native(text, path), fmt)
    if fmt == "dcgmi-dmon":
        return _tag(parse_dmon(text, path), fmt)
    if fmt == "dcgm-exporter":
        return _tag(parse_prometheus(text, path), fmt)
    if fmt == "dcgm-csv":
        return _tag(parse_dcgm_csv(text, path), fmt)
    if fmt == "nvidia-smi":
        return _tag(parse_nvidia_smi(text, path), fmt)
    raise BadInputError(
        f"{path}: not a counters file mlprof knows (nvidia-smi --query-gpu CSV, dcgmi dmon, "
        "dcgm-exporter metrics, mlprof counters CSV, nsys SQLite)"
    )


def _text_format(lines: list[str]) -> str | None:
    """The text counters format of a file from its non-blank lines (the first 20 are enough), or None."""
    first = lines[0]
    if looks_like_native(first):
        return "mlprof"
    if looks_like_dmon(first):
        return "dcgmi-dmon"
    if looks_like_prometheus(lines):
        return "dcgm-exporter"
    if looks_like_dcgm_csv(first):
        return "dcgm-csv"
    if looks_like_nvidia_smi(first):
        return "nvidia-smi"
    return None


SNIFF_BYTES = 1 << 16


def sniff_counters(path: str | Path) -> str | None:
    """The format of a text counters file, judged from its first 64 KiB (gzip undone), or None.

    Cheap and never raises: a front end asks this before reading a file as a trace.
    SQLite files are left to the trace reader (an nsys export is a trace first), and
    anything starting with ``{`` or ``[`` is JSON, not counters.
    """
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except (OSError, ValueError):
        return None
    if head.startswith(GZIP_MAGIC):
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)
        except zlib.error:
            return None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln.strip() for ln in text.splitlines()[:200] if ln.strip()]
    if not lines or lines[0][:1] in ("{", "[") or "\x00" in lines[0]:
        return None
    return _text_format(lines)


def _tag(frame: pd.DataFrame, fmt: str) -> pd.DataFrame:
    frame.attrs["format"] = fmt
    return frame
