"""Fuzzing the reader: mangled bytes and structurally random events.

(a) A small valid Kineto trace is serialized and then mangled (truncated, bytes
deleted, inserted or flipped, random unicode spliced in, gzipped then cut). ``mlprof
analyze`` must exit 0 or 2, and on 2 print exactly one ``mlprof: error:`` line.

(b) Events whose every field may have any JSON type. ``load_trace`` must either
succeed or raise :class:`BadInputError`, and when it succeeds the sliced reader (tiny
slices) must give exactly the same tables as the unsliced one.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlprof.trace.jsonstream as jsonstream
from mlprof.cli import main
from mlprof.errors import BadInputError
from mlprof.trace import load_trace
from mlprof.trace.model import Trace

from conftest import X, assert_same_tables

FUZZ = settings(
    max_examples=int(os.environ.get("MLPROF_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

BASE_US = 1_712_195_495_505_000


# ---- a small valid trace -------------------------------------------------------------


def _memory(ts: float, nbytes: int, total: int) -> dict[str, Any]:
    return {
        "ph": "i",
        "cat": "cpu_instant_event",
        "s": "t",
        "name": "[memory]",
        "pid": 1,
        "tid": 1,
        "ts": ts,
        "args": {"Total Reserved": 1 << 21, "Total Allocated": total, "Bytes": nbytes, "Addr": 4096, "Device Id": 0},
    }


def valid_trace_events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [{"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "py"}}]
    for step in (1, 2):
        t0 = BASE_US + (step - 1) * 1000
        corr = 40 + step
        events += [
            X("user_annotation", f"ProfilerStep#{step}", t0, 900),
            X("cpu_op", "aten::linear", t0 + 10, 300, **{"External id": step, "Input Dims": [[8, 16], [16]]}),
            X("cpu_op", "aten::mm", t0 + 20, 200, **{"External id": step + 10}),
            X("cuda_runtime", "cudaLaunchKernel", t0 + 30, 15.5, correlation=corr, **{"External id": step + 10}),
            X(
                "kernel",
                "ampere_sgemm_64x32_nn",
                t0 + 60.25,
                120.125,
                pid=0,
                tid=7,
                device=0,
                stream=7,
                correlation=corr,
                **{"External id": step + 10},
            ),
            X("cuda_runtime", "cudaMemcpyAsync", t0 + 400, 8, correlation=corr + 100),
            X(
                "gpu_memcpy",
                "Memcpy DtoH (Device -> Pinned)",
                t0 + 410,
                30,
                pid=0,
                tid=7,
                device=0,
                stream=7,
                correlation=corr + 100,
                bytes=4096,
            ),
            {"ph": "s", "id": corr, "pid": 1, "tid": 1, "ts": t0 + 30, "cat": "ac2g", "name": "ac2g"},
            {"ph": "f", "id": corr, "pid": 0, "tid": 7, "ts": t0 + 60.25, "cat": "ac2g", "name": "ac2g", "bp": "e"},
            _memory(t0 + 50, 4096, 4096),
            _memory(t0 + 700, -4096, 0),
        ]
    return events


def valid_trace_bytes() -> bytes:
    doc = {
        "schemaVersion": 1,
        "deviceProperties": [{"id": 0, "name": "GPU", "totalGlobalMem": 1 << 34, "numSms": 108}],
        "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},
        "traceEvents": valid_trace_events(),
        "baseTimeNanoseconds": 1_700_000_000_000_000_000,
    }
    return json.dumps(doc, indent=1).encode()


VALID = valid_trace_bytes()


@contextlib.contextmanager
def trace_file(data: bytes, suffix: str = ".json") -> Iterator[Path]:
    """A real file per example (function-scoped pytest fixtures do not mix with hypothesis)."""
    with tempfile.TemporaryDirectory(prefix="mlprof-fuzz-") as d:
        path = Path(d) / f"trace{suffix}"
        path.write_bytes(data)
        yield path


def run_main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def check_cli_contract(path: Path) -> int:
    before = path.read_bytes()
    rc, out, err = run_main("analyze", str(path), "--format", "json")
    assert rc in (0, 2), f"exit {rc}: {err!r}"
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("mlprof: error:"), lines[0]
        assert out == ""
    else:
        report = json.loads(out)
        assert report["schema_version"]
        assert "Warning" not in err, err  # e.g. numpy overflow warnings from wrapped times
    assert "Traceback" not in err
    assert path.read_bytes() == before
    return rc


def test_valid_trace_is_analysed() -> None:
    with trace_file(VALID) as path:
        assert check_cli_contract(path) == 0
        trace = load_trace(path)
    assert len(trace.gpu) == 4
    assert list(trace.steps["step"]) == [1, 2]
    assert len(trace.memory) == 4


# ---- (a) mangled bytes ---------------------------------------------------------------

_unicode_chunks = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Z", "C", "M")), min_size=1, max_size=8
).map(lambda s: s.encode("utf-8", "surrogatepass"))
_json_chunks = st.sampled_from(
    [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"},{", b"}, {", b"null", b"1e999", b"-", b".", b"\x00"]
)


@st.composite
def mangled(draw: st.DrawFn) -> tuple[bytes, str]:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "delete", "insert", "flip", "unicode", "json", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "flip":
            for _ in range(draw(st.integers(1, 8))):
                if data:
                    i = draw(st.integers(0, len(data) - 1))
                    data[i] ^= draw(st.integers(1, 255))
        elif op == "unicode":
            data[at:at] = draw(_unicode_chunks)
        elif op == "json":
            data[at:at] = draw(_json_chunks)
        else:  # duplicate a stretch: repeated keys, repeated events
            n = draw(st.integers(1, 200))
            data[at:at] = data[at : at + n]
    out = bytes(data)
    container = draw(st.sampled_from(["plain", "plain", "gzip", "gzip-cut", "gzip-flip"]))
    if container == "plain":
        return out, ".json"
    packed = bytearray(gzip.compress(out))
    if container == "gzip-cut":
        del packed[draw(st.integers(0, len(packed) - 1)) :]
    elif container == "gzip-flip":
        i = draw(st.integers(10, len(packed) - 1))
        packed[i] ^= draw(st.integers(1, 255))
    return bytes(packed), ".json.gz"


@FUZZ
@given(case=mangled())
def test_mangled_bytes_exit_0_or_one_error_line(case: tuple[bytes, str]) -> None:
    data, suffix = case
    with trace_file(data, suffix) as path:
        check_cli_contract(path)


@FUZZ
@given(cut=st.integers(0, len(VALID) - 1))
def test_truncated_trace_is_an_error(cut: int) -> None:
    """Any proper prefix of the trace object is incomplete JSON: exit 2, never a partial read."""
    with trace_file(VALID[:cut]) as path:
        assert check_cli_contract(path) == 2


@FUZZ
@given(cut=st.integers(0, len(gzip.compress(VALID)) - 9))
def test_truncated_gzip_is_an_error(cut: int) -> None:
    packed = gzip.compress(VALID)
    with trace_file(packed[:cut], ".json.gz") as path:
        assert check_cli_contract(path) == 2


# ---- (b) structurally random events --------------------------------------------------


class RawNumber:
    """A JSON number written exactly as given (``json.dumps`` would re-round floats)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"RawNumber({self.text})"


