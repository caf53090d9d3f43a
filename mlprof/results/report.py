"""What an analysis returns: a :class:`Report`, the versioned JSON report with DataFrame views.

``mlprof.analyze(...)`` returns one; every command renders one; ``Report.from_json``
reads one back from ``mlprof analyze --format json`` output. The report's content is
the JSON contract (``schema_version``, see :mod:`mlprof.results.schema` and the
README), so what a notebook sees, what the CLI prints and what a file holds are the
same numbers. A report computed in this process also carries the live analysis
(``report.analysis``: the traces, per-rank tables) for the commands that need more
than the report (``annotate`` draws on the trace's events); one read back from JSON
does not.

This module is a leaf: it imports nothing from mlprof but the error types and the spill file
(:mod:`mlprof.results.spill`, standard library only), so renderers and notebooks can load a
report without the analysis stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pandas as pd

from mlprof.errors import BadInputError
from mlprof.results.spill import RawRows
from mlprof.untrusted import json_text


class _Version(msgspec.Struct):
    """The one key a report is checked by before its data is decoded (the others are skipped unread)."""

    schema_version: Any = ""


SUPPORTED_MAJOR = "1"
"""Reports of this schema major version can be read back (a minor bump only adds keys)."""

FINDING_COLUMNS = (
    "rule",
    "name",
    "category",
    "severity",
    "title",
    "expected_speedup",
    "time_lost_ms_per_step",
    "step_ms",
    "confidence",
)
"""The leading columns of :attr:`Report.findings` (the rest of each finding's keys follow)."""


@dataclass(eq=False)
class Report:
    """One analysis, as the versioned JSON report plus DataFrame views of its tables.

    ``data`` is the JSON report itself (plain dicts, lists, str, int, float, None):
    ``to_json()`` writes it and ``Report.from_json()`` reads it back unchanged. Two
    reports are equal when their data is.
    """

    data: dict[str, Any]
    analysis: Any = field(default=None, repr=False)
    """The live :class:`mlprof.analysis.Analysis` (or ``CounterAnalysis``) when computed here; None when read."""

    def __post_init__(self) -> None:
        # Normalise to what JSON holds (tuples -> lists, numpy scalars -> numbers), so a report
        # read back from its JSON equals the report that wrote it.
        self.data = msgspec.json.decode(msgspec.json.encode(self.data))
        self._check_version()

    @classmethod
    def of_encoded(cls, encoded: bytes | str, analysis: Any = None) -> Report:
        """The report whose data is ``encoded`` (its JSON as ``msgspec.json.encode`` wrote it) decoded: what
        ``Report(data)`` holds, without holding ``data`` and its normalised copy at once.

        The data is decoded on first use of :attr:`data`: until then the report holds only the compact JSON
        (a 1,024-rank job's report is ~2.5 MB of it, against ~10 MB of Python values decoded), and
        :meth:`to_json` and :meth:`json_chunks` indent that (the same text as encoding the decoded values:
        msgspec writes each value back as it read it). ``mlprof analyze --format json`` never decodes it."""
        report = cls.__new__(cls)
        report.__dict__["_compact"] = encoded.encode() if isinstance(encoded, str) else encoded
        report.analysis = analysis
        version = msgspec.json.decode(report.__dict__["_compact"], type=_Version).schema_version
        report._check_version(str(version))
        return report

    @classmethod
    def of_parts(cls, values: dict[str, Any], analysis: Any = None) -> Report:
        """The report of ``values`` as :func:`encode_parts` writes them, some of them already encoded (lists of
        ``msgspec.Raw``, or :class:`~mlprof.results.spill.RawRows` in the spill file: a job's per-rank rows,
        :func:`mlprof.results.schema.build_report`).

        Every other value is encoded now (the report does not change when the analysis does), but the rows
        are not encoded once more into one buffer: the report holds their compact JSON where it is (the spill
        file's rows are read back one at a time); the data is decoded on first use of :attr:`data`, and
        :meth:`json_chunks` writes the text from the parts piece by piece."""
        report = cls.__new__(cls)
        report._check_version(str(values.get("schema_version", "")))
        report.__dict__["_parts"] = _frozen(values)
        report.analysis = analysis
        return report

    if not TYPE_CHECKING:  # (for type checkers the report has its declared fields only)

        def __getattr__(self, name: str) -> Any:
            # Only reached while ``data`` is not set: a report made by of_encoded decodes it on first use, and
            # from then on the decoded values are the report (changing them changes what to_json writes).
            if name != "data" or not ("_compact" in self.__dict__ or "_parts" in self.__dict__):
                raise AttributeError(name)
            self.data = msgspec.json.decode(self._encoded())
            self.__dict__.pop("_compact", None)
            self.__dict__.pop("_parts", None)
            return self.data

    def _check_version(self, version: str | None = None) -> None:
        if version is None:
            version = str(self.data.get("schema_version", ""))
        if version.split(".", 1)[0] != SUPPORTED_MAJOR:
            raise BadInputError(
                f"not an mlprof report of schema 1.x (schema_version {version or 'missing'}); "
                "write it with `mlprof analyze --format json`"
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Report) and self.data == other.data

    __hash__ = None  # type: ignore[assignment]

    # -- reading and writing -------------------------------------------------------------
    def to_json(self, indent: int = 2) -> str:
        """The JSON report, as ``mlprof analyze --format json`` writes it (ends with a newline)."""
        raw: bytes = self._encoded()
        if indent:
            raw = msgspec.json.format(raw, indent=indent)
        text = raw.decode()
        del raw  # a large report's text is held once, then twice only while it is escaped
        text = json_text(text)  # the same string when nothing needs escaping
        text += "\n"  # in place where the string is not shared
        return text

    def json_chunks(self, indent: int = 2) -> Iterator[str]:
        """:meth:`to_json`'s text in pieces (joined, they are that text), for a writer that writes them as they
        come: a large list or object is indented element by element, so no more than a piece of the text is held
        at once (a 1,024-rank job's report is ~4 MB of indented text, and indenting it whole held ~10 MB)."""
        if not indent:
            yield self.to_json(indent)
            return
        parts = self.__dict__.get("_parts")
        pieces = _indented_values(parts, indent, 0) if parts is not None else _indented(self._encoded(), indent, 0)
        for piece in pieces:
            yield json_text(piece)
        yield "\n"

    def _encoded(self) -> bytes:
        """The compact JSON: as built (not decoded), else the data encoded."""
        compact: bytes | None = self.__dict__.get("_compact")
        if compact is not None:
            return compact
        parts = self.__dict__.get("_parts")
        return encode_parts(parts) if parts is not None else msgspec.json.encode(self.data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report as Python values (a copy)."""
        result: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self.data))
        return result

    @classmethod
    def from_json(cls, source: str | bytes | Path) -> Report:
        """A report from its JSON text, or from a file holding it (a :class:`~pathlib.Path`)."""
        text: str | bytes
        if isinstance(source, Path):
            try:
                text = source.read_bytes()
            except OSError as exc:
                raise BadInputError(f"{source}: cannot read ({exc.strerror or exc})") from None
        else:
            text = source
        try:
            data = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise BadInputError(f"not a JSON report ({exc})") from None
        if not isinstance(data, dict):
            raise BadInputError("not an mlprof JSON report (the top level is not an object)")
        return cls(data)

    # -- what it is ----------------------------------------------------------------------
    @property
    def schema_version(self) -> str:
        return str(self.data["schema_version"])

    @property
    def kind(self) -> str:
        """``trace`` (a trace or job was analysed) or ``counters`` (a GPU counters file alone)."""
        return "trace" if self.data.get("trace") is not None else "counters"

    @property
    def path(self) -> str | None:
        trace = self.data.get("trace")
        if trace is not None:
            return str(trace["path"])
        paths = (self.data.get("counters") or {}).get("paths") or []
        return ", ".join(str(p) for p in paths) or None

    @property
    def notes(self) -> list[str]:
        return list(self.data.get("notes") or [])

    @property
    def record_next(self) -> list[str]:
        return list(self.data.get("record_next") or [])

    @property
    def step_ms(self) -> float | None:
        """The mean step (ms) the findings' speedups are relative to."""
        value = (self.data.get("checks") or {}).get("step_ms")
        return None if value is None else float(value)

    # -- tables --------------------------------------------------------------------------
    @property
    def findings(self) -> pd.DataFrame:
        """One row per finding, ranked (largest expected speedup first)."""
        rows = self.data.get("findings") or []
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=list(FINDING_COLUMNS))
        lead = [c for c in FINDING_COLUMNS if c in frame.columns]
        return frame[lead + [c for c in frame.columns if c not in lead]]

    @property
    def plan(self) -> pd.DataFrame:
        """The fixes in ranked order: ``rule``, ``saves_ms_per_step``, ``step_ms_after``, ``cumulative_speedup``."""
        columns = ["rule", "saves_ms_per_step", "step_ms_after", "cumulative_speedup"]
        return pd.DataFrame(self.data.get("plan") or [], columns=columns)

    @property
    def steps(self) -> pd.DataFrame:
        """One row per analysed step: ``step``, ``start_ns``, ``dur_ms``, ``<category>_ms`` (job: mean over ranks)."""
        return pd.DataFrame(self.data.get("steps") or [])

    @property
    def breakdown(self) -> pd.DataFrame:
        """One row per category (index): ``ms``, ``pct`` of wall time, ``ms_per_step``, ``meaning``."""
        bd = self.data.get("breakdown")
        if not bd:
            return pd.DataFrame(columns=["ms", "pct", "ms_per_step", "meaning"])
        frame = pd.DataFrame.from_dict(bd["categories"], orient="index")
        frame.index.name = "category"
        return frame

    @property
    def ranks(self) -> pd.DataFrame:
        """One row per rank: ``rank``, ``path``, ``step_source``, ``steps`` (count), median step ms, GPU busy %."""
        rows = [
            {
                "rank": r["rank"],
                "path": r["path"],
                "step_source": r["step_source"],
                "steps": len(r["steps"]),
                "step_ms_median": (r["breakdown"]["step_time_ms"] or {}).get("median"),
                "gpu_busy_pct": r["breakdown"]["gpu_busy_pct"],
            }
            for r in self.data.get("ranks") or []
        ]
        columns = ["rank", "path", "step_source", "steps", "step_ms_median", "gpu_busy_pct"]
        return pd.DataFrame(rows, columns=columns)

    @property
    def kernels(self) -> pd.DataFrame:
        """One row per kernel name over the analysed steps (schema 1.4; empty for older reports)."""
        return pd.DataFrame(self.data.get("kernels") or [])

    @property
    def operators(self) -> pd.DataFrame:
        """One row per CPU operator name over the analysed steps (schema 1.4; empty for older reports)."""
        return pd.DataFrame(self.data.get("operators") or [])

    def __repr__(self) -> str:
        n = len(self.data.get("findings") or [])
        top = self.data["findings"][0]["rule"] if n else "none"
        return f"<mlprof Report {self.path!r}: {n} finding(s), top {top}, schema {self.schema_version}>"


SPLIT_BYTES = 8 * 1024
"""A list or object whose compact JSON is longer than this is indented element by element in
:meth:`Report.json_chunks`; a shorter one as one piece. Indented, a piece is 2-3 times its compact size, and it is
held three or four times over while written (formatted, indented to its level, decoded, escaped): at 32 KB the
largest piece of a 1,024-rank job's report was 64 KB of text (42 KB at 256 ranks), at 8 KB it is 16 KB (7.5 KB)."""


def _indented(raw: bytes | msgspec.Raw, indent: int, level: int, split: int = SPLIT_BYTES) -> Iterator[str]:
    """``msgspec.json.format(raw, indent=indent)`` placed at nesting ``level``, as pieces: what formatting the
    whole report writes for this value, with each of its lines after the first indented ``level`` deep."""
    view = memoryview(raw)
    opener = view[:1].tobytes()
    if len(view) <= max(split, 2) or opener not in (b"{", b"["):  # "{}", "[]": empty
        text = msgspec.json.format(raw, indent=indent)
        if level:
            text = text.replace(b"\n", b"\n" + b" " * (indent * level))  # JSON strings hold no raw newline
        yield text.decode()
        return
    pad = " " * (indent * (level + 1))
    yield opener.decode() + "\n"
    if opener == b"{":
        members = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
        last = len(members) - 1
        for i, (key, value) in enumerate(members.items()):
            yield pad + msgspec.json.encode(key).decode() + ": "
            yield from _indented(value, indent, level + 1, split)
            yield ",\n" if i < last else "\n"
        close = "}"
    else:
        elements = msgspec.json.decode(raw, type=list[msgspec.Raw])
        last = len(elements) - 1
        for i, value in enumerate(elements):
            yield pad
            yield from _indented(value, indent, level + 1, split)
            yield ",\n" if i < last else "\n"
        close = "]"
    yield " " * (indent * level) + close


def encode_parts(values: Any) -> bytes:
    """``msgspec.json.encode(values)``, where ``values`` may hold rows in the spill file
    (:class:`~mlprof.results.spill.RawRows`: each row written as the list's element, as it was encoded)."""
    return msgspec.json.encode(values, enc_hook=_raw_rows)


def _raw_rows(value: Any) -> Any:
    if isinstance(value, RawRows):
        return [msgspec.Raw(row) for row in value]
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _rows(value: Any) -> bool:
    if isinstance(value, RawRows):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, msgspec.Raw) for v in value)


