"""Copy a Chrome/Kineto JSON trace as a byte stream, inserting text before the closing bracket of ``traceEvents``.

The copy must keep every original byte (ns-precision float timestamps, ids above
int64, key order, whitespace), so nothing is decoded: the stream is scanned for JSON
structure only. Each chunk is scanned with numpy: quotes not escaped by an odd run
of backslashes toggle "inside a string", and the brackets and braces outside strings
give the nesting depth. The ``[`` of ``traceEvents`` is the array that opens at depth
1 (a value of the top-level object; or the top-level value itself, in the bare array
form of the Chrome trace format) right after the key ``"traceEvents"``, so a
``"traceEvents"`` inside a string or in a nested object cannot fool it; its ``]`` is
where the depth falls back to 1. Memory is one chunk, whatever the size of the file.

Bytes flow through unchanged except that the inserted text (and a comma, when the
array already holds events) goes right after the array's last event; whitespace
before the ``]`` is written after the insertion, so it is kept too.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

_QUOTE, _BACKSLASH = 0x22, 0x5C
_DEPTH_CHANGE = np.zeros(256, dtype=np.int8)
_DEPTH_CHANGE[[ord("{"), ord("[")]] = 1
_DEPTH_CHANGE[[ord("}"), ord("]")]] = -1
_WHITESPACE = b" \t\r\n"
_KEY_BEFORE = re.compile(rb'"traceEvents"\s*:\s*\Z')
_KEY_CONTEXT = 4096
"""Bytes kept before a candidate ``[`` to check that ``"traceEvents":`` precedes it."""

_LOOKING, _IN_ARRAY, _AFTER = 0, 1, 2


class SpliceError(ValueError):
    """The stream is not a JSON object with a closed top-level ``traceEvents`` array."""


class EventsSplicer:
    """Feed the input in chunks; ``sink`` receives the output (the input with ``insert`` spliced in).

    ``insert`` is the text of one or more array elements without the surrounding
    brackets (``{...},{...}``); empty means copy unchanged. Call :meth:`finish` after
    the last chunk: it raises :class:`SpliceError` when the array was not found or
    never closed.
    """

    def __init__(self, sink: Callable[[bytes], object], insert: bytes) -> None:
        self._sink = sink
        self._insert = insert
        self._phase = _LOOKING
        self._pending = b""  # trailing backslashes held back, so an escape never straddles two chunks
        self._in_string = False
        self._depth = 0
        self._started = False  # the top-level value has begun
        self._context = b""  # the last bytes before the chunk being scanned (for the key check)
        self._held_space = b""  # whitespace after the array's last element, written after the insertion
        self._has_elements = False
        self._junk = False  # something other than whitespace came before the top-level value
        self._close_depth = 1  # the depth after the events array's "]": 1 in {"traceEvents": [...]}, 0 in [...]

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        self._pending = b""
        if self._phase == _AFTER:
            self._sink(data)
            return
        cut = len(data)
        while cut and data[cut - 1] == _BACKSLASH:
            cut -= 1
        if cut < len(data):
            data, self._pending = data[:cut], data[cut:]
        if data:
            self._scan(data)

    def finish(self) -> None:
        if self._phase == _LOOKING:
            raise SpliceError("no top-level traceEvents array")
        if self._phase == _IN_ARRAY:
            raise SpliceError("the traceEvents array is not closed (truncated file?)")
        if self._pending:
            self._sink(self._pending)
            self._pending = b""

    def _scan(self, data: bytes) -> None:
        a = np.frombuffer(data, dtype=np.uint8)
        quotes = _unescaped_quotes(a)
        folded = a | 0x20  # "[" -> "{", "]" -> "}"
        pos = np.flatnonzero((folded == ord("{")) | (folded == ord("}")))
        if len(pos):
            inside = (np.searchsorted(quotes, pos) + int(self._in_string)) % 2 == 1
            pos = pos[~inside]
        depth = self._depth + np.cumsum(_DEPTH_CHANGE[a[pos]], dtype=np.int64)
        self._in_string = (int(self._in_string) + len(quotes)) % 2 == 1
        self._depth = int(depth[-1]) if len(depth) else self._depth

        start = 0
        if self._phase == _LOOKING:
            opened = self._find_array(data, a, pos, depth)
            if opened is None:
                self._sink(data)
                self._context = (self._context + data[-_KEY_CONTEXT:])[-_KEY_CONTEXT:]
                return
            self._sink(data[: opened + 1])
            self._phase = _IN_ARRAY
            start = opened + 1
            keep = pos > opened
            pos, depth = pos[keep], depth[keep]
        closing = np.flatnonzero(depth == self._close_depth)
        if len(closing) == 0:
            self._write_elements(data[start:])
            return
        close = int(pos[closing[0]])
        self._write_elements(data[start:close])
        glue = b"," if self._has_elements and self._insert else b""
        self._sink(glue + self._insert + self._held_space)
        self._held_space = b""
        self._phase = _AFTER
        self._sink(data[close:])

    def _find_array(self, data: bytes, a: np.ndarray, pos: np.ndarray, depth: np.ndarray) -> int | None:
        """Offset in ``data`` of the ``[`` of ``traceEvents``, or None when it is not in this chunk."""
        if not self._started:
            head = data[: int(pos[0])] if len(pos) else data
            self._junk = self._junk or bool(head.strip(_WHITESPACE + b"\xef\xbb\xbf"))  # not a BOM or space
        if not self._started and len(pos):
            if int(depth[0]) != 1 or self._junk:
                raise SpliceError("not a JSON object or array at the top level")
            self._started = True
            if a[pos[0]] == ord("["):  # a bare array of events, a valid Chrome trace form
                self._close_depth = 0
                return int(pos[0])
        ended = np.flatnonzero(depth <= 0)
        limit = int(pos[ended[0]]) if len(ended) else len(data)
        candidates = pos[(depth == 2) & (a[pos] == ord("[")) & (pos < limit)]
        for c in candidates.tolist():
            before = (self._context + data[max(0, c - _KEY_CONTEXT) : c])[-_KEY_CONTEXT:]
            if _KEY_BEFORE.search(before):
                return int(c)
        if len(ended):
            raise SpliceError("no top-level traceEvents array")
        return None

    def _write_elements(self, part: bytes) -> None:
        """Write array content, holding back trailing whitespace so the insertion goes right after the last element."""
        end = len(part)
        while end and part[end - 1] in _WHITESPACE:
            end -= 1
        if end == 0:
            self._held_space += part
            return
        self._sink(self._held_space + part[:end])
        self._has_elements = True
        self._held_space = part[end:]


def _unescaped_quotes(a: np.ndarray) -> np.ndarray:
    """Positions of ``"`` that are not escaped (not preceded by an odd run of backslashes).

    The caller holds back trailing backslashes, so every run preceding a quote lies in ``a``.
    """
    quotes = np.flatnonzero(a == _QUOTE)
    backslashes = np.flatnonzero(a == _BACKSLASH)
    if len(quotes) == 0 or len(backslashes) == 0:
        return quotes
    run_starts = np.ones(len(backslashes), dtype=bool)
    run_starts[1:] = np.diff(backslashes) != 1
    run_start_of = np.maximum.accumulate(np.where(run_starts, backslashes, 0))
    followed = a[backslashes + 1] == _QUOTE  # a never ends with a backslash
    odd = (backslashes - run_start_of) % 2 == 0  # the run up to here has odd length
    escaped = backslashes[followed & odd] + 1
    keep = np.ones(len(quotes), dtype=bool)
    keep[np.searchsorted(quotes, escaped)] = False
    return quotes[keep]
