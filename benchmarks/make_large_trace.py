"""Make a large Kineto trace by tiling a real one.

The events of SRC are written again and again, copy after copy, into one long
timeline: copy ``k`` has every ``ts`` shifted by ``k * (span + gap)``, every
correlation / External id / flow id (and the other per-event ids) offset by
``k * id_stride`` so they stay unique, and every ``ProfilerStep#N`` renumbered to
``N + k * n_steps`` so steps stay distinct. Metadata events (``ph: M``) are
written once. The header keys (``deviceProperties``, ``distributedInfo``, ...)
are kept byte for byte.

The rewriting is done on the raw JSON text, so each event keeps the layout of
the source (Kineto's own indentation) and float timestamps keep their exact
decimals (``1712195495519689.047`` stays ns-exact; no round trip through a
double). The output is streamed copy by copy, so only one copy is ever in
memory; ``.gz`` outputs are gzip-compressed on the fly.

    python benchmarks/make_large_trace.py SRC OUT --target-mb 1000
"""

from __future__ import annotations

import argparse
import gzip
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

import msgspec

DEFAULT_SOURCE = Path("/work/shared/external_traces/hta/tests/data/df_index_resolver/df_index_resolver.json.gz")
MB = 1_000_000

#: Per-event id keys (top level ``id`` of flow events, the rest inside ``args``).
ID_KEYS = (
    "id",
    "External id",
    "external id",
    "correlation",
    "Ev Idx",
    "Sequence number",
    "Python id",
    "Python parent id",
    "Record function id",
)

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.DOTALL)
_NUMBER_FIELD = re.compile(
    rb'"(ts|' + b"|".join(re.escape(k.encode()) for k in ID_KEYS) + rb')"(\s*:\s*)(-?\d+)(\.\d+)?([eE][-+]?\d+)?'
)
_STEP = re.compile(rb"ProfilerStep#(\d+)")
_IS_METADATA = re.compile(rb'"ph"\s*:\s*"M"')


@dataclass
class Source:
    """A source trace split into the pieces the tiler needs."""

    prefix: bytes  # everything up to and including the '[' of traceEvents
    suffix: bytes  # everything from the ']' of traceEvents to the end
    body: bytes  # all events, as in the source (copy 0)
    body_no_meta: bytes  # events other than metadata (copies 1..n)
    events: int
    meta_events: int
    shift_us: int  # span + gap
    id_stride: int
    step_stride: int
    float_ts: bool


