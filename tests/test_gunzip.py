"""The gzip reader (python-isal where installed) gives the standard library's bytes, tables and errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import threading
import zlib
from pathlib import Path

import pytest

from mlprof.errors import BadInputError
from mlprof.trace import jsonstream, load_trace

from conftest import EXTERNAL, assert_same_tables, broken_gzip, external

GOOD = b'{"traceEvents":[{"ph":"X","name":"a","ts":1,"dur":2,"pid":1,"tid":1}]}'

isal = pytest.importorskip("isal.igzip", reason="python-isal not installed (not on this platform)")


def _inflated(reader: io.RawIOBase | io.BufferedIOBase | object) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while block := reader.read(1 << 20):  # type: ignore[attr-defined]
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def test_every_real_gzip_trace_inflates_to_the_standard_librarys_bytes() -> None:
    external("hta/SOURCE.md")  # marks the test external; skips without the folder
    files = sorted(EXTERNAL.rglob("*.gz"))
    assert len(files) >= 30
    for path in files:
        with path.open("rb") as fh:
            ours = jsonstream.gunzip(fh)
            assert type(ours) is isal.GzipFile  # the fast reader is the one under test
            got = _inflated(ours)
        with gzip.open(path, "rb") as fh:
            assert got == _inflated(fh), path


@pytest.mark.parametrize(
    "relative",
    [
        "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz",
        "hta/tests/data/nccl_parser_config/nccl_data.json.gz",
    ],
)
def test_tables_equal_with_and_without_isal(relative: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = external(relative)
    fast = load_trace(path, workers=1)
    monkeypatch.setitem(sys.modules, "isal", None)  # import isal fails: the standard library's reader
    with path.open("rb") as fh:
        assert type(jsonstream.gunzip(fh)) is gzip.GzipFile
    assert_same_tables(fast, load_trace(path, workers=1))


BAD = {
    how: broken_gzip(GOOD * 4 if how == "corrupt" else GOOD, how)
    for how in ("truncated", "header", "corrupt", "crc", "trailing")
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_gzip_file_gets_the_standard_librarys_message(name: str, tmp_path: Path) -> None:
    data = BAD[name]
    with pytest.raises((OSError, EOFError, zlib.error)) as standard:
        gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    expected = "the file is truncated" if standard.type is EOFError else str(standard.value)
    path = tmp_path / "trace.json.gz"
    path.write_bytes(data)
    with pytest.raises(BadInputError) as ours:
        load_trace(path, workers=1)
    assert str(ours.value) == f"{path}: cannot read compressed data ({expected})"
    assert path.read_bytes() == data


def test_padding_and_members_read_as_the_standard_library_does(tmp_path: Path) -> None:
    path = tmp_path / "trace.json.gz"
    path.write_bytes(gzip.compress(GOOD[:20]) + gzip.compress(GOOD[20:]) + b"\0" * 10)
    trace = load_trace(path, workers=1)
    assert trace.host["name"].tolist() == ["a"]


def test_an_unexpected_error_in_the_reading_thread_is_raised_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault path we cannot cause for real: the reading thread failing with an error that is not a read error.
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            raise RuntimeError("boom")

    monkeypatch.setattr(jsonstream, "gunzip", lambda fileobj: Failing())
    path = tmp_path / "trace.json.gz"
    path.write_bytes(gzip.compress(GOOD))
    raised: list[BaseException] = []

    def read() -> None:
        try:
            jsonstream.read_trace_events(path, lambda events: None)
        except BaseException as exc:
            raised.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive()  # before the fix the consumer waited for ever on the queue
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError) and str(raised[0]) == "boom"
