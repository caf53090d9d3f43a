"""What torch.compile did inside the trace: compiled regions, graph breaks, compilation, CUDA graphs.

``torch.compile`` leaves host ranges behind. Each call of a compiled frame is a
``Torch-Compiled Region: F/C`` range (F: the frame, C: its compile id); a graph break
splits a function into a compiled frame that calls back into eager Python and a *resume*
frame, compiled separately, that Dynamo enters from inside the first: so a region
nested in another region on the same thread is a graph break, and the host ops that run
in the outer region before the nested one are the eager code between the two graphs
(``aten::item``/``is_nonzero`` there mean data-dependent control flow). Compilation
itself shows up as ``dynamo`` / ``entire_frame_compile`` / ``... (dynamo_timed)`` ranges
(PyTorch 2.1+); inside an analysed step that is a recompilation the step paid for.
CUDA graph replays are ``cudaGraphLaunch`` runtime calls.
"""

from __future__ import annotations

import re

import msgspec
import numpy as np
import pandas as pd

from mlprof.analyzers.intervals import merge
from mlprof.trace.memo import cached
from mlprof.trace.model import Trace
from mlprof.trace.vocabulary import DISPATCH_CATS, SYNC_OPS, name_mask

REGION = re.compile(r"^Torch-Compiled Region: (\d+)/(\d+)")
COMPILED_CALL = re.compile(r"^Torch-Compiled Region|^CompiledFunction|^## Call CompiledFxGraph|^CompiledFxGraph")
"""Ranges that run compiled code (the region itself, AOTAutograd's function, Inductor's graph call)."""
COMPILING = re.compile(r"^dynamo$|^entire_frame_compile$|\(dynamo_timed\)$|^TorchDynamo Compile")
"""Ranges of Dynamo/AOT/Inductor compilation (``dynamo_timed`` and its ``dynamo`` phase)."""
GRAPH_LAUNCH = re.compile(r"^(cuda|hip)GraphLaunch(_v\d+)?$|^cuGraphLaunch(_ptsz)?$")
"""Replays of captured CUDA graphs."""


class CompileFacts(msgspec.Struct, frozen=True):
    """What a trace says about ``torch.compile``: compiled regions, graph breaks, compiling time, graph launches."""

    regions: pd.DataFrame
    """Compiled-region ranges: ts, end, tid, frame, compile_id, nested (inside another region on its thread)."""
    breaks: pd.DataFrame
    """One row per nested region (a graph break): ts (outer start), end (nested start), tid, eager_ops (names
    of the host ops run in between), data_dependent (one of them reads a tensor value), and the break's
    eager stretch ``[eager_ts, resume_ts)``: from the end of the last compiled-graph op before the nested
    region to the first compiled-graph op inside it (see :func:`eager_spans`)."""
    compiling: tuple[np.ndarray, np.ndarray]
    """Merged intervals of compilation ranges."""
    compile_ids: list[str]
    """``compile_id=F/C`` seen in the compilation ranges' data, in order."""
    graph_launches: np.ndarray
    """Start times of CUDA graph replays."""


def compile_facts(trace: Trace) -> CompileFacts:
    return cached(trace.host, "compile_facts", lambda: _facts(trace), trace.runtime)


def _facts(trace: Trace) -> CompileFacts:
    host = trace.host
    names = host["name"]
    ts = host["ts"].to_numpy(np.int64)
    end = host["end"].to_numpy(np.int64)
    tid = host["tid"].to_numpy(np.int64)
    is_region = name_mask(names, REGION)
    idx = np.flatnonzero(is_region)
    ids = pd.Series(_text(names, idx)).str.extract(REGION)
    regions = pd.DataFrame(
        {
            "ts": ts[idx],
            "end": end[idx],
            "tid": tid[idx],
            "frame": pd.to_numeric(ids[0]).to_numpy(np.int64) if len(idx) else np.zeros(0, np.int64),
            "compile_id": (ids[0] + "/" + ids[1]).to_numpy(object) if len(idx) else np.zeros(0, object),
        }
    )
    regions["nested"] = _nested(regions)
    breaks = _breaks(host, regions, ts, end, tid)
    comp = name_mask(names, COMPILING)
    compiling = merge(ts[comp], end[comp]) if comp.any() else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    data = pd.Series(_text(names, np.flatnonzero(name_mask(names, re.compile(r"_data: .*compile_id=")))))
    compile_ids = sorted(set(data.str.extract(r"compile_id=(\S+)")[0].dropna().tolist())) if len(data) else []
    runtime = trace.runtime
    launches = runtime["ts"].to_numpy(np.int64)[name_mask(runtime["name"], GRAPH_LAUNCH)] if len(runtime) else None
    return CompileFacts(
        regions=regions,
        breaks=breaks,
        compiling=compiling,
        compile_ids=compile_ids,
        graph_launches=launches if launches is not None else np.zeros(0, np.int64),
    )


def _text(names: pd.Series, rows: np.ndarray) -> np.ndarray:
    """The names at ``rows`` as text (``names.astype(str)``'s values there), without converting the whole column
    (10 ms of a 35 MB trace's analysis, which has no compiled region to read)."""
    values: np.ndarray = names.iloc[rows].astype(str).to_numpy(object)
    return values


