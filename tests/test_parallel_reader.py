"""Worker-process decoding gives exactly the tables of the sequential reader."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlprof.trace import jsonstream, load_trace, parallel
from mlprof.trace.build import Partial, TableBuilder
from mlprof.trace.parallel import SliceFailed, read_parallel

from conftest import X, assert_same_tables, external, kernel, write_trace


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlprof.trace.loader.PARALLEL_MIN_JSON_BYTES", 0)
    monkeypatch.setattr("mlprof.trace.jsonstream.PARALLEL_SLICE_BYTES", 64 << 10)
    monkeypatch.setattr("mlprof.trace.jsonstream.BLOCK_BYTES", 16 << 10)
    monkeypatch.setattr("mlprof.trace.parallel.SUB_SLICE_BYTES", 8 << 10)  # a worker cuts each slice again


@pytest.mark.usefixtures("small_slices")
def test_parallel_equals_sequential_on_a_real_trace() -> None:
    path = external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")
    assert_same_tables(load_trace(path, workers=1), load_trace(path, workers=2))


@pytest.mark.usefixtures("small_slices")
def test_bad_textual_cut_falls_back_to_sequential(tmp_path: Path) -> None:
    # Names full of "}, {" tempt the textual cutter into cutting inside strings.
    events = [X("user_annotation", "ProfilerStep#1", 0, 10_000)]
    for i in range(3000):
        events.append(X("cpu_op", 'weird }, { name "}, {"' + "x" * (i % 50), i * 3, 2))
        events.append(kernel("k }, {", i * 3 + 1, 1))
    path = write_trace(tmp_path / "weird.json", events)
    parallel = load_trace(path, workers=2)
    assert_same_tables(load_trace(path, workers=1), parallel)
    assert len(parallel.host) == 3001


@pytest.mark.usefixtures("small_slices")
def test_workers_that_cannot_start_fall_back_to_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault path we cannot cause for real here: the OS refusing to fork.
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr("mlprof.trace.loader.read_parallel", refuse)
    path = external("hta/tests/data/trace_filter/sampled_rank-0.json.gz")
    assert_same_tables(load_trace(path, workers=2), load_trace(path, workers=1))


@pytest.mark.usefixtures("small_slices")
def test_plain_file_slices_are_read_by_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A plain file's slices go to the workers as offsets: the main process wraps no slice text itself
    # (only the tail it decodes), and the tables are the sequential reader's, here and from the gzip.
    path = external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")
    plain = tmp_path / "nccl_data.json"
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    wrapped: list[bytes] = []
    real_wrap = jsonstream._wrap

    def wrap(buf: bytearray, end: int, close: bytes) -> bytes:
        wrapped.append(close)
        return real_wrap(buf, end, close)

    monkeypatch.setattr("mlprof.trace.jsonstream._wrap", wrap)
    builder = TableBuilder()
    read_parallel(plain, builder, None, 2)
    assert wrapped == [b""]  # the tail alone
    sequential = load_trace(path, workers=1)
    assert_same_tables(sequential, load_trace(plain, workers=2))


@pytest.mark.usefixtures("small_slices")
def test_plain_file_changed_while_read_is_not_trusted(tmp_path: Path) -> None:
    # The workers read the bytes after the main process cut them: a file touched meanwhile is read again
    # sequentially (the loader's fallback), not stitched from two versions.
    path = external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")
    plain = tmp_path / "nccl_data.json"
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    size = plain.stat().st_size

    def touch(done: int, total: int) -> None:
        if done >= size // 2:
            os.utime(plain, ns=(1, 1))

    with pytest.raises(SliceFailed, match="changed while it was read"):
        read_parallel(plain, TableBuilder(), touch, 2)


_HALF_SENT = """
import gc, os, struct, sys, time
from concurrent.futures import ProcessPoolExecutor
from mlprof.interrupts import worker_pool

def half_send():  # in a worker: the start of a result, then nothing (as a worker stopped mid-send)
    pool = next(o for o in gc.get_objects() if isinstance(o, ProcessPoolExecutor))
    os.write(pool._result_queue._writer.fileno(), struct.pack("!i", 1 << 20) + b"x" * 10)
    time.sleep(60)

try:
    with worker_pool(2) as pool:
        pool.submit(half_send)
        time.sleep(1)  # the pool's thread is now waiting for the rest of that result
        raise RuntimeError("stop")  # as a SliceFailed: the workers are stopped
