"""Replay a :class:`~mlprof.whatif.graph.ReplayGraph`: when does every call and op start and end.

Two recurrences, each a max-plus scan that numpy evaluates in one pass:

* host: the frontier after item ``i`` is ``F[i] = max(F[i-1] + max(gap[i] + base[i], 0),
  end of the op it waits for + tail[i])``; the item starts at ``F[i-1] + gap[i]``;
* each stream: ``end[i] = max(ready[i], end[i-1]) + residual[i] + dur[i]`` with ``ready`` the
  launch time plus latency, or a cross-stream predecessor's end plus its delay.

With ``c = residual + dur`` and ``C`` its running sum per stream, ``end[i] = C[i] +
cummax(ready - C[i-1])``: a cumulative sum and a cumulative maximum. The host pass
needs the device ends and the device pass needs the host starts, so the two are
alternated until nothing moves (a fixed point: every edge points forward in time, so
each round settles at least one more wait; the unmodified graph settles in one).
"""

from __future__ import annotations

import math
from bisect import bisect_right

import msgspec
import numpy as np

from mlprof.whatif.graph import NONE, ReplayGraph

MAX_ROUNDS = 100_000
SEGMENT = np.int64(1) << 50
"""Offset between streams in the segmented cumulative maximum (relative times stay far below it)."""


class Timeline(msgspec.Struct):
    """Simulated times (relative ns) of every host item and device op."""

    h_start: np.ndarray
    h_end: np.ndarray
    h_front: np.ndarray
    """Host frontier after each item."""
    g_start: np.ndarray
    g_end: np.ndarray
    rounds: int


CHUNK = 2048
"""Host calls per chunk of the time-ordered first pass (see :func:`simulate`)."""


def simulate(graph: ReplayGraph, gpu_end: np.ndarray | None = None, *, unmodified: bool = False) -> Timeline:
    """Replay the graph.

    A first pass walks the timeline in chunks of :data:`CHUNK` host calls (and the device ops
    they launch), alternating host and device passes inside each chunk until it settles, with
    everything before it final; dependencies point forward in time, so each chunk needs only
    the few rounds of its own waits. The global alternation then starts from that answer and
    confirms it (one round, unless an edge pointed across chunks). ``gpu_end`` is a first guess
    of device ends for the chunks (default: the recorded ends). ``unmodified``: the graph is as built,
    so the recorded ends are probably the answer already; one global round checks that first (the
    recurrences have one solution: if the recorded ends satisfy them, they are it).
    """
    g = graph
    g_end = (g.g_ts + g.g_dur).astype(np.int64) if gpu_end is None else gpu_end.astype(np.int64)
    seg_first = np.ones(g.n_gpu, dtype=bool)
    seg_first[1:] = g.g_stream[1:] != g.g_stream[:-1]
    c = (g.g_gap + g.g_dur).astype(np.int64)
    csum = _segmented_cumsum(c, seg_first)
    offset = g.g_stream.astype(np.int64) * SEGMENT
    if unmodified:
        h_start, h_end, h_front = _host_pass(g, g_end)
        new_start, new_end = _device_pass(g, h_start, g_end, csum, c, offset)
        if np.array_equal(new_end, g_end):
            return Timeline(h_start=h_start, h_end=h_end, h_front=h_front, g_start=new_start, g_end=new_end, rounds=1)
    if g.n_host and g.n_gpu:
        g_end = _chunked(g, g_end, c)
    rounds = 0
    h_start = h_end = h_front = np.zeros(0, dtype=np.int64)
    g_start = g_end
    while rounds < MAX_ROUNDS:
        rounds += 1
        h_start, h_end, h_front = _host_pass(g, g_end)
        new_start, new_end = _device_pass(g, h_start, g_end, csum, c, offset)
        settled = np.array_equal(new_end, g_end)
        g_start, g_end = new_start, new_end
        if settled:
            break
    return Timeline(h_start=h_start, h_end=h_end, h_front=h_front, g_start=g_start, g_end=g_end, rounds=rounds)