def dumps(value: Any) -> str:
    if isinstance(value, RawNumber):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**100), max_value=2**100),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.from_regex(r"-?[0-9]{1,22}(\.[0-9]{1,9})?([eE][+-]?[0-9]{1,3})?", fullmatch=True).map(RawNumber),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_times = st.one_of(
    st.integers(BASE_US, BASE_US + 10_000),
    st.from_regex(r"171219549550[0-9]{4}\.[0-9]{3}", fullmatch=True).map(RawNumber),
    st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True).map(RawNumber),
    json_values,
)
_ARG_KEYS = [
    "External id",
    "external id",
    "correlation",
    "device",
    "stream",
    "bytes",
    "Bytes",
    "Total Allocated",
    "Total Reserved",
    "Addr",
    "Device Type",
    "Device Id",
    "Collective name",
    "In msg nelems",
    "Out msg nelems",
    "Group size",
    "dtype",
    "Process Group Name",
    "Seq",
    "Call stack",
    "name",
    "labels",
    "sort_index",
    "Comms Id",
    "Input Dims",
]
_args = st.one_of(
    st.dictionaries(st.sampled_from(_ARG_KEYS), json_values, max_size=6),
    st.dictionaries(
        st.sampled_from(_ARG_KEYS),
        st.one_of(st.integers(-5, 2**70), st.sampled_from(["stream 7", "7", "x", "allreduce", "float32"])),
        max_size=6,
    ),
    json_values,
)