except RuntimeError:
    print("stopped", flush=True)
"""


def test_a_worker_stopped_mid_result_does_not_hang_the_exit() -> None:
    # Fault injected (a worker killed while it sends a result is a race): the pool's thread
    # then waited in recv() for ever and the interpreter's exit, which joins it, hung.
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", _HALF_SENT],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.returncode == 0 and proc.stdout == "stopped\n", proc.stderr


def _streamed_ranges(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The slices the block-by-block reader hands to ``on_range`` (it reads every byte to find them)."""
    got: list[tuple[int, int]] = []
    with monkeypatch.context() as m:
        m.setattr(jsonstream, "_plan_ranges", lambda path: None)
        jsonstream.read_trace_events(path, lambda events: None, on_slice=lambda piece: None, on_range=_collect(got))
    return got


def _collect(into: list[tuple[int, int]]) -> Any:
    return lambda start, end: into.append((start, end))


@pytest.mark.parametrize("bom", [False, True])
def test_plain_file_is_cut_where_the_block_reader_cuts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bom: bool
) -> None:
    # The cuts come from a window before each one (the main process reads ~64 KB per cut, not the file):
    # they are the block reader's, and the workers' tables the sequential reader's.
    monkeypatch.setattr(jsonstream, "PARALLEL_SLICE_BYTES", 1 << 20)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 64 << 10)
    source = external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")
    path = tmp_path / "nccl_data.json"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + gzip.decompress(source.read_bytes()))
    read = []
    real_pread = os.pread

    def counted(fd: int, n: int, offset: int) -> bytes:
        got = real_pread(fd, n, offset)
        read.append(len(got))
        return got

    with monkeypatch.context() as m:
        m.setattr(os, "pread", counted)
        plan = jsonstream._plan_ranges(path)
    assert plan is not None
    streamed = _streamed_ranges(path, monkeypatch)
    assert len(streamed) >= 8 and plan.ranges == streamed
    assert sum(read) < path.stat().st_size // 8, (sum(read), path.stat().st_size)

    def no_block_reader(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was read block by block")

    builder = TableBuilder()
    with monkeypatch.context() as m:
        m.setattr(jsonstream, "_BlockReader", no_block_reader)
        read_parallel(path, builder, None, 2)
    sequential = TableBuilder()
    jsonstream.read_trace_events(path, sequential.add)
    by_workers, by_one = builder.finish(), sequential.finish()
    assert by_workers.keys() == by_one.keys()
    for name, table in by_one.items():
        pd.testing.assert_frame_equal(by_workers[name], table, check_exact=True, obj=name)


@pytest.mark.usefixtures("small_slices")
def test_files_the_windows_cannot_cut_are_read_block_by_block(tmp_path: Path) -> None:
    events = [X("cpu_op", "aten::mm", i, 1) for i in range(2000)]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(events))
    no_key = tmp_path / "no_key.json"
    no_key.write_text(json.dumps({"x": "y" * (300 << 10)}))
    huge_event = write_trace(tmp_path / "huge.json", [X("cpu_op", "n" * (2 << 20), 0, 1), X("cpu_op", "m", 1, 1)])
    for path in (bare, no_key, huge_event):  # no boundary in the last MB before a cut: block by block
        assert jsonstream._plan_ranges(path) is None, path
    assert jsonstream._plan_ranges(external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")) is None  # gzip


@pytest.mark.parametrize("weird", [False, True])
def test_a_worker_builds_its_slice_in_pieces_as_the_whole(weird: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # In 8 KB pieces: the same columns as the slice decoded whole; a cut inside a string ("}, {" in a
    # name 8 KB into the slice) does not decode, and the slice is decoded whole.
    monkeypatch.setattr(parallel, "SUB_SLICE_BYTES", 8 << 10)
    events = json.loads(gzip.decompress(external("hta/tests/data/nccl_parser_config/nccl_data.json.gz").read_bytes()))
    chosen = events["traceEvents"][:3000]
    if weird:
        chosen[0] = {**chosen[0], "name": "a" * (9 << 10) + '}, {"' + "b" * 100}
    piece = b'{"traceEvents":[' + b", ".join(json.dumps(e).encode() for e in chosen) + b"]}"
    assert (parallel._build_in_pieces(piece) is None) == weird
    got, whole = parallel._build_slice(piece), parallel._build_whole(piece)
    assert got.events == whole.events == len(chosen)
    assert (got.repaired_utf8, got.not_events) == (whole.repaired_utf8, whole.not_events)
    _assert_partials_equal(got, whole)


def _assert_partials_equal(got: Partial, whole: Partial) -> None:
    """The tables of two slices' partial results, each merged into a builder of its own, are equal (and not tiny)."""
    a, b = TableBuilder(), TableBuilder()
    a.merge_partial(got)
    b.merge_partial(whole)
    tables_a, tables_b = a.finish(), b.finish()
    for name, table in tables_b.items():
        pd.testing.assert_frame_equal(tables_a[name], table, check_exact=True, obj=name)
    assert sum(len(t) for t in tables_b.values()) > 1000


@pytest.mark.parametrize("odd", ["none", "bad_utf8", "not_an_event", "odd_type", "tight_commas"])
def test_pieces_decoded_in_place_give_the_whole_slice(odd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each 8 KB piece is decoded where it lies in the worker's buffer, brackets written over the commas or
    # white space around it: the columns are those of the slice decoded whole, also where a piece falls
    # back to a copy (bad UTF-8 repaired, an element that is not an event, a value of an odd type), and
    # the buffer is as it was read (a piece that does not decode there is decoded from it again).
    monkeypatch.setattr(parallel, "SUB_SLICE_BYTES", 8 << 10)
    events = json.loads(gzip.decompress(external("hta/tests/data/nccl_parser_config/nccl_data.json.gz").read_bytes()))
    texts = [json.dumps(e).encode() for e in events["traceEvents"][:3000]]
    if odd == "bad_utf8":
        texts[100] = texts[100].replace(b'"name": "', b'"name": "\xff\xfe', 1)
    elif odd == "not_an_event":
        texts.insert(200, b"12345")
    elif odd == "odd_type":
        texts[300] = texts[300].replace(b'"pid": ', b'"pid": {"x": 1}, "was": ', 1)
    piece = b'{"traceEvents":[' + (b"," if odd == "tight_commas" else b", ").join(texts) + b"]}"
    buffer = bytearray(piece)
    got, whole = parallel._build_slice(buffer), parallel._build_whole(piece)
    assert buffer == piece
    assert got.events == whole.events
    assert (got.repaired_utf8, got.not_events) == (whole.repaired_utf8, whole.not_events)
    assert got.repaired_utf8 == (odd == "bad_utf8") and got.not_events == (odd == "not_an_event")
    _assert_partials_equal(got, whole)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memory files (memfd_create) on this platform")
def test_columns_written_to_a_memory_file_merge_as_the_arrays(tmp_path: Path) -> None:
    # A worker's columns written into a memory file (parts replaced by where they are) and merged into a builder,
    # twice over (a text column's codes through two mappings), give the tables of the arrays merged so.
    import mmap

    from mlprof.trace.build import SharedPart

    source = external("hta/tests/data/nccl_parser_config/nccl_data.json.gz")
    path = tmp_path / "nccl_data.json"
    path.write_bytes(gzip.decompress(source.read_bytes()))
    text = path.read_bytes()
    start = text.index(b"[", text.index(b'"traceEvents"')) + 1
    start = text.index(b"{", start)
    end = text.rindex(b"}", 0, text.rindex(b"]")) + 1
    fd = os.memfd_create("test")
    try:
        on_file = parallel._build_range(path, start, end, fd)
        in_band = parallel._build_range(path, start, end)
        parts = [p for cols in on_file.cols.values() for ps in cols.values() for p in ps]
        assert parts and all(isinstance(p, SharedPart) for p in parts)
        tables = []
        for partial in (on_file, in_band):
            first, second = TableBuilder(), TableBuilder()
            first.symbols.encode(["x", "y"])  # codes differ from the worker's: remapped twice
            first.merge_partial(partial)
            second.symbols.encode(["z"])
            second.merge_partial(first.export_partial())
            merged = second.export_partial()
            merged.resolve(memoryview(mmap.mmap(fd, os.fstat(fd).st_size)))
            tables.append(TableBuilder.from_partial(merged).finish())
    finally:
        os.close(fd)
    for name, table in tables[1].items():
        pd.testing.assert_frame_equal(tables[0][name], table, check_exact=True, obj=name)
    assert sum(len(t) for t in tables[1].values()) > 1000
