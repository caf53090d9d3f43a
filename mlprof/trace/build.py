"""Batches of decoded events -> the columnar tables of :class:`~mlprof.trace.model.Trace`.

Each slice of events from the reader is split into families by ``cat``/``ph`` and
reduced at once to numpy columns; the Python event objects are dropped before the
next slice is decoded. Only the columns listed in :mod:`mlprof.trace.model` survive.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import cache
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from mlprof.trace.columns import SymbolTable, to_int64
from mlprof.trace.lanes import run_in_lanes
from mlprof.trace.numbers import MISSING_NS, TIME_LIMIT_NS, plain_us_to_ns, raw_us_to_ns
from mlprof.trace.schema import EventArgs, TraceEvent
from mlprof.trace.vocabulary import SHAPE_OPS, name_mask

if TYPE_CHECKING:  # imported where the tables are made: building columns needs numpy only (trace.prefetch)
    import pandas as pd

# Family codes.
GPU, RUNTIME, HOST, GPU_ANNOTATION, MEMORY, FLOW, META, SKIP, INSTANT = range(9)

_GPU_KIND = {
    "kernel": "kernel",
    "Kernel": "kernel",
    "mtia_ccp_events": "kernel",
    "gpu_memcpy": "memcpy",
    "Memcpy": "memcpy",
    "gpu_memset": "memset",
    "Memset": "memset",
    "cuda_sync": "sync",
}
GPU_KINDS: tuple[str, ...] = ("kernel", "memcpy", "memset", "sync")
_RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "Runtime", "Driver", "mtia_runtime", "hip_runtime"}
_SKIP_CATS = {"Trace", "cuda_profiler_range"}
_FLOW_PHS = ("s", "f", "t")
OLD_FORMAT_CATS = {"Operator", "Runtime", "Kernel", "Memcpy", "Memset"}

COMM_KERNEL = re.compile(r"^(nccl|rccl|hccl|c10d::)|ncclKernel|ncclDevKernel|nccl:", re.IGNORECASE)
"""Collective/point-to-point communication kernels (both ``ncclKernel_*`` and ``ncclDevKernel_*``)."""

_EMPTY_ARGS = EventArgs()


def _family(cat: Any, ph: Any) -> int:
    if ph == "X":
        if cat in _GPU_KIND:
            return GPU
        if cat in _RUNTIME_CATS:
            return RUNTIME
        if cat == "gpu_user_annotation":
            return GPU_ANNOTATION
        if cat in _SKIP_CATS:
            return SKIP
        return HOST
    if ph in ("i", "I"):
        return INSTANT
    if ph in _FLOW_PHS:
        return FLOW
    if ph == "M":
        return META
    return SKIP


_ASCII_PH_FAMILIES = np.array([_family(None, chr(c)) for c in range(128)], dtype=np.int8)


class SharedPart(msgspec.Struct, frozen=True):
    """A column part that a worker process wrote into a memory file (:mod:`mlprof.trace.parallel`) instead of
    sending it through the pool's pipe: ``count`` items of ``dtype`` from byte ``offset``. ``mapping``: for a
    text column, the symbol codes (of the builders it was merged into) of the worker's codes, None until merged.
    :meth:`Partial.resolve` makes it an array again, from the file's bytes."""

    offset: int
    dtype: str
    count: int
    mapping: np.ndarray | None = None

    def remapped(self, mapping: np.ndarray) -> SharedPart:
        """This part with its codes taken through ``mapping`` too (as ``mapping[part]``), when it is read."""
        return msgspec.structs.replace(self, mapping=mapping if self.mapping is None else mapping[self.mapping])

    def array(self, buffer: Any) -> np.ndarray:
        values = np.frombuffer(buffer, dtype=self.dtype, count=self.count, offset=self.offset)
        return values if self.mapping is None else self.mapping[values]


class Partial(msgspec.Struct):
    """A builder's columns with its own symbol strings, to merge into another builder."""

    cols: dict[int, dict[str, list[np.ndarray]]]
    collectives: dict[str, list[np.ndarray]]
    metadata: list[tuple[Any, ...]]
    strings: list[str]
    categories_seen: set[str]
    dropped_no_time: int
    events: int = 0
    repaired_utf8: bool = False
    not_events: int = 0

    def resolve(self, buffer: Any) -> None:
        """Every :class:`SharedPart` among the columns' parts made an array of ``buffer`` (the memory file's
        bytes, mapped): a view, or for a text column the codes taken through its mapping."""
        for store in (*self.cols.values(), self.collectives):
            for parts in store.values():
                for i, part in enumerate(parts):
                    if isinstance(part, SharedPart):
                        parts[i] = part.array(buffer)


