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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class CompileFacts:
    regions: pd.DataFrame
    """Compiled-region ranges: ts, end, tid, frame, compile_id, nested (inside another region on its thread)."""
    breaks: pd.DataFrame
    """One row per nested region (a graph break): ts (outer start), end (nested start), tid, eager_ops (names
    of the host ops run in between), data_dependent (one of them reads a tensor value), eager_ts (start of
    the first of those eager ops, or ``end`` when there are none: the eager stretch is ``[eager_ts, end)``)."""
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
    text = names.astype(str).to_numpy()
    ids = pd.Series(text[idx]).str.extract(REGION)
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
    breaks = _breaks(host, regions, ts, end, tid, text)
    comp = name_mask(names, COMPILING)
    compiling = merge(ts[comp], end[comp]) if comp.any() else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    data = pd.Series(text[name_mask(names, re.compile(r"_data: .*compile_id="))])
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
    host: pd.DataFrame, regions: pd.DataFrame, ts: np.ndarray, end: np.ndarray, tid: np.ndarray, text: np.ndarray
) -> pd.DataFrame:
    rows: list[dict[str, object]] = []
    nested = regions[regions["nested"]]
    if len(nested) == 0:
        return pd.DataFrame({"ts": [], "end": [], "tid": [], "eager_ops": [], "data_dependent": [], "eager_ts": []})
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
                "eager_ts": _eager_start(window, calls, ts, end, tid, lo, int(r.ts), int(r.tid)),
            }
        )
    return pd.DataFrame(rows)


def _eager_start(
    window: np.ndarray, calls: np.ndarray, ts: np.ndarray, end: np.ndarray, tid: np.ndarray, lo: int, hi: int, t: int
) -> int:
    """First eager op after the outer region's compiled graph calls (ops inside those calls are compiled code)."""
    mine = calls[(tid[calls] == t) & (ts[calls] >= lo) & (end[calls] <= hi)]
    after = int(end[mine].max()) if len(mine) else lo
    eager = window[ts[window] >= after]
    return int(ts[eager].min()) if len(eager) else hi


def eager_spans(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Host spans (absolute ns) of the eager code at each graph break: from the first eager op after the
    outer compiled region's own work to the start of the resume region (what ``fullgraph=True`` compiles)."""
    b = compile_facts(trace).breaks
    if len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return b["eager_ts"].to_numpy(np.int64), b["end"].to_numpy(np.int64)
