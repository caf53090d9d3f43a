"""The sequential reader decodes each slice where it lies in its buffer (``jsonstream._decode_in_place``).

The truth here is the JSON text itself, read by the standard library's ``json`` with numbers kept as
their literal text: what the decoder's raw ``ts``/``dur`` views must still say after the buffer moved on,
and the names a multi-byte UTF-8 trace holds when its blocks end inside a character.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlprof.trace.jsonstream as jsonstream
from mlprof.trace import load_trace
from mlprof.trace.schema import TraceEvent

from conftest import X

BASE_US = 1_712_195_495_505_000


def _events(n: int, names: list[str]) -> list[dict[str, object]]:
    return [
        X("cpu_op", names[i % len(names)], BASE_US + i * 7 + (i % 4) * 0.125, 3 + (i % 5) * 0.5, **{"External id": i})
        for i in range(n)
    ]


def _write(path: Path, events: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"schemaVersion": 1, "traceEvents": events}, indent=1, ensure_ascii=False), "utf-8")
    return path


def test_events_kept_by_the_consumer_keep_their_raw_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``on_batch`` that keeps every event (and so views of the reader's buffer): the reader copies the buffer
    instead of moving it, and every kept ``ts``/``dur`` is the file's text for that event."""
    path = _write(tmp_path / "trace.json", _events(3000, ["aten::mm", "aten::add_"]))
    truth = json.loads(path.read_text("utf-8"), parse_float=str, parse_int=str)["traceEvents"]
    monkeypatch.setattr(jsonstream, "SLICE_BYTES", 4096)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 1000)
    kept: list[TraceEvent] = []
    batches: list[int] = []

    def keep(events: list[TraceEvent]) -> None:
        batches.append(len(events))
        kept.extend(events)

    _, stats = jsonstream.read_trace_events(path, keep)
    assert len(batches) >= 50, "the reader never cut the trace into slices"
    assert stats.events == len(kept) == len(truth) == 3000
    assert [bytes(e.ts).decode() for e in kept] == [e["ts"] for e in truth]
    assert [bytes(e.dur).decode() for e in kept] == [e["dur"] for e in truth]
    assert [e.args.external_id for e in kept if e.args] == list(range(3000))


@pytest.mark.parametrize("block", [61, 64, 1000])
def test_multibyte_names_cut_by_blocks_are_read_whole_and_not_called_invalid(
    block: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid UTF-8 of 2, 3 and 4 bytes a character, with blocks that end inside characters: the in-place
    decode checks only the events it decoded, so the trace gets no "invalid UTF-8" note and every name is
    the file's."""
    names = ["ядро_свёртки", "畳み込み層", "🚀 launch", "naïve add"]
    path = _write(tmp_path / "trace.json", _events(2000, names))
    truth = [e["name"] for e in json.loads(path.read_text("utf-8"))["traceEvents"]]
    monkeypatch.setattr(jsonstream, "SLICE_BYTES", 2048)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", block)
    trace = load_trace(path)
    host = trace.host.sort_values("external_id")
    assert host["name"].astype(str).tolist() == truth
    assert not any("UTF-8" in note for note in trace.meta.notes), trace.meta.notes


def test_invalid_utf8_in_a_later_slice_is_noted_once_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One invalid byte in the last event's name: the note appears (the copy's path repairs it) and the byte is
    U+FFFD in that name only."""
    events = _events(2000, ["aten::mm"])
    events[-1]["name"] = "broken BAD name"
    path = _write(tmp_path / "trace.json", events)
    path.write_bytes(path.read_bytes().replace(b"BAD", b"\xff"))
    monkeypatch.setattr(jsonstream, "SLICE_BYTES", 2048)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 500)
    trace = load_trace(path)
    names = trace.host.sort_values("external_id")["name"].astype(str).tolist()
    assert names == ["aten::mm"] * 1999 + ["broken \ufffd name"]
    assert "invalid UTF-8 in the file was replaced with U+FFFD" in trace.meta.notes
