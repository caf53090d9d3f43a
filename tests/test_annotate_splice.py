"""The streaming splice behind mlprof annotate: the original bytes, the events after the last event, any chunking."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from mlprof.annotate import writer
from mlprof.annotate.splice import EventsSplicer, SpliceError
from mlprof.cli import main
from mlprof.trace.loader import load_trace

from conftest import SAMPLES

INSERT = b'{"ph":"i","name":"new"},{"ph":"i","name":"newer"}'

TRICKY = (
    b'\xef\xbb\xbf{"schemaVersion": 1, "note": "\\"traceEvents\\": [ not this one \\\\", '
    b'"nested": {"traceEvents": [1, [2]]},\n'
    b'  "traceEvents" :\t[ {"name": "a]}\\\\", "args": {"x": [1, [2, {"y": "\\\\\\"]"}]]}},\n'
    b'    {"name": "b\\"}{\\"", "ts": 1712195495519689.047, "id": 18446744073709551615}  \n\n ] ,'
    b' "after": [1, 2], "z": "]"}\n'
)
"""BOM, a quoted key and brackets in strings, escaped backslashes before quotes, a nested traceEvents
key, nested arrays in events, numbers a float64 cannot hold, whitespace before the ``]``, keys after."""


def _reference(doc: bytes, insert: bytes) -> bytes:
    """Where the insertion must go, found by decoding the whole document (what annotate did before streaming)."""
    body = doc.removeprefix(b"\xef\xbb\xbf")
    top = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    raw = bytes(top["traceEvents"])
    start = len(doc) - len(body) + body.index(raw) if body.count(raw) == 1 else None
    assert start is not None
    close = start + len(raw) - 1
    inner_end = close
    while doc[inner_end - 1 : inner_end] in (b" ", b"\t", b"\r", b"\n"):
        inner_end -= 1
    glue = b"," if inner_end > start + 1 and insert else b""
    return doc[:inner_end] + glue + insert + doc[inner_end:]


def _splice(doc: bytes, insert: bytes, chunk: int) -> bytes:
    out: list[bytes] = []
    splicer = EventsSplicer(out.append, insert)
    for i in range(0, len(doc), chunk):
        splicer.feed(doc[i : i + chunk])
    splicer.finish()
    return b"".join(out)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_tricky_document_spliced_at_the_right_bracket_whatever_the_chunking(chunk: int) -> None:
    expected = _reference(TRICKY, INSERT)
    got = _splice(TRICKY, INSERT, chunk)
    assert got == expected
    events = msgspec.json.decode(got.removeprefix(b"\xef\xbb\xbf"), type=dict[str, msgspec.Raw])["traceEvents"]
    names = [e.get("name") for e in msgspec.json.decode(events, type=list[dict[str, msgspec.Raw]])]
    assert [msgspec.json.decode(n) for n in names if n is not None] == ["a]}\\", 'b"}{"', "new", "newer"]
    assert got.endswith(b"18446744073709551615}," + INSERT + b'  \n\n ] , "after": [1, 2], "z": "]"}\n')
    assert _splice(TRICKY, b"", chunk) == TRICKY  # nothing to insert: an exact copy


@pytest.mark.parametrize(
    "doc",
    [
        b'{"traceEvents": [ ]}',
        b'{"traceEvents":[]}',
        b'{"traceEvents":[\n{"ph":"X"}\n]\n}',
        b'{"a": "[", "traceEvents": [{"ph": "X"}]}',
        b'{"traceEvents": [{"ph": "X"}, {"ph": "M"}], "deviceProperties": [{"id": 0}]}',
    ],
)
def test_small_documents(doc: bytes) -> None:
    for chunk in (1, 4, len(doc)):
        assert _splice(doc, INSERT, chunk) == _reference(doc, INSERT)
    assert _splice(b'{"traceEvents": [ ]}', INSERT, 3) == b'{"traceEvents": [' + INSERT + b" ]}"


def test_bare_array_of_events() -> None:
    """The Chrome trace format's bare array form (``analyze`` reads it; annotate splices into it too)."""
    for doc in (b'[{"ph": "X", "ts": 1}, {"ph": "i"} ]\n', b"\xef\xbb\xbf [ ]"):
        for chunk in (1, 3, len(doc)):
            out = _splice(doc, INSERT, chunk)
            close = doc.rindex(b"]")
            body = doc[:close].rstrip()
            glue = b"," if body.rstrip().endswith(b"}") else b""
            assert out == body + glue + INSERT + doc[len(body) :]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b'"x" [1]', "not a JSON object or array"),
        (b'[{"ph": "X"}', "not closed"),
        (b'{"events": [{"ph": "X"}]}', "no top-level traceEvents"),
        (b'{"meta": {"traceEvents": [{"ph": "X"}]}}', "no top-level traceEvents"),
        (b'{"note": "\\"traceEvents\\": [", "x": 1}', "no top-level traceEvents"),
        (b'{"traceEvents": [{"ph": "X", "ts": 1, "dur": 2}', "not closed"),
        (b'{"traceEvents": [{"name": "a\\', "not closed"),
    ],
)
def test_not_a_trace_object(doc: bytes, message: str) -> None:
    for chunk in (1, 3, len(doc)):
        with pytest.raises(SpliceError, match=message):
            _splice(doc, INSERT, chunk)


def test_real_trace_copied_the_same_in_small_and_large_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = SAMPLES / "synthetic" / "data_starvation.json.gz"
    assert main(["annotate", str(source), "-o", str(tmp_path / "big.json")]) == 0
    monkeypatch.setattr(writer, "COPY_CHUNK_BYTES", 4099)  # many chunks, cut at odd places
    assert main(["annotate", str(source), "-o", str(tmp_path / "small.json.gz")]) == 0
    big, small = (tmp_path / "big.json").read_bytes(), gzip.decompress((tmp_path / "small.json.gz").read_bytes())
    assert big == small
    original = gzip.decompress(source.read_bytes())
    inserted = len(big) - len(original)
    assert inserted > 0 and big == _reference(original, _inserted_events(big, original))
    assert "events added" in capsys.readouterr().out


def _inserted_events(copy: bytes, original: bytes) -> bytes:
    """The bytes the copy holds that the original does not (one contiguous run)."""
    a, b = np.frombuffer(original, np.uint8), np.frombuffer(copy, np.uint8)
    first = int(np.argmax(a != b[: len(a)]))
    rest = len(copy) - len(original)
    assert copy[first + rest :] == original[first:]
    return copy[first + 1 : first + rest]  # after the comma


def test_invalid_utf8_becomes_u_fffd_so_the_copy_is_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = gzip.decompress((SAMPLES / "synthetic" / "data_starvation.json.gz").read_bytes())
    name = b'"thread 100 (python3)'
    at = original.index(name)
    broken = original[: at + 1] + b"\xff" + original[at + 1 :]
    source = tmp_path / "broken.json"
    source.write_bytes(broken)
    assert main(["annotate", str(source), "-o", str(tmp_path / "out.json")]) == 0
    assert "invalid UTF-8" in capsys.readouterr().out
    copy = (tmp_path / "out.json").read_bytes()
    fixed = broken[: at + 1] + "\ufffd".encode() + broken[at + 2 :]
    assert copy.startswith(fixed[: at + 4]) and source.read_bytes() == broken
    assert len(json.loads(copy.decode("utf-8"))["traceEvents"]) > len(json.loads(fixed)["traceEvents"])
    assert load_trace(tmp_path / "out.json").meta.num_events > load_trace(source).meta.num_events
