"""Shared helpers for counter logs: reading text (gzipped or not), parsing times and values."""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from mlprof.errors import BadInputError

GZIP_MAGIC = b"\x1f\x8b"
MISSING_VALUES = re.compile(r"^\[?(N/A|Not Supported|Unknown Error|Insufficient Permissions|GPU is lost|-|)\]?$", re.I)
"""How nvidia-smi and dcgmi write "no value"."""


def read_text(path: Path) -> str:
    """The file as text; gzip is undone, invalid UTF-8 is replaced."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise BadInputError(f"{path}: corrupt gzip ({exc})") from None
    return data.decode("utf-8", errors="replace").lstrip("\ufeff")


def to_float(values: pd.Series) -> np.ndarray:
    """Numbers from text cells such as ``37 %``, ``1234 MiB``, ``[N/A]``; missing -> NaN."""
    text = values.astype(str).str.strip()
    text = text.str.replace(r"\s*(%|MiB|GiB|KiB|MB|W|MHz|C|B/s|KB/s)$", "", regex=True)
    text = text.mask(text.str.fullmatch(MISSING_VALUES.pattern, case=False), None)
    return pd.to_numeric(text, errors="coerce").to_numpy(np.float64, copy=True)


def hex_or_float(values: pd.Series) -> np.ndarray:
    """Bitmasks written as ``0x0000000000000004`` (nvidia-smi) or as plain numbers."""
    text = values.astype(str).str.strip()
    is_hex = text.str.match(r"^0[xX][0-9a-fA-F]+$")
    out = to_float(values.where(~is_hex, "nan")).copy()
    if is_hex.any():
        out[is_hex.to_numpy()] = [float(int(h, 16)) for h in text[is_hex]]
    return out


def epoch_ns(values: pd.Series) -> tuple[np.ndarray, str]:
    """Times as int64 epoch ns, and the time base (``epoch`` or ``epoch (naive local time read as UTC)``).

    Numbers are epoch seconds (or ms/us/ns when that large); text is a date such as
    nvidia-smi's ``2024/01/15 10:23:45.123``. Unparseable cells become ``-1``.
    """
    text = values.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all() and len(numbers):
        arr = numbers.to_numpy(np.float64)
        scale = _epoch_scale(float(np.nanmedian(np.abs(arr))))
        return np.round(arr * scale).astype(np.int64), "epoch"
    parsed = pd.to_datetime(text, format="%Y/%m/%d %H:%M:%S.%f", errors="coerce")
    if parsed.isna().any():
        retry = pd.to_datetime(text[parsed.isna()], format="mixed", errors="coerce", utc=False)
        parsed = parsed.astype(object).where(parsed.notna(), retry)
        parsed = pd.to_datetime(parsed, errors="coerce", utc=True)
        base = "epoch"
    else:
        parsed = parsed.dt.tz_localize("UTC")
        base = "epoch (naive local time read as UTC)"
    ns = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return np.where(parsed.isna().to_numpy(), -1, ns), base


def _epoch_scale(magnitude: float) -> float:
    if magnitude > 1e17:
        return 1.0  # ns
    if magnitude > 1e14:
        return 1e3  # us
    if magnitude > 1e11:
        return 1e6  # ms
    return 1e9  # s