def _nested(regions: pd.DataFrame) -> np.ndarray:
    """Whether each region starts inside an earlier region on its thread that is still open."""
    out = np.zeros(len(regions), dtype=bool)
    if len(regions) < 2:
        return out
    order = np.lexsort((regions["ts"].to_numpy(), regions["tid"].to_numpy()))
    t = regions["tid"].to_numpy(np.int64)[order]
    s = regions["ts"].to_numpy(np.int64)[order]
    e = regions["end"].to_numpy(np.int64)[order]
    reach = np.zeros(len(order), dtype=np.int64)
    for i in range(len(order)):  # regions are few (one per compiled call): a running maximum per thread
        reach[i] = e[i] if i == 0 or t[i] != t[i - 1] else max(reach[i - 1], e[i])
    inside = np.zeros(len(order), dtype=bool)
    inside[1:] = (t[1:] == t[:-1]) & (s[1:] < reach[:-1])
    out[order] = inside
    return out


def _breaks(
    host: pd.DataFrame, regions: pd.DataFrame, ts: np.ndarray, end: np.ndarray, tid: np.ndarray
) -> pd.DataFrame:
    rows: list[dict[str, object]] = []
    nested = regions[regions["nested"]]
    if len(nested) == 0:
        return pd.DataFrame(
            {"ts": [], "end": [], "tid": [], "eager_ops": [], "data_dependent": [], "eager_ts": [], "resume_ts": []}
        )
    text = host["name"].astype(str).to_numpy()
    is_op = host["cat"].isin(DISPATCH_CATS).to_numpy(dtype=bool) & ~name_mask(host["name"], COMPILED_CALL)
    is_sync = name_mask(host["name"], SYNC_OPS)
    cand = np.flatnonzero(is_op)
    cand = cand[np.argsort(ts[cand], kind="stable")]
    cand_ts = ts[cand]
    r_ts = regions["ts"].to_numpy(np.int64)
    r_end = regions["end"].to_numpy(np.int64)
    r_tid = regions["tid"].to_numpy(np.int64)
    is_call = name_mask(host["name"], COMPILED_CALL) & ~name_mask(host["name"], REGION)
    calls = np.flatnonzero(is_call)
    graph_aten = np.flatnonzero(is_op & ~is_sync & np.char.startswith(text.astype(str), "aten::"))
    for r in nested.itertuples(index=False):
        # The enclosing region: the latest-starting region on the thread that contains this one.
        enc = (r_tid == r.tid) & (r_ts < r.ts) & (r_end >= r.end)
        lo = int(r_ts[enc].max()) if enc.any() else int(r.ts)
        window = cand[np.searchsorted(cand_ts, lo, "left") : np.searchsorted(cand_ts, r.ts, "left")]
        window = window[(tid[window] == r.tid) & (end[window] <= r.ts)]
        rows.append(
            {
                "ts": lo,
                "end": int(r.ts),
                "tid": int(r.tid),
                "eager_ops": sorted(set(text[window].tolist())),
                "data_dependent": bool(is_sync[window].any()),
                **_stretch(calls, graph_aten, ts, end, tid, lo, int(r.ts), int(r.end), int(r.tid)),
            }
        )
    return pd.DataFrame(rows)


def _stretch(
    calls: np.ndarray,
    graph_aten: np.ndarray,
    ts: np.ndarray,
    end: np.ndarray,
    tid: np.ndarray,
    lo: int,
    at: int,
    hi: int,
    t: int,
) -> dict[str, int]:
    """The eager stretch of one break: end of the last compiled-graph op before the nested region (starting
    at ``at``, ending at ``hi``, inside an outer region from ``lo``) to the first one inside it.

    Compiled-graph ops are the compiled calls (``CompiledFunction``, ``## Call CompiledFxGraph ##``) where
    the regions have them; without them (``aot_eager`` inference runs the graph's ATen ops directly) every
    ATen op that does not read a tensor value. What lies between is the break's cost: the condition read
    on the host, Python, the cache lookup and guards of the resume frame, its prologue.
    """
    mine = (tid == t) & (ts >= lo) & (ts < hi)
    use_calls = calls[mine[calls]]
    graph = use_calls if len(use_calls) else graph_aten[mine[graph_aten]]
    before = graph[end[graph] <= at]
    inside = graph[ts[graph] >= at]
    return {
        "eager_ts": int(end[before].max()) if len(before) else lo,
        "resume_ts": int(ts[inside].min()) if len(inside) else hi,
    }


def eager_spans(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Host spans (absolute ns) of each graph break's eager stretch: from the end of the compiled graph's
    last op before the resume region to the resume region's first graph op (the spans ``fullgraph=True``
    would compile away: the condition read, Python, the resume frame's cache lookup, guards and prologue)."""
    b = compile_facts(trace).breaks
    if len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return b["eager_ts"].to_numpy(np.int64), b["resume_ts"].to_numpy(np.int64)