class TableBuilder:
    """Accumulates per-family columns across slices; :meth:`finish` makes DataFrames."""

    def __init__(self) -> None:
        self.symbols = SymbolTable()
        self._cols: dict[int, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        self._collectives: dict[str, list[np.ndarray]] = defaultdict(list)
        self.metadata: list[tuple[Any, ...]] = []
        self.categories_seen: set[str] = set()
        self.dropped_no_time = 0
        self._shape_op = np.zeros(0, dtype=bool)
        # The distinct cats and phs met so far (text or None), coded in the order met; per code, the cat's and the
        # flow ph's symbols and the GPU kind's, and the family of each (cat, ph) pair.
        self._cat_index: dict[str | None, int] = {}
        self._ph_index: dict[str | None, int] = {chr(c): c for c in range(128)}
        self._cat_sym = np.zeros(0, dtype=np.int32)
        self._kind_sym = np.zeros(0, dtype=np.int32)
        self._ph_sym = np.zeros(128, dtype=np.int32)
        for ph in _FLOW_PHS:
            self._ph_sym[ord(ph)] = self.symbols.code(ph)
        self._families = np.zeros((0, 128), dtype=np.int8)
        self._ph_families = _ASCII_PH_FAMILIES.copy()  # each ph's family but for "X" (there the cat's)

    def _classify(self, key: tuple[Any, Any]) -> int:
        cat, ph = key
        if isinstance(cat, str):
            self.categories_seen.add(cat)
        try:
            return _family(cat, ph)
        except TypeError:  # unhashable junk in cat/ph
            return SKIP

    # ---- one slice ------------------------------------------------------------------
    def add(self, events: Sequence[TraceEvent]) -> None:
        if not events:
            return
        cats, phs = _field(events, "cat"), _field(events, "ph")
        coded = self._cat_ph_codes(cats, phs)
        codes: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        if coded is not None:  # the codes index the builder's symbols of cats, GPU kinds and flow phs
            codes = coded
            width = self._families.shape[1]
            families = self._families.ravel().take(coded[0] * width + coded[1])
        else:  # junk types in cat/ph: -1 codes are missing values
            import pandas as pd

            cat_codes, cat_uniques = pd.factorize(np.asarray(cats, dtype=object))
            ph_codes, ph_uniques = pd.factorize(np.asarray(phs, dtype=object))
            table = np.array(
                [[self._classify((c, p)) for p in [None, *ph_uniques.tolist()]] for c in [None, *cat_uniques.tolist()]],
                dtype=np.int8,
            )
            families = table[cat_codes + 1, ph_codes + 1]
        del cats, phs
        instants = np.flatnonzero(families == INSTANT)
        if len(instants):
            names = _field(_take(events, instants), "name")
            is_memory = np.fromiter(
                map(operator.eq, names, itertools.repeat("[memory]")), dtype=bool, count=len(instants)
            )
            families[instants] = np.where(is_memory, MEMORY, SKIP)
        meta = np.flatnonzero(families == META)
        if len(meta):
            self._add_meta(_take(events, meta))
        self._add_laid_out(_Batch.of(events, families, *codes))

    def _cat_ph_codes(self, cats: list[Any], phs: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """Each event's cat and ph as codes into this builder's distinct cats and phs (met in any slice so far),
        or None when some cat or ph is neither text nor None (the caller's general path). A one-character ASCII ph
        is its character's code (no lookup); other phs are coded from 128 on, in the order met."""
        cat_codes = _codes(cats, self._cat_index, self._learn_cats, MAX_CODED_CATS)
        if cat_codes is None:
            return None
        try:
            joined = "".join(phs)
        except TypeError:  # None or junk among them
            joined = ""
        if len(joined) == len(phs) and joined.isascii() and "" not in phs:  # each ph one character
            return cat_codes, np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        ph_codes = _codes(phs, self._ph_index, self._learn_phs, 128 + MAX_CODED_PHS)
        if ph_codes is None:
            return None
        return cat_codes, ph_codes

    def _learn_cats(self, cats: list[str | None]) -> None:
        """Codes for ``cats`` (new to the builder): their symbols, GPU kinds and a row of families each."""
        for cat in cats:
            self._cat_index[cat] = len(self._cat_index)
            if cat is not None:
                self.categories_seen.add(cat)
        syms = [0 if cat is None else self.symbols.code(cat) for cat in cats]
        kinds = [self.symbols.code(_GPU_KIND.get(cat, "kernel")) for cat in cats]  # type: ignore[arg-type]
        self._cat_sym = np.append(self._cat_sym, np.array(syms, dtype=np.int32))
        self._kind_sym = np.append(self._kind_sym, np.array(kinds, dtype=np.int32))
        rows = np.tile(self._ph_families, (len(cats), 1))  # a ph's family depends on the cat only for "X"
        rows[:, ord("X")] = [_family(c, "X") for c in cats]
        self._families = np.vstack([self._families, rows])

    def _learn_phs(self, phs: list[str | None]) -> None:
        """Codes for ``phs`` (new to the builder): their flow symbols and a column of families each."""
        for ph in phs:
            self._ph_index[ph] = len(self._ph_index)
        syms = [self.symbols.code(ph) if ph in _FLOW_PHS else 0 for ph in phs]
        self._ph_sym = np.append(self._ph_sym, np.array(syms, dtype=np.int32))
        families = np.array([_family(None, p) for p in phs], dtype=np.int8)  # never "X" (one of the first 128)
        self._ph_families = np.append(self._ph_families, families)
        self._families = np.hstack([self._families, np.tile(families, (len(self._cat_index), 1))])

    def _append(self, fam: int, **columns: np.ndarray) -> None:
        store = self._cols[fam]
        for key, value in columns.items():
            store[key].append(value)

    def _add_laid_out(self, batch: _Batch) -> None:
        """The columns of a batch's families: each value read once for all the families that have it (one pass
        over the events per field, one parse of the times), a family's part a slice of those.

        Wherever a conversion of the families together does not take its fast path, each family's values are
        converted alone, as they always were: the tables do not depend on what other families a slice holds."""
        ts, dur = batch.times()
        if not len(ts):
            return
        if len(dur):  # ranges (first in the layout, as their durations)
            ts_r = ts[: len(dur)]
            keep = (ts_r != MISSING_NS) & (dur != MISSING_NS)
            keep &= dur <= TIME_LIMIT_NS - np.where(keep, ts_r, 0)  # an end past the limit is corrupt
            if not keep.all():
                self.dropped_no_time += int((~keep).sum())
                ts, dur = batch.drop(keep, ts, dur)
            dur = np.maximum(dur, 0, out=dur)  # in place: its parts are views of the batch's times
        symbols = self.symbols
        pid = batch.ints(batch.field("pid", GPU_ANNOTATION, FLOW))
        tid = batch.ints(batch.field("tid", GPU_ANNOTATION, FLOW))
        name = batch.texts(symbols, batch.field("name", GPU_ANNOTATION, HOST))
        args = batch.args()

        def arg(attr: str, first: int, last: int | None = None) -> dict[int, np.ndarray]:
            return batch.ints(batch.arg(args, attr, first, first if last is None else last))

        ext = arg("external_id", GPU, HOST)
        device = arg("device", GPU_ANNOTATION, GPU)
        stream = arg("stream", GPU_ANNOTATION, GPU)
        if batch.has(GPU) or batch.has(RUNTIME):
            old = None
            for fam in (GPU, RUNTIME):
                if fam in ext and (ext[fam] == -1).any():
                    old = old if old is not None else arg("external_id_old", GPU, RUNTIME)
                    ext[fam] = np.where(ext[fam] == -1, old[fam], ext[fam])
            correlation = arg("correlation", GPU, RUNTIME)
        for fam in (GPU, GPU_ANNOTATION):
            if batch.has(fam):
                if (device[fam] == -1).any():
                    device[fam] = np.where(device[fam] == -1, pid[fam], device[fam])
                if (stream[fam] == -1).any():
                    stream[fam] = np.where(stream[fam] == -1, tid[fam], stream[fam])

        if batch.has(GPU):
            s, e = batch.span(GPU, GPU)
            if batch.cats is not None:
                kind = self._kind_sym[batch.cats[s:e]]
            else:
                kind = symbols.encode([_GPU_KIND.get(ev.cat, "kernel") for ev in batch.events[s:e]])  # type: ignore[arg-type]
            ts_g, dur_g = ts[s:e], dur[s:e]
            self._append(
                GPU,
                kind=kind,
                name=name[GPU],
                ts=ts_g,
                dur=dur_g,
                device=device[GPU],
                stream=stream[GPU],
                correlation=correlation[GPU],
                external_id=ext[GPU],
                bytes=arg("bytes", GPU)[GPU],
            )
            self._add_collectives("gpu", args[s:e], name[GPU], ts_g, dur_g)
        if batch.has(RUNTIME):
            s, e = batch.span(RUNTIME, RUNTIME)
            self._append(
                RUNTIME,
                name=name[RUNTIME],
                ts=ts[s:e],
                dur=dur[s:e],
                pid=pid[RUNTIME],
                tid=tid[RUNTIME],
                correlation=correlation[RUNTIME],
                external_id=ext[RUNTIME],
            )
        if batch.has(HOST):
            s, e = batch.span(HOST, HOST)
            host_args, host_events = args[s:e], batch.events[s:e]
            cat = (
                self._cat_sym[batch.cats[s:e]] if batch.cats is not None else symbols.encode(_field(host_events, "cat"))
            )
            ts_h, dur_h = ts[s:e], dur[s:e]
            self._append(
                HOST,
                cat=cat,
                name=name[HOST],
                ts=ts_h,
                dur=dur_h,
                pid=pid[HOST],
                tid=tid[HOST],
                external_id=ext[HOST],
                call_stack=symbols.encode(_field(host_args, "call_stack")),
                input_dims=self._input_dims(name[HOST], host_args),
            )
            self._add_collectives("host", host_args, name[HOST], ts_h, dur_h)
        if batch.has(GPU_ANNOTATION):
            s, e = batch.span(GPU_ANNOTATION, GPU_ANNOTATION)
            self._append(
                GPU_ANNOTATION,
                name=name[GPU_ANNOTATION],
                ts=ts[s:e],
                dur=dur[s:e],
                device=device[GPU_ANNOTATION],
                stream=stream[GPU_ANNOTATION],
            )
        if batch.has(MEMORY):
            s, e = batch.span(MEMORY, MEMORY)

            def memory(attr: str, missing: int = -1) -> np.ndarray:
                return to_int64(_field(args[s:e], attr), missing=missing)

            self._append(
                MEMORY,
                ts=ts[s:e],
                pid=pid[MEMORY],
                tid=tid[MEMORY],
                device_type=memory("device_type"),
                device_id=memory("device_id"),
                addr=memory("addr"),
                bytes=memory("mem_bytes", missing=0),
                total_allocated=memory("total_allocated"),
                total_reserved=memory("total_reserved"),
            )
        if batch.has(FLOW):
            s, e = batch.span(FLOW, FLOW)
            flows = batch.events[s:e]
            self._append(
                FLOW,
                cat=self._cat_sym[batch.cats[s:e]] if batch.cats is not None else symbols.encode(_field(flows, "cat")),
                ph=self._ph_sym[batch.phs[s:e]] if batch.phs is not None else symbols.encode(_field(flows, "ph")),
                id=to_int64(_field(flows, "id")),
                ts=ts[s:e],
                pid=pid[FLOW],
                tid=tid[FLOW],
            )

    def _input_dims(self, name: np.ndarray, args: list[EventArgs]) -> np.ndarray:
        """``Input Dims`` JSON text of the ops in :data:`SHAPE_OPS` (empty for every other op)."""
        known = self._shape_op
        if len(known) < len(self.symbols.strings):
            new = self.symbols.strings[len(known) :]
            self._shape_op = known = np.concatenate(
                [known, np.fromiter((SHAPE_OPS.match(t) is not None for t in new), dtype=bool, count=len(new))]
            )
        out = np.zeros(len(args), dtype=np.int32)
        idx = np.flatnonzero(known[name])
        if len(idx):
            out[idx] = self.symbols.encode([bytes(args[i].input_dims).decode() or None for i in idx.tolist()])
        return out

    def _add_collectives(
        self,
        source: str,
        args: Sequence[EventArgs],
        name: np.ndarray,
        ts: np.ndarray,
        dur: np.ndarray,
    ) -> None:
        coll = _field(args, "collective_name")
        if coll.count(None) == len(coll):  # no collectives (most slices): no index to build
            return
        idx = [i for i, c in enumerate(coll) if c is not None]
        sel = _take(args, np.asarray(idx))
        pick = np.asarray(idx)

        def arg(attr: str) -> list[Any]:
            return _field(sel, attr)

        out = self._collectives
        out["source"].append(self.symbols.encode([source] * len(sel)))
        out["name"].append(name[pick])
        out["ts"].append(ts[pick])
        out["dur"].append(dur[pick])
        out["collective"].append(self.symbols.encode(arg("collective_name")))
        out["in_nelems"].append(to_int64(arg("in_msg_nelems")))
        out["out_nelems"].append(to_int64(arg("out_msg_nelems")))
        out["group_size"].append(to_int64(arg("group_size")))
        out["dtype"].append(self.symbols.encode(arg("dtype")))
        out["pg_name"].append(self.symbols.encode(arg("pg_name")))
        out["seq"].append(to_int64(arg("seq")))

    def _add_memory(self, sub: list[TraceEvent]) -> None:
        ts = raw_us_to_ns(_field(sub, "ts"))
        args = _args(sub)

        def arg(attr: str) -> list[Any]:
            return _field(args, attr)

        self._append(
            MEMORY,
            ts=ts,
            pid=to_int64(_field(sub, "pid")),
            tid=to_int64(_field(sub, "tid")),
            device_type=to_int64(arg("device_type")),
            device_id=to_int64(arg("device_id")),
            addr=to_int64(arg("addr")),
            bytes=to_int64(arg("mem_bytes"), missing=0),
            total_allocated=to_int64(arg("total_allocated")),
            total_reserved=to_int64(arg("total_reserved")),
        )

    def _add_flows(self, sub: list[TraceEvent], cat: np.ndarray | None = None, ph: np.ndarray | None = None) -> None:
        """``cat``/``ph``: symbol codes of the events' cat and ph when the caller has them."""
        self._append(
            FLOW,
            cat=cat if cat is not None else self.symbols.encode(_field(sub, "cat")),
            ph=ph if ph is not None else self.symbols.encode(_field(sub, "ph")),
            id=to_int64(_field(sub, "id")),
            ts=raw_us_to_ns(_field(sub, "ts")),
            pid=to_int64(_field(sub, "pid")),
            tid=to_int64(_field(sub, "tid")),
        )

    def _add_meta(self, sub: list[TraceEvent]) -> None:
        for e in sub:
            a = e.args or _EMPTY_ARGS
            value = a.name if a.name is not None else a.labels if a.labels is not None else a.sort_index
            self.metadata.append((e.name, e.pid, e.tid, value))

    # ---- merging results of worker processes -------------------------------------
    def export_partial(self, joined: bool = False) -> Partial:
        """The columns so far; ``joined``: each column's parts as one array (fewer, larger objects to pickle)."""

        def parts(store: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
            if not joined:
                return dict(store)
            return {col: [np.concatenate(p)] if len(p) > 1 else p for col, p in store.items()}

        return Partial(
            cols={fam: parts(cols) for fam, cols in self._cols.items()},
            collectives=parts(self._collectives),
            metadata=self.metadata,
            strings=self.symbols.strings,
            categories_seen=self.categories_seen,
            dropped_no_time=self.dropped_no_time,
        )

    @classmethod
    def from_partial(cls, partial: Partial) -> TableBuilder:
        """A builder holding ``partial``'s columns with its symbol table (no codes remapped)."""
        builder = cls()
        builder.symbols = SymbolTable.of(partial.strings)
        for fam, cols in partial.cols.items():
            builder._cols[fam].update(cols)
        builder._collectives.update(partial.collectives)
        builder.metadata = partial.metadata
        builder.categories_seen = partial.categories_seen
        builder.dropped_no_time = partial.dropped_no_time
        return builder

    def merge_partial(self, partial: Partial) -> None:
        mapping = np.fromiter(
            (self.symbols.code(s) for s in partial.strings), dtype=np.int32, count=len(partial.strings)
        )
        for fam, cols in partial.cols.items():
            kinds = _FAMILY_COLUMNS[fam]
            for col, parts in cols.items():
                remap = kinds.get(col) == "str"
                self._cols[fam][col].extend(_remapped(p, mapping) if remap else p for p in parts)
        for col, parts in partial.collectives.items():
            remap = _COLLECTIVE_COLUMNS.get(col) == "str"
            self._collectives[col].extend(_remapped(p, mapping) if remap else p for p in parts)
        self.metadata.extend(partial.metadata)
        self.categories_seen |= partial.categories_seen
        self.dropped_no_time += partial.dropped_no_time

    # ---- finish ------------------------------------------------------------------
    def finish(self) -> dict[str, pd.DataFrame]:
        import pandas as pd

        stores = {
            "gpu": (self._cols.get(GPU, {}), _GPU_COLUMNS),
            "runtime": (self._cols.get(RUNTIME, {}), _RUNTIME_COLUMNS),
            "host": (self._cols.get(HOST, {}), _HOST_COLUMNS),
            "gpu_annotations": (self._cols.get(GPU_ANNOTATION, {}), _GPU_ANNOTATION_COLUMNS),
            "memory": (self._cols.get(MEMORY, {}), _MEMORY_COLUMNS),
            "flows": (self._cols.get(FLOW, {}), _FLOW_COLUMNS),
            "collectives": (self._collectives, _COLLECTIVE_COLUMNS),
        }
        # Each table from its own columns (the symbol table only read): on two threads where a core is idle.
        tables = run_in_lanes(
            {
                name: (sum(len(p) for p in store.get("ts", ())), functools.partial(self._frame_from, store, columns))
                for name, (store, columns) in stores.items()
            }
        )
        gpu = tables["gpu"]
        if len(gpu):
            # Regex answers per distinct name, cached across the ranks of a job (vocabulary).
            is_kernel = (gpu["kind"] == "kernel").to_numpy()
            gpu["is_comm"] = name_mask(gpu["name"], COMM_KERNEL) & is_kernel
        else:
            gpu["is_comm"] = pd.Series(dtype=bool)
        threads = pd.DataFrame(self.metadata, columns=["kind", "pid", "tid", "value"])
        tables["threads"] = threads
        return tables

    def _frame_from(self, store: dict[str, list[np.ndarray]], columns: dict[str, str]) -> pd.DataFrame:
        """One table, sorted by ``ts`` (stable); each column's parts are released once joined.

        The rows are put in order before the frame is made and the frame takes the arrays
        without copying them: a frame built and then reordered held three copies of the
        table at once (parts, frame, sorted frame), the largest term of the reader's peak memory.
        """
        order = None
        if "ts" in columns and store.get("ts"):
            ts = np.concatenate(store["ts"])
            by_ts = np.argsort(ts, kind="stable")
            if not (by_ts[1:] > by_ts[:-1]).all():
                order = by_ts
            del ts, by_ts
        data: dict[str, Any] = {}
        for col, kind in columns.items():
            parts = store.pop(col, [])
            empty = np.int32 if kind == "str" else np.int64
            values = np.concatenate(parts) if parts else np.empty(0, dtype=empty)
            del parts
            if order is not None:
                values = values[order]
            data[col] = self.symbols.categorical(values) if kind == "str" else values
        if "dur" in data:
            data["end"] = data["ts"] + data["dur"]
        import pandas as pd

        return pd.DataFrame(data, copy=False)


_LAYOUT = (GPU_ANNOTATION, GPU, RUNTIME, HOST, MEMORY, FLOW)
"""The order of the families in a :class:`_Batch`: each column is read from one run of them (times from all six,
durations and names from the first four, args from the first five, device/stream from the first two ...)."""
_POSITION = np.full(INSTANT + 1, len(_LAYOUT), dtype=np.int8)  # META and SKIP after the layout (not laid out)
_POSITION[list(_LAYOUT)] = np.arange(len(_LAYOUT), dtype=np.int8)

_Run = tuple[list[Any], list[tuple[int, int, int]]]
"""Values of one field over a run of families, and each family's ``(family, start, end)`` in them."""


class _Batch:
    """A slice's events laid out family after family in :data:`_LAYOUT` order (each family's events in their order
    in the slice), with their cats' and phs' codes in the builder (where the cats and phs are text or None)."""

    __slots__ = ("cats", "events", "phs", "starts")

    def __init__(
        self, events: Sequence[TraceEvent], starts: list[int], cats: np.ndarray | None, phs: np.ndarray | None
    ) -> None:
        self.events = events
        self.starts = starts  # the first event of each position in _LAYOUT, and the end
        self.cats, self.phs = cats, phs

    @classmethod
    def of(
        cls, events: Sequence[TraceEvent], families: np.ndarray, cats: np.ndarray | None, phs: np.ndarray | None
    ) -> _Batch:
        position = _POSITION[families]
        counts = np.bincount(position, minlength=len(_LAYOUT) + 1)[: len(_LAYOUT)]
        starts = [0, *np.cumsum(counts).tolist()]
        laid = starts[-1]
        if bool((position[1:] >= position[:-1]).all()):  # in layout order already (a slice of one family)
            order: Any = slice(0, laid)
            events = events if laid == len(events) else events[:laid]
        else:
            order = np.argsort(position, kind="stable")[:laid]
            events = _take_in_order(events, order)
        return cls(events, starts, None if cats is None else cats[order], None if phs is None else phs[order])

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Where the families from ``first`` to ``last`` in :data:`_LAYOUT` order are."""
        return self.starts[int(_POSITION[first])], self.starts[int(_POSITION[last]) + 1]

    def has(self, family: int) -> bool:
        at = int(_POSITION[family])
        return self.starts[at + 1] > self.starts[at]

    def _run(self, values: list[Any], first: int, last: int) -> _Run:
        start = self.starts[int(_POSITION[first])]
        parts = []
        for at in range(int(_POSITION[first]), int(_POSITION[last]) + 1):
            if self.starts[at + 1] > self.starts[at]:
                parts.append((_LAYOUT[at], self.starts[at] - start, self.starts[at + 1] - start))
        return values, parts

    def field(self, attr: str, first: int, last: int) -> _Run:
        s, e = self.span(first, last)
        items = self.events if s == 0 and e == len(self.events) else self.events[s:e]
        return self._run(_field(items, attr) if e > s else [], first, last)

    def args(self) -> list[EventArgs]:
        """The args of the ranges and memory events (the first five families), in layout order."""
        _, end = self.span(GPU_ANNOTATION, MEMORY)
        return _args(self.events if end == len(self.events) else self.events[:end])

    def arg(self, args: list[EventArgs], attr: str, first: int, last: int) -> _Run:
        s, e = self.span(first, last)
        return self._run(_field(args[s:e] if s or e < len(args) else args, attr) if e > s else [], first, last)

    def times(self) -> tuple[np.ndarray, np.ndarray]:
        """Every laid-out event's ``ts`` and the ranges' ``dur`` as ns: one parse where every text is plain, else
        each family's alone (as :func:`raw_us_to_ns` gives them)."""
        ts_raw, ts_parts = self.field("ts", GPU_ANNOTATION, FLOW)
        dur_raw, dur_parts = self.field("dur", GPU_ANNOTATION, HOST)
        both = plain_us_to_ns(ts_raw + dur_raw) if dur_raw else plain_us_to_ns(ts_raw)
        if both is not None:
            return both[: len(ts_raw)], both[len(ts_raw) :]
        ts = [raw_us_to_ns(ts_raw[s:e]) for _, s, e in ts_parts]
        dur = [raw_us_to_ns(dur_raw[s:e]) for _, s, e in dur_parts]
        empty = np.empty(0, dtype=np.int64)
        return np.concatenate(ts) if ts else empty, np.concatenate(dur) if dur else empty

    def drop(self, keep: np.ndarray, ts: np.ndarray, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Leave out the ranges where ``keep`` is False (``keep``: one per range, the first families laid out)."""
        index = np.concatenate((np.flatnonzero(keep), np.arange(len(keep), len(self.events))))
        starts = self.starts
        counts = [starts[at + 1] - starts[at] for at in range(len(_LAYOUT))]
        for at in range(int(_POSITION[HOST]) + 1):  # the ranges' families
            counts[at] = int(np.count_nonzero(keep[starts[at] : starts[at + 1]]))
        self.starts = [0, *itertools.accumulate(counts)]
        self.events = _take(self.events, index)
        for slot in ("cats", "phs"):
            sym = getattr(self, slot)
            if sym is not None:
                setattr(self, slot, sym[index])
        return ts[index], dur[keep]

    @staticmethod
    def ints(run: _Run, missing: int = -1) -> dict[int, np.ndarray]:
        """Each family's values as :func:`to_int64` gives them: all in one call where every value is an int."""
        values, parts = run
        try:
            whole = np.fromiter(values, dtype=np.int64, count=len(values))
        except (TypeError, ValueError, OverflowError):
            return {fam: to_int64(values[s:e], missing) for fam, s, e in parts}
        return {fam: whole[s:e] for fam, s, e in parts}

    @staticmethod
    def texts(symbols: SymbolTable, run: _Run) -> dict[int, np.ndarray]:
        """Each family's values' symbols as :meth:`SymbolTable.encode` gives them: all at once where every value
        is text or None."""
        values, parts = run
        whole = symbols.encode_text(values)
        if whole is None:
            return {fam: symbols.encode(values[s:e]) for fam, s, e in parts}
        return {fam: whole[s:e] for fam, s, e in parts}


MAX_CODED_CATS = 1024
MAX_CODED_PHS = 128
"""Most distinct cats (and phs beyond the 128 one-character ASCII ones) a builder codes; a slice bringing more
takes the general path (per slice, as every slice did before). Kineto writes ~20 cats and ~10 phs; a trace
with a cat per event would otherwise grow the (cat, ph) family table without bound."""


def _codes(
    values: list[Any], index: dict[Any, int], learn: Callable[[list[Any]], None], limit: int
) -> np.ndarray | None:
    """``index``'s code of each value, after ``learn`` of the values not in it yet; None if a value is neither
    text nor None, or ``index`` would pass ``limit`` values (``index`` then unchanged)."""
    try:
        return np.fromiter(map(index.__getitem__, values), dtype=np.intp, count=len(values))
    except KeyError:
        pass
    except TypeError:  # unhashable junk
        return None
    try:
        new = [u for u in dict.fromkeys(values) if u not in index]
    except TypeError:
        return None
    if len(index) + len(new) > limit or not all(u is None or type(u) is str for u in new):
        return None
    learn(new)
    return np.fromiter(map(index.__getitem__, values), dtype=np.intp, count=len(values))


def _take_in_order(items: Sequence[Any], order: np.ndarray) -> list[Any]:
    """``items[i] for i in order`` (any ``order``, as :func:`_take` takes only increasing indices)."""
    if len(order) == 0:
        return []
    if len(order) == 1:
        return [items[int(order[0])]]
    getter: Callable[[Sequence[Any]], tuple[Any, ...]] = itemgetter(*order.tolist())
    return list(getter(items))


def _remapped(part: np.ndarray | SharedPart, mapping: np.ndarray) -> Any:
    """``mapping[part]``: now for an array, when it is read for a part in a memory file."""
    return part.remapped(mapping) if isinstance(part, SharedPart) else mapping[part]


def _field(items: Sequence[Any], attr: str) -> list[Any]:
    """One attribute of every event (or of every ``args``)."""
    return _gather(attr)(items)


@cache
def _gather(attr: str) -> Callable[[Sequence[Any]], list[Any]]:
    """A list comprehension reading ``attr``, compiled once per attribute name.

    ``item.ts`` written out in the code is specialised by the interpreter to a slot read;
    ``attrgetter``/``getattr`` look the name up on every call: on ``msgspec`` structs that
    is 3x slower (1.0 ms against 0.3 ms for 12 k events), and a trace reads ~10 fields.
    """
    if not attr.isidentifier():
        raise ValueError(f"not an attribute name: {attr!r}")
    gather: Callable[[Sequence[Any]], list[Any]] = eval(f"lambda items: [item.{attr} for item in items]")
    return gather


def _args(events: Sequence[TraceEvent]) -> list[EventArgs]:
    args: list[Any] = _field(events, "args")
    if None in args:
        return [a if a is not None else _EMPTY_ARGS for a in args]
    return args


def _take(items: Sequence[Any], idx: np.ndarray) -> list[Any]:
    if len(idx) == 0:
        return []
    if len(idx) == len(items):
        return list(items)
    if len(idx) == 1:
        return [items[int(idx[0])]]
    getter: Callable[[Sequence[Any]], tuple[Any, ...]] = itemgetter(*idx.tolist())
    return list(getter(items))


_GPU_COLUMNS = {
    "kind": "str",
    "name": "str",
    "ts": "int",
    "dur": "int",
    "device": "int",
    "stream": "int",
    "correlation": "int",
    "external_id": "int",
    "bytes": "int",
}
_RUNTIME_COLUMNS = {
    "name": "str",
    "ts": "int",
    "dur": "int",
    "pid": "int",
    "tid": "int",
    "correlation": "int",
    "external_id": "int",
}
_HOST_COLUMNS = {
    "cat": "str",
    "name": "str",
    "ts": "int",
    "dur": "int",
    "pid": "int",
    "tid": "int",
    "external_id": "int",
    "call_stack": "str",
    "input_dims": "str",
}
_GPU_ANNOTATION_COLUMNS = {"name": "str", "ts": "int", "dur": "int", "device": "int", "stream": "int"}
_MEMORY_COLUMNS = {
    "ts": "int",
    "pid": "int",
    "tid": "int",
    "device_type": "int",
    "device_id": "int",
    "addr": "int",
    "bytes": "int",
    "total_allocated": "int",
    "total_reserved": "int",
}
_FLOW_COLUMNS = {"cat": "str", "ph": "str", "id": "int", "ts": "int", "pid": "int", "tid": "int"}
_COLLECTIVE_COLUMNS = {
    "source": "str",
    "name": "str",
    "ts": "int",
    "dur": "int",
    "collective": "str",
    "in_nelems": "int",
    "out_nelems": "int",
    "group_size": "int",
    "dtype": "str",
    "pg_name": "str",
    "seq": "int",
}

_FAMILY_COLUMNS: dict[int, dict[str, str]] = {
    GPU: _GPU_COLUMNS,
    RUNTIME: _RUNTIME_COLUMNS,
    HOST: _HOST_COLUMNS,
    GPU_ANNOTATION: _GPU_ANNOTATION_COLUMNS,
    MEMORY: _MEMORY_COLUMNS,
    FLOW: _FLOW_COLUMNS,
}