def _chunked(g: ReplayGraph, g_end: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Device ends from a time-ordered pass over chunks of host calls (a first answer, see :func:`simulate`).

    Inside a chunk, host and device passes alternate until the chunk settles. A device pass is
    one cumulative scan per stream when no op of the chunk waits for another stream; otherwise
    the chunk's ops are walked once in recorded start order (a topological order: a stream
    predecessor and a cross-stream predecessor both started earlier in the recording), so a
    chain of cross-stream waits is resolved in one pass instead of one round per link. A chunk
    whose waits all point to earlier chunks (final already) is exact after one round and is
    not passed again to confirm it.
    """
    n_h, n_g = g.n_host, g.n_gpu
    h_chunk = np.arange(n_h, dtype=np.int64) // CHUNK
    n_chunks = int(h_chunk[-1]) + 1
    g_chunk = h_chunk[np.clip(g.g_launch, 0, None)]
    unlaunched = np.flatnonzero(g.g_launch < 0)
    if len(unlaunched):
        at = np.searchsorted(g.h_ts, g.g_ts[unlaunched], side="right") - 1
        g_chunk[unlaunched] = np.clip(at, 0, None) // CHUNK
    # Along a stream, chunks never go back: an op is simulated no earlier than the ops queued before it,
    # nor before the op of another stream it waits for (repeated: such waits can chain).
    stride = g.g_stream * (n_chunks + 1)
    has_dep_all = g.g_dep >= 0
    dops = np.flatnonzero(has_dep_all)
    for _ in range(64):
        g_chunk = np.maximum.accumulate(g_chunk + stride) - stride
        if len(dops) == 0:
            break
        pushed = np.maximum(g_chunk[dops], g_chunk[g.g_dep[dops]])
        if np.array_equal(pushed, g_chunk[dops]):
            break
        g_chunk[dops] = pushed
    order = np.lexsort((g.g_ts, g.g_stream, g_chunk))
    bounds = np.searchsorted(g_chunk[order], np.arange(n_chunks + 1))
    n_streams = int(g.g_stream.max()) + 1 if n_g else 0
    stream_end = np.full(n_streams, NONE, dtype=np.int64)
    g_end = g_end.copy()
    h_start = g.h_ts.astype(np.int64).copy()
    front_prev = 0
    waits = g.h_wait >= 0
    step_all = np.maximum(g.h_gap + g.h_base, 0)
    # A chunk is exact after one round when every wait of its host calls points to an earlier chunk and
    # no op of it waits for an op of a later chunk.
    late_wait = np.zeros(n_chunks, dtype=bool)
    if waits.any():
        items = np.flatnonzero(waits)
        late_wait[h_chunk[items][g_chunk[g.h_wait[items]] >= h_chunk[items]]] = True
    if len(dops):
        late_wait[g_chunk[dops][g_chunk[g.g_dep[dops]] > g_chunk[dops]]] = True
    # What every chunk reads, gathered once in the order of ``order`` (and its positions per chunk): the loop
    # below then slices it. A stream's first and last op in a chunk are where it changes or a chunk starts.
    o_stream = g.g_stream[order]
    o_first = np.ones(n_g, dtype=bool)
    o_first[1:] = o_stream[1:] != o_stream[:-1]
    o_first[bounds[:-1][bounds[:-1] < n_g]] = True
    o_last = np.ones(n_g, dtype=bool)
    o_last[:-1] = o_first[1:]
    o_c = c[order]
    # The running sums of each stream in each chunk, taken at once: equal to the chunk's own where no op's
    # c is negative (the segments' bases then ascend); else each chunk sums its own, as it did.
    o_cs = _segmented_cumsum(o_c, o_first) if bool((o_c >= 0).all()) else None
    o_off = o_stream * SEGMENT
    o_launch = g.g_launch[order]
    o_lat = g.g_lat[order]
    o_anchor = g.g_anchor[order]
    o_dep = g.g_dep[order]
    l_pos = np.flatnonzero(o_launch >= 0)  # ops launched by a host call
    l_call, l_lat = o_launch[l_pos], o_lat[l_pos]
    f_pos = np.flatnonzero(o_first)
    f_stream = o_stream[f_pos]
    e_pos = np.flatnonzero(o_last)
    e_stream = o_stream[e_pos]
    d_pos = np.flatnonzero(o_dep >= 0)
    cuts = [np.searchsorted(pos, bounds).tolist() for pos in (l_pos, f_pos, e_pos, d_pos)]
    l_cut, f_cut, e_cut, d_cut = cuts
    op_cut = bounds.tolist()
    # The host calls' running sums (steps are >= 0): a chunk's own is the difference of two of them.
    h_sum0 = np.concatenate([[0], np.cumsum(step_all)])
    h_no_wait_start = h_sum0[:-1] + g.h_gap  # a call's start less the frontier before its chunk, if no call waits
    chunk_waits = np.bincount(h_chunk[waits], minlength=n_chunks).tolist()
    for k in range(n_chunks):
        a, b = k * CHUNK, min((k + 1) * CHUNK, n_h)
        s0, s1 = op_cut[k], op_cut[k + 1]
        ops = order[s0:s1]
        streams = o_stream[s0:s1]
        cc = o_c[s0:s1]
        cs = o_cs[s0:s1] if o_cs is not None else _segmented_cumsum(cc, o_first[s0:s1])
        off = o_off[s0:s1]
        base = off - (cs - cc)  # key = ready - (cs - cc) + off
        cs_off = cs - off  # end = cs + (cummax(key) - off)
        dep = o_dep[s0:s1]
        launched = l_pos[l_cut[k] : l_cut[k + 1]] - s0
        launcher, latency = l_call[l_cut[k] : l_cut[k + 1]], l_lat[l_cut[k] : l_cut[k + 1]]
        first = f_pos[f_cut[k] : f_cut[k + 1]] - s0
        first_stream = f_stream[f_cut[k] : f_cut[k + 1]]
        # Cross-stream waits inside the chunk are resolved in one pass over the waiting ops only (in recorded
        # start order, see _dep_keys); where two of them tie on their recorded start the order is not known,
        # and the chunk alternates Jacobi rounds until it settles, as a chunk does for its host waits.
        dl = d_pos[d_cut[k] : d_cut[k + 1]] - s0
        inner_ok = True
        if len(dl):
            dl = dl[np.lexsort((dl, g.g_ts[ops[dl]]))]
            tgt = dep[dl]
            inner_ok = not bool((g.g_ts[tgt] >= g.g_ts[ops[dl]]).any())
            if not inner_ok:
                late_wait[k] = True
        host_waits = chunk_waits[k] > 0
        if not host_waits:
            # No call of the chunk waits: the frontier only advances by the steps (the scan below, whose
            # waits are all NONE, far below the frontier), the same in every round.
            h_start[a:b] = h_no_wait_start[a:b] + (front_prev - int(h_sum0[a]))
            front_last = front_prev + int(h_sum0[b] - h_sum0[a])
        end = cs
        for _ in range(MAX_ROUNDS):
            if host_waits:
                # host calls of the chunk
                w = np.full(b - a, NONE, dtype=np.int64)
                wk = waits[a:b]
                w[wk] = g_end[g.h_wait[a:b][wk]] + g.h_tail[a:b][wk]
                hsum = h_sum0[a + 1 : b + 1] - h_sum0[a]
                front = hsum + np.maximum(np.maximum.accumulate(w - hsum), front_prev)
                prev = np.concatenate([[front_prev], front[:-1]])
                h_start[a:b] = prev + g.h_gap[a:b]
                front_last = int(front[-1])
            if s1 == s0:
                break
            # device ops of the chunk, each stream continuing from its last op before the chunk
            ready = o_anchor[s0:s1].copy()
            ready[launched] = h_start[launcher] + latency
            ready[first] = np.maximum(ready[first], stream_end[first_stream])
            key = ready + base
            if len(dl):
                if inner_ok:
                    key[dl] = _dep_keys(g, ops, dl, key, cs, cc, off, streams, g_end)
                else:
                    key[dl] = np.maximum(key[dl], g_end[dep[dl]] + g.g_dep_delay[ops[dl]] - (cs - cc)[dl] + off[dl])
            end = np.maximum.accumulate(key) + cs_off
            if not late_wait[k]:
                g_end[ops] = end
                break
            settled = np.array_equal(end, g_end[ops])
            g_end[ops] = end
            if settled:
                break
        front_prev = front_last
        if s1 > s0:
            last = e_pos[e_cut[k] : e_cut[k + 1]]
            stream_end[e_stream[e_cut[k] : e_cut[k + 1]]] = end[last - s0]
    return g_end


def _dep_keys(
    g: ReplayGraph,
    ops: np.ndarray,
    dl: np.ndarray,
    key: np.ndarray,
    cs: np.ndarray,
    cc: np.ndarray,
    off: np.ndarray,
    streams: np.ndarray,
    g_end: np.ndarray,
) -> np.ndarray:
    """Scan keys of a chunk's ops that wait for an op of another stream (local positions ``dl``, in recorded
    start order), each raised by its predecessor's end.

    ``ops`` (by stream, then start) are ascending graph indices. Along a stream ``end[i] = cs[i] +
    max(key[j], j <= i) - off[i]``: a predecessor's end needs only the cumulative maximum of the keys
    before it on its stream, which are the plain keys and the raised keys of waiting ops already
    passed (they started earlier). So one pass over the waiting ops suffices."""
    base_max = np.maximum.accumulate(key)
    dep = g.g_dep[ops[dl]]
    local = np.clip(np.searchsorted(ops, dep), 0, len(ops) - 1)
    inside = ops[local] == dep
    delay_a = g.g_dep_delay[ops[dl]]
    shift_a = off[dl] - (cs[dl] - cc[dl])  # key = ready - (cs - cc) + off
    t_end0_a = cs[local] - off[local]  # end[t] = cs[t] + max(keys up to t) - off[t]
    # Everything the pass reads, gathered at the waiting ops and their predecessors only.
    ins = inside.tolist()
    t_bm = base_max[local].tolist()
    t_st = streams[local].tolist()
    d_st = streams[dl].tolist()
    base_key = key[dl].tolist()
    d_streams = set(d_st)
    if _targets_after_waiters(inside, streams[local], local, streams[dl], dl, d_streams):
        # Every waiting op passed before a predecessor, on the predecessor's stream, sits at or before it: the
        # running maximum of that stream's raised keys so far is the one to take, one number per stream.
        const = (t_end0_a + delay_a + shift_a).tolist()
        out_sh = (g_end[dep] + delay_a + shift_a).tolist()
        top: dict[int, float] = dict.fromkeys(set(t_st) | d_streams, -math.inf)
        res: list[int] = []
        put = res.append
        for inn, m, ts_, cst, osh, bk, ds in zip(ins, t_bm, t_st, const, out_sh, base_key, d_st, strict=True):
            if inn:
                v = top[ts_]
                kk = (v if v > m else m) + cst
            else:
                kk = osh
            if bk > kk:
                kk = bk
            put(kk)
            if kk > top[ds]:
                top[ds] = kk
        return np.asarray(res, dtype=np.int64)
    out_end = (g_end[dep] + delay_a).tolist()
    delay = delay_a.tolist()
    shift = shift_a.tolist()
    tl = local.tolist()
    t_end0 = t_end0_a.tolist()
    dpos = dl.tolist()
    # Per stream: positions of waiting ops passed so far and the running maximum of their raised keys.
    pos: dict[int, list[int]] = {s: [] for s in set(t_st) | set(d_st)}
    best: dict[int, list[int]] = {s: [] for s in pos}
    out: list[int] = []
    append = out.append
    for inn, t, m, ts_, e0, dly, oe, sh, bk, ds, dp in zip(
        ins, tl, t_bm, t_st, t_end0, delay, out_end, shift, base_key, d_st, dpos, strict=True
    ):
        if inn:
            ps = pos[ts_]
            if ps:
                if ps[-1] <= t:
                    v = best[ts_][-1]
                else:
                    j = bisect_right(ps, t) - 1
                    v = best[ts_][j] if j >= 0 else m
                if v > m:
                    m = v
            kk = e0 + m + dly + sh
        else:
            kk = oe + sh
        if bk > kk:
            kk = bk
        append(kk)
        # positions of one stream are appended in start order, which is their order on the stream
        pos[ds].append(dp)
        bl = best[ds]
        bl.append(kk if not bl or kk > bl[-1] else bl[-1])
    return np.asarray(out, dtype=np.int64)


def _targets_after_waiters(
    inside: np.ndarray,
    t_stream: np.ndarray,
    t_pos: np.ndarray,
    d_stream: np.ndarray,
    d_pos: np.ndarray,
    d_streams: set[int] | None = None,
) -> bool:
    """Whether, for each waiting op (in pass order) whose predecessor is in the chunk, every waiting op passed
    before it on the predecessor's stream sits at or before the predecessor (``_dep_keys``' common case).
    ``d_streams``: the streams of ``d_stream`` if known."""
    n = len(d_pos)
    if n < 2:
        return True
    before = np.empty(n, dtype=np.int64)
    for s in d_streams if d_streams is not None else set(d_stream.tolist()):
        # the last position of a waiting op of stream s passed before each waiting op
        last = np.maximum.accumulate(np.where(d_stream == s, d_pos, -1))
        before[0] = -1
        before[1:] = last[:-1]
        check = inside & (t_stream == s)
        if (before[check] > t_pos[check]).any():
            return False
    return True


def _segmented_cumsum(c: np.ndarray, seg_first: np.ndarray) -> np.ndarray:
    total = np.cumsum(c)
    if len(c) == 0:
        return total
    before = total - c
    base = np.maximum.accumulate(np.where(seg_first, before, 0))
    return total - base


def _host_pass(g: ReplayGraph, g_end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = g.n_host
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    waits = g.h_wait >= 0
    w = np.full(n, NONE, dtype=np.int64)
    w[waits] = g_end[g.h_wait[waits]] + g.h_tail[waits]
    step = np.maximum(g.h_gap + g.h_base, 0)
    csum = np.cumsum(step)
    # F[i] = C[i] + max(0, cummax(w - C)): the host starts at the origin (relative time 0).
    front = csum + np.maximum(np.maximum.accumulate(w - csum), 0)
    prev = np.concatenate([[0], front[:-1]])
    start = prev + g.h_gap
    end = np.maximum(start + g.h_base, w)
    return start, end, front


def _device_pass(
    g: ReplayGraph, h_start: np.ndarray, g_end_prev: np.ndarray, csum: np.ndarray, c: np.ndarray, offset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = g.n_gpu
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    ready = g.g_anchor.copy()
    launched = g.g_launch >= 0
    ready[launched] = h_start[g.g_launch[launched]] + g.g_lat[launched]
    dep = g.g_dep >= 0
    if dep.any():
        ready[dep] = np.maximum(ready[dep], g_end_prev[g.g_dep[dep]] + g.g_dep_delay[dep])
    before = csum - c
    key = ready - before + offset
    end = csum + (np.maximum.accumulate(key) - offset)
    return end - g.g_dur, end