def read_source(path: Path) -> bytes:
    """The uncompressed bytes of a .json or .json.gz trace."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        with gzip.open(path, "rb") as gz:
            return gz.read()
    return path.read_bytes()


def _event_spans(raw: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """(array '[' offset, array ']' offset, [(start, end) of each event object])."""
    key = re.search(rb'"traceEvents"\s*:\s*\[', raw)
    if key is None:
        raise ValueError("no traceEvents array in the source")
    start = key.end() - 1
    spans: list[tuple[int, int]] = []
    depth = 0
    ev_start = -1
    for m in _TOKEN.finditer(raw, start):
        tok = m.group()
        c = tok[0]
        if c == 0x22:  # '"': a string, skip
            continue
        if c in (0x7B, 0x5B):  # '{' '['
            depth += 1
            if depth == 2 and c == 0x7B:
                ev_start = m.start()
        else:
            depth -= 1
            if depth == 1 and c == 0x7D:
                spans.append((ev_start, m.end()))
            elif depth == 0:
                return start, m.start(), spans
    raise ValueError("traceEvents array is not closed")


def prepare(path: Path, gap_us: int = 1000) -> Source:
    """Read SRC and work out the per-copy shifts and offsets."""
    raw = read_source(path)
    doc = msgspec.json.decode(raw)
    events = doc.get("traceEvents") if isinstance(doc, dict) else None
    if not isinstance(events, list) or not events:
        raise ValueError(f"{path}: no traceEvents")
    arr_start, arr_end, spans = _event_spans(raw)
    if len(spans) != len(events):
        raise ValueError(f"{path}: found {len(spans)} event objects, the JSON has {len(events)}")

    t_min = math.inf
    t_max = -math.inf
    max_id = 0
    steps: list[int] = []
    float_ts = False
    for ev in events:
        if not isinstance(ev, dict):
            continue
        ts = ev.get("ts")
        if ev.get("ph") != "M" and isinstance(ts, int | float):
            float_ts = float_ts or isinstance(ts, float)
            dur = ev.get("dur")
            end = ts + (dur if isinstance(dur, int | float) and dur > 0 else 0)
            t_min = min(t_min, ts)
            t_max = max(t_max, end)
        v = ev.get("id")
        if isinstance(v, int):
            max_id = max(max_id, v)
        args = ev.get("args")
        if isinstance(args, dict):
            for k in ID_KEYS[1:]:
                v = args.get(k)
                if isinstance(v, int):
                    max_id = max(max_id, v)
        name = ev.get("name")
        if isinstance(name, str) and name.startswith("ProfilerStep#"):
            try:
                steps.append(int(name[len("ProfilerStep#") :]))
            except ValueError:
                pass
    if t_min is math.inf:
        raise ValueError(f"{path}: no timed events")

    keep: list[bytes] = []
    n_meta = 0
    for (a, b), ev in zip(spans, events, strict=True):
        text = raw[a:b]
        if not isinstance(ev, dict) or ev.get("ph") in (None, "M"):
            n_meta += 1
            continue
        keep.append(text)
    return Source(
        prefix=raw[: arr_start + 1],
        suffix=raw[arr_end:],
        body=raw[arr_start + 1 : arr_end].strip(),
        body_no_meta=b",\n  ".join(keep),
        events=len(events),
        meta_events=n_meta,
        shift_us=math.ceil(t_max - t_min) + gap_us,
        id_stride=10 ** len(str(max_id + 1)),
        step_stride=(max(steps) - min(steps) + 1) if steps else 0,
        float_ts=float_ts,
    )


def _rewriter(ts_shift: int, id_off: int) -> Callable[[re.Match[bytes]], bytes]:
    def sub(m: re.Match[bytes]) -> bytes:
        key, sep, ipart, frac, exp = m.groups()
        if key == b"ts":
            if exp is not None or ipart.startswith(b"-"):
                # unusual spelling: do it exactly in decimal, then keep as plain decimal text
                v = Decimal((ipart + (frac or b"") + (exp or b"")).decode()) + ts_shift
                return b'"ts"' + sep + format(v, "f").encode()
            return b'"ts"' + sep + str(int(ipart) + ts_shift).encode() + (frac or b"")
        if frac is not None or exp is not None or ipart.startswith(b"-"):
            return m.group()  # not a plain id: leave it
        return b'"' + key + b'"' + sep + str(int(ipart) + id_off).encode()

    return sub


def render_copy(src: Source, k: int) -> bytes:
    """The events of copy ``k`` (no surrounding brackets)."""
    if k == 0:
        return src.body
    sub = _rewriter(k * src.shift_us, k * src.id_stride)
    out = _NUMBER_FIELD.sub(sub, src.body_no_meta)
    if src.step_stride:
        step_off = k * src.step_stride
        out = _STEP.sub(lambda m: b"ProfilerStep#" + str(int(m.group(1)) + step_off).encode(), out)
    return out


def _open_out(out: Path, compress: bool) -> BinaryIO:
    out.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        return gzip.open(out, "wb", compresslevel=6)  # type: ignore[return-value]
    return out.open("wb")


def make_large_trace(
    src_path: Path,
    out: Path,
    *,
    target_mb: float | None = None,
    copies: int | None = None,
    gap_us: int = 1000,
    compress: bool | None = None,
    verbose: bool = True,
) -> dict[str, float | int]:
    """Write the tiled trace to ``out``; returns a small summary."""
    t0 = time.perf_counter()
    src = prepare(src_path, gap_us)
    if compress is None:
        compress = out.name.endswith(".gz")
    if copies is None and target_mb is None:
        raise ValueError("give target_mb or copies")
    target = None if target_mb is None else int(target_mb * MB)
    tmp = out.with_name(out.name + ".partial")
    written = 0
    k = 0
    with _open_out(tmp, compress) as fh:
        fh.write(src.prefix)
        written += len(src.prefix)
        while True:
            if copies is not None and k >= copies:
                break
            if copies is None and target is not None and k > 0 and written + len(src.suffix) + 1 >= target:
                break
            chunk = render_copy(src, k)
            head = b"\n  " if k == 0 else b",\n  "
            fh.write(head)
            fh.write(chunk)
            written += len(head) + len(chunk)
            k += 1
            if verbose:
                print(f"  copy {k}: {written / MB:,.0f} MB", file=sys.stderr, end="\r")
        fh.write(b"\n")
        fh.write(src.suffix)
    if verbose:
        print(file=sys.stderr)
        written += 1 + len(src.suffix)
    tmp.replace(out)
    secs = time.perf_counter() - t0
    summary: dict[str, float | int] = {
        "copies": k,
        "json_bytes": written,
        "events": src.events + (k - 1) * (src.events - src.meta_events),
        "seconds": round(secs, 2),
    }
    if verbose:
        print(
            f"wrote {out}: {k} copies of {src_path.name}, {written / MB:,.1f} MB JSON, "
            f"{summary['events']:,} events, ts shift {src.shift_us} us/copy"
            f"{' (float ts)' if src.float_ts else ''}, id stride {src.id_stride}, "
            f"step stride {src.step_stride}, {secs:.1f} s",
            file=sys.stderr,
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?", type=Path, default=DEFAULT_SOURCE, help=f"source trace (default {DEFAULT_SOURCE})")
    p.add_argument("out", type=Path, help="output path (.json, or .json.gz to gzip)")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--target-mb", type=float, default=None, help="stop at this JSON size or just above (1 MB = 1e6 B)"
    )
    size.add_argument("--copies", type=int, default=None, help="write exactly this many copies")
    p.add_argument("--gap-us", type=int, default=1000, help="idle gap between copies, in us (default 1000)")
    p.add_argument("--gzip", action="store_true", help="gzip the output even if its name does not end in .gz")
    args = p.parse_args(argv)
    if args.target_mb is None and args.copies is None:
        args.target_mb = 500.0
    make_large_trace(
        args.src,
        args.out,
        target_mb=args.target_mb,
        copies=args.copies,
        gap_us=args.gap_us,
        compress=True if args.gzip else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