def _holds_rows(value: Any) -> bool:
    """A list of encoded rows, or a dict holding one (at any depth of dicts)."""
    return _rows(value) or (isinstance(value, dict) and any(_holds_rows(v) for v in value.values()))


def _frozen(value: Any) -> Any:
    """``value`` with everything but its lists of encoded rows encoded (``msgspec.Raw``), the dicts that hold
    such lists kept as dicts of their (frozen) values."""
    if isinstance(value, RawRows):
        return value  # rows in the spill file: never changed once written
    if _rows(value):
        return list(value)
    if isinstance(value, dict) and _holds_rows(value):
        return {k: _frozen(v) for k, v in value.items()}
    return msgspec.Raw(msgspec.json.encode(value))


def _indented_values(value: Any, indent: int, level: int) -> Iterator[str]:
    """:func:`_indented` of ``msgspec.json.encode(value)``, walking ``value``'s dicts (of str keys) and lists, so
    that its already encoded parts (``msgspec.Raw``) are indented where they are, not encoded together first; rows
    in the spill file (:class:`~mlprof.results.spill.RawRows`) are read back one at a time."""
    if isinstance(value, RawRows):
        if not len(value):
            yield "[]"
            return
        pad = " " * (indent * (level + 1))
        yield "[\n"
        last = len(value) - 1
        for i, row in enumerate(value):
            yield pad
            yield from _indented(row, indent, level + 1)
            yield ",\n" if i < last else "\n"
        yield " " * (indent * level) + "]"
        return
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        items: list[tuple[str, Any]] = [(msgspec.json.encode(k).decode() + ": ", v) for k, v in value.items()]
        opener, close = "{", "}"
    elif isinstance(value, (list, tuple)) and value:
        items = [("", v) for v in value]
        opener, close = "[", "]"
    else:
        yield from _indented(value if isinstance(value, msgspec.Raw) else msgspec.json.encode(value), indent, level)
        return
    pad = " " * (indent * (level + 1))
    yield opener + "\n"
    last = len(items) - 1
    for i, (key, item) in enumerate(items):
        yield pad + key
        yield from _indented_values(item, indent, level + 1)
        yield ",\n" if i < last else "\n"
    yield " " * (indent * level) + close