def _field(typical: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(typical, typical, typical, json_values)


random_event = st.fixed_dictionaries(
    {},
    optional={
        "ph": _field(st.sampled_from(["X", "X", "X", "i", "I", "s", "f", "t", "M", "B", "E", "C"])),
        "cat": _field(
            st.sampled_from(
                [
                    "cpu_op",
                    "kernel",
                    "gpu_memcpy",
                    "gpu_memset",
                    "cuda_runtime",
                    "cuda_driver",
                    "user_annotation",
                    "gpu_user_annotation",
                    "python_function",
                    "ac2g",
                    "cpu_instant_event",
                    "Trace",
                    "Kernel",
                    "Runtime",
                    "Operator",
                    "Memcpy",
                    "cuda_sync",
                ]
            )
        ),
        "name": _field(
            st.sampled_from(
                [
                    "ProfilerStep#1",
                    "ProfilerStep#2",
                    "ProfilerStep#x",
                    "[memory]",
                    "aten::mm",
                    "ncclDevKernel_AllReduce_Sum_f32",
                    "cudaLaunchKernel",
                    "cudaDeviceSynchronize",
                    "process_name",
                    "thread_name",
                    "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__",
                    "Optimizer.step#SGD.step",
                    "},{",
                    "}, {",
                ]
            )
            | st.text(max_size=10)
        ),
        "pid": _field(st.integers(-1, 3) | st.sampled_from(["Spans", "1"])),
        "tid": _field(st.integers(-1, 9) | st.sampled_from(["stream 7", "7"])),
        "ts": _times,
        "dur": _times,
        "id": _field(st.integers(0, 50)),
        "bp": _field(st.just("e")),
        "s": _field(st.sampled_from(["t", "p", "g"])),
        "args": _args,
    },
)
event_lists = st.lists(st.one_of(random_event, random_event, random_event, json_values), max_size=25)


@st.composite
def random_traces(draw: st.DrawFn) -> tuple[bytes, str]:
    events = draw(event_lists)
    if draw(st.booleans()):
        events = [*valid_trace_events(), *events]
        draw(st.randoms()).shuffle(events)
    shape = draw(st.sampled_from(["object", "object", "minified", "bare-array"]))
    if shape == "bare-array":
        text = dumps(events)
    else:
        header = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "distributedInfo": json_values | st.fixed_dictionaries({"rank": json_values}),
                    "deviceProperties": json_values | st.lists(json_values, max_size=2),
                    "baseTimeNanoseconds": json_values,
                    "schemaVersion": json_values,
                },
            )
        )
        text = dumps({**header, "traceEvents": events})
        if shape == "minified":
            text = text.replace(", ", ",").replace(": ", ":")
    suffix = draw(st.sampled_from([".json", ".json.gz"]))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:  # a stray byte that is not UTF-8 right after a quote: in a key, a value, a name
        quote = data.find(b'"', draw(st.integers(0, len(data) - 1)))
        if quote >= 0:
            data = data[: quote + 1] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[quote + 1 :]
    return (gzip.compress(data) if suffix.endswith(".gz") else data), suffix


def load_or_bad_input(path: Path) -> Trace | None:
    try:
        return load_trace(path)
    except BadInputError as exc:
        assert str(exc)
        return None


@FUZZ
@given(case=random_traces())
def test_random_events_load_or_bad_input(case: tuple[bytes, str]) -> None:
    data, suffix = case
    with trace_file(data, suffix) as path:
        whole = load_or_bad_input(path)
        with (
            mock.patch.object(jsonstream, "SLICE_BYTES", 256),
            mock.patch.object(jsonstream, "BLOCK_BYTES", 64),
        ):
            sliced = load_or_bad_input(path)
    if whole is None:
        assert sliced is None, "the sliced reader accepted what the whole read rejected"
        return
    assert sliced is not None, "the sliced reader rejected what the whole read accepted"
    assert_same_tables(whole, sliced)
    for name in ("gpu", "runtime", "host", "gpu_annotations"):
        table = whole.table(name)
        assert (table["dur"] >= 0).all()
        assert (table["end"] == table["ts"] + table["dur"]).all()


@FUZZ
@given(events=event_lists)
def test_random_events_through_the_cli(events: list[Any]) -> None:
    """The whole pipeline (reader, analyzers, report) on random events: exit 0 or one error line."""
    text = dumps({"traceEvents": [*valid_trace_events(), *events]})
    with trace_file(text.encode("utf-8", "surrogatepass")) as path:
        check_cli_contract(path)


