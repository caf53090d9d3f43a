"""Hostile input the reader must refuse with one line and bounded resources.

Deep nesting, gzip bombs, garbage without a ``traceEvents`` key: each is generated
here (small on disk), run through the real CLI in a subprocess where exit codes and
peak memory matter (peak RSS from ``resource`` in a wrapper process), and through
``load_trace`` with the reader's limits made small where the real limits would need
hundreds of MB of input.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mlprof.trace.jsonstream as jsonstream
from mlprof.errors import BadInputError
from mlprof.trace import load_trace

from conftest import X, assert_same_tables

REPO = Path(__file__).resolve().parents[1]
DEPTH = 100_000

_RUN_WITH_RSS = """
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "mlprof", *sys.argv[1:]], capture_output=True, text=True, timeout=120)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(proc.returncode, peak_kb, repr(proc.stderr), sep="\\n")
"""


def run_measured(*args: str) -> tuple[int, int, str]:
    """(exit code, peak RSS in MB, stderr) of ``python -m mlprof ARGS`` in a fresh process."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _RUN_WITH_RSS, *args], capture_output=True, text=True, timeout=180, env=env, check=True
    )
    rc, peak_kb, err = out.stdout.splitlines()
    return int(rc), int(peak_kb) // 1024, eval(err)  # repr of a str


def assert_refused(rc: int, err: str) -> None:
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "internal error" not in err


def _deep_documents() -> dict[str, bytes]:
    opens, closes = "[" * DEPTH, "]" * DEPTH
    event = '{"ph": "X", "cat": "cpu_op", "name": "a", "ts": 1, "dur": 1, "pid": 1, "tid": 1, "args": %s}'
    return {
        "bare_array": (opens + closes).encode(),
        "in_args_array": ('{"traceEvents": [' + event % ('{"x": ' + opens + closes + "}") + "]}").encode(),
        "in_args_object": ('{"traceEvents": [' + event % ('{"a": ' * DEPTH + "1" + "}" * DEPTH) + "]}").encode(),
        "in_header": ('{"x": ' + opens + closes + ', "traceEvents": []}').encode(),
    }


@pytest.mark.parametrize("shape", sorted(_deep_documents()))
def test_deep_nesting_is_bad_input(shape: str, tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(_deep_documents()[shape])
    with pytest.raises(BadInputError, match="nested too deeply"):
        load_trace(path, workers=1)


def test_deep_nesting_cli_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(_deep_documents()["in_args_array"])
    before = path.read_bytes()
    rc, _, err = run_measured("analyze", str(path))
    assert_refused(rc, err)
    assert "nested too deeply" in err
    assert path.read_bytes() == before


def _multi_member_gzip(path: Path, head: bytes, member: bytes, copies: int) -> Path:
    """A gzip file of ``copies`` members each inflating to ``member`` (gzip readers join members)."""
    packed = gzip.compress(member, compresslevel=9)
    with path.open("wb") as fh:
        fh.write(gzip.compress(head))
        for _ in range(copies):
            fh.write(packed)
    return path


@pytest.mark.parametrize("head", [b'{"traceEvents": [', b"", b'{"schemaVersion": 1, '])
def test_gzip_bomb_refused_early_with_bounded_memory(head: bytes, tmp_path: Path) -> None:
    """~1 MB of gzip inflating to 1 GB of whitespace: refused after the first 64 MB, RSS far below 1 GB."""
    path = _multi_member_gzip(tmp_path / "bomb.json.gz", head, b" " * (8 << 20), 128)
    assert path.stat().st_size < 2 << 20
    started = time.monotonic()
    rc, peak_mb, err = run_measured("analyze", str(path))
    assert_refused(rc, err)
    assert "inflates more than" in err
    # A plain `mlprof analyze` process (imports) is ~150-250 MB; before the fix this was > 1 GB.
    assert peak_mb < 500, peak_mb
    assert time.monotonic() - started < 60


def test_real_gzip_traces_are_far_below_the_ratio_limit() -> None:
    """The ratio limit leaves room: the bundled gzip traces inflate 10-40x, the limit is 200x."""
    ratios = []
    for path in sorted((REPO / "sample_traces").rglob("*.gz")):
        ratios.append(len(gzip.decompress(path.read_bytes())) / path.stat().st_size)
    assert ratios and max(ratios) < jsonstream.GZIP_RATIO_LIMIT / 4


def test_whitespace_inside_trace_events_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain file that never ends an event is refused once PENDING_LIMIT bytes are held (1 MB here)."""
    monkeypatch.setattr(jsonstream, "PENDING_LIMIT", 1 << 20)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 64 << 10)
    path = tmp_path / "ws.json"
    path.write_bytes(b'{"traceEvents": [' + b" " * (4 << 20) + b"]}")
    with pytest.raises(BadInputError, match="without the end of an event"):
        load_trace(path, workers=1)


def test_no_trace_events_key_refused_after_header_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonstream, "HEADER_LIMIT", 1 << 20)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 64 << 10)
    path = tmp_path / "nokey.json"
    path.write_bytes(b'{"x": "' + b"a" * (4 << 20) + b'"}')
    with pytest.raises(BadInputError, match="no `traceEvents` list in the first 1 MB"):
        load_trace(path, workers=1)


def test_key_search_is_linear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 MB without the key read in 1 KB blocks: searching the whole buffer per block scanned ~130 GB."""
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 1 << 10)
    path = tmp_path / "nokey.json"
    path.write_bytes(b'{"x": "' + b"traceEvents " * ((16 << 20) // 12) + b'"}')
    started = time.monotonic()
    with pytest.raises(BadInputError, match="no `traceEvents` list"):
        load_trace(path, workers=1)
    assert time.monotonic() - started < 20


def test_key_split_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``"traceEvents"  :  [`` cut anywhere by the block size is still found."""
    events = [X("cpu_op", f"op{i}", 1_700_000_000_000_000 + i * 10, 5, **{"External id": i}) for i in range(50)]
    text = json.dumps({"schemaVersion": 1, "traceEvents": events}).replace('"traceEvents": [', '"traceEvents"   :   [')
    path = tmp_path / "trace.json"
    path.write_bytes(text.encode())
    whole = load_trace(path, workers=1)
    assert len(whole.host) == 50
    for block in (3, 5, 7, 11, 13, 17):
        monkeypatch.setattr(jsonstream, "BLOCK_BYTES", block)
        assert_same_tables(load_trace(path, workers=1), whole)


def test_bare_array_is_streamed_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare JSON array is cut into slices like ``traceEvents`` (not held whole), same tables as the object form."""
    events = [X("cpu_op", f"op{i % 37}", 1_700_000_000_000_000 + i * 10, 5, **{"External id": i}) for i in range(3000)]
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"traceEvents": events}, indent=1))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(events, indent=1))
    ref = load_trace(obj, workers=1)
    calls: list[bool] = []
    original = jsonstream._cut_and_decode

    def counting(buf: bytearray, stats: object) -> object:
        result = original(buf, stats)  # type: ignore[arg-type]
        calls.append(result is not None)
        return result

    monkeypatch.setattr(jsonstream, "SLICE_BYTES", 16 << 10)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 4 << 10)
    monkeypatch.setattr(jsonstream, "_cut_and_decode", counting)
    got = load_trace(bare, workers=1)
    assert sum(calls) >= 10
    assert_same_tables(got, ref, meta=False)
    assert len(got.host) == 3000