@pytest.mark.parametrize("shape", ["object", "bare-array"])
def test_every_non_object_event_is_skipped(shape: str) -> None:
    junk: list[Any] = [1, "x", None, [], [{"ph": "X"}], True, 1.5, RawNumber("1e400")]
    events = [*junk, *valid_trace_events(), *junk]
    text = dumps(events if shape == "bare-array" else {"traceEvents": events})
    with trace_file(text.encode()) as path:
        trace = load_trace(path)
        assert check_cli_contract(path) == 0
    assert len(trace.gpu) == 4
    assert list(trace.steps["step"]) == [1, 2]


@st.composite
def random_slices(draw: st.DrawFn) -> bytes:
    """One slice as a parallel read's worker gets it (``{"traceEvents":[`` + events + ``]}``), with the events
    joined by any white space around their commas and, sometimes, a byte that is not UTF-8 inside a string."""
    events = [*valid_trace_events(), *draw(event_lists)]
    draw(st.randoms()).shuffle(events)
    texts = [dumps(e).encode("utf-8", "surrogatepass") for e in events]
    if draw(st.booleans()):
        texts = [t.replace(b", ", b",").replace(b": ", b":") for t in texts]
    seps = st.sampled_from([b",", b", ", b",\n", b" ,", b"\n,\t", b",  "])
    body = texts[0] + b"".join(draw(seps) + t for t in texts[1:])
    if draw(st.booleans()):
        quote = body.find(b'"', draw(st.integers(0, len(body) - 1)))
        if quote >= 0:
            body = body[: quote + 1] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[quote + 1 :]
    return b'{"traceEvents":[' + body + b"]}"


@FUZZ
@given(piece=random_slices(), sub_slice=st.sampled_from([1, 64, 256, 1024]))
def test_a_worker_decoding_in_place_gives_the_whole_slice(piece: bytes, sub_slice: int) -> None:
    """A parallel read's worker decodes its slice in pieces where they lie (brackets written over the bytes
    around each piece, :func:`mlprof.trace.parallel._build_in_pieces`): the columns are those of the slice decoded
    whole in one piece (the path the sequential reader's equality tests cover), or the same error, and the
    worker's buffer is as it was read."""
    from mlprof.trace import parallel
    from mlprof.trace.build import TableBuilder

    buffer = bytearray(piece)
    with mock.patch.object(parallel, "SUB_SLICE_BYTES", sub_slice):
        try:
            whole = parallel._build_whole(piece)
        except parallel.SliceFailed:
            with pytest.raises(parallel.SliceFailed):
                parallel._build_slice(buffer)
            assert buffer == piece
            return
        got = parallel._build_slice(buffer)
    assert buffer == piece
    assert (got.events, got.repaired_utf8, got.not_events) == (whole.events, whole.repaired_utf8, whole.not_events)
    a, b = TableBuilder(), TableBuilder()
    a.merge_partial(got)
    b.merge_partial(whole)
    tables_a, tables_b = a.finish(), b.finish()
    assert tables_a.keys() == tables_b.keys()
    for name, table in tables_b.items():
        pd.testing.assert_frame_equal(tables_a[name], table, check_exact=True, obj=name)


def test_invalid_utf8_only_where_nothing_is_read_gives_the_note_however_the_file_is_cut() -> None:
    """Invalid UTF-8 only in a key mlprof skips, and an element that is not an event beside it: the strict decoder
    never looks at the bad bytes, the lenient one repairs whatever piece it is given. Found by the fuzz test above:
    the note depended on the cut (the whole slice said "replaced", its 1-byte pieces did not)."""
    from mlprof.trace import parallel

    events = [dumps(e).encode() for e in valid_trace_events()]
    events[0] = events[0].replace(b'{"ph"', b'{"\xffunknown": 1, "ph"', 1)
    piece = b'{"traceEvents":[' + b", ".join([*events, b"null"]) + b"]}"
    with mock.patch.object(parallel, "SUB_SLICE_BYTES", 1):
        pieces, whole = parallel._build_slice(bytearray(piece)), parallel._build_whole(piece)
    assert pieces.repaired_utf8 and whole.repaired_utf8
    with trace_file(piece) as path:
        unsliced = load_trace(path)
        with mock.patch.object(jsonstream, "SLICE_BYTES", 256), mock.patch.object(jsonstream, "BLOCK_BYTES", 64):
            sliced = load_trace(path)
    assert "invalid UTF-8 in the file was replaced with U+FFFD" in unsliced.meta.notes
    assert_same_tables(unsliced, sliced)
