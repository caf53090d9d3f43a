"""Attention computed op by op: ``softmax(Q K^T) V`` as a batched matmul, a softmax and a batched matmul.

A fused attention kernel (``scaled_dot_product_attention``: flash, memory-efficient,
cuDNN) streams Q, K and V through on-chip memory and never writes the S x S score
matrix; the unfused form writes it, scales and masks it, normalises it and reads it
back, each step a full pass over ``batch * heads * S^2`` elements. The chain is found
on the host, where op names say what ran: on one thread, a softmax (or its backward)
whose nearest matmul-like op before it and after it are both *batched* matmuls
(``bmm``/``baddbmm``/``matmul``/``einsum``; with ``record_shapes``, inputs of 3 or
more dimensions) with no other matmul in between. A linear layer feeding a
classifier's softmax is not a chain: its nearest matmul is ``addmm``/``linear``.

The chain's device work is the kernels launched (by CUPTI correlation) from inside
its host span. The chain's own GEMMs are no measure of what a fused kernel costs:
with a head dimension of 64, ``Q K^T`` writes S^2 outputs per 64 multiply-adds and
``P V`` reads them back, so they are bound by the score matrix's traffic too. The
analysis therefore also keeps the shapes and times of the trace's other matmul ops,
the rate this machine reaches on ordinary matmuls.
"""

from __future__ import annotations

import json
import re

import msgspec
import numpy as np
import pandas as pd

from mlprof.analyzers.kernels import in_windows, kernel_classes, launch_times
from mlprof.trace.memo import cached
from mlprof.trace.model import Trace
from mlprof.trace.vocabulary import DISPATCH_CATS, name_mask

MATMUL_OPS = re.compile(r"^aten::(bmm|baddbmm|matmul|einsum|mm|addmm|linear|addbmm)$")
"""Every matmul-like op: the chain's GEMMs are the nearest of these on each side of the softmax."""
BATCHED_OPS = re.compile(r"^aten::(bmm|baddbmm|matmul|einsum)$")
"""The matmuls an attention chain is made of (Q K^T and P V are batched over batch x heads)."""
SOFTMAX_OPS = re.compile(r"^aten::(softmax|_softmax|_safe_softmax|_softmax_backward_data)$")
FUSED_ATTENTION = re.compile(
    r"scaled_dot_product_(flash|efficient|cudnn|fused)|_flash_attention|_efficient_attention|flash_fwd|flash_bwd"
    r"|fmha|pytorch_flash|cudnn_attention|FlashAttn|flash_attn|mem_efficient",
    re.IGNORECASE,
)
"""Ops and kernels of fused attention implementations (present: the job already uses one somewhere)."""
MATH_FALLBACK = re.compile(r"^aten::_scaled_dot_product_attention_math")
"""SDPA's unfused fallback: a chain inside it means SDPA could not use a fused kernel for these inputs."""
MHA_OPS = re.compile(r"^aten::_native_multi_head_attention$")
"""``nn.MultiheadAttention``'s fast path: unfused when it must return the attention weights."""


class AttentionChains(msgspec.Struct, frozen=True):
    """The unfused attention chains of a trace and the fused attention ops and kernels it has."""

    chains: pd.DataFrame
    """One row per chain: tid, ts, end (host span from the first GEMM's start to the second's end),
    gemm_host_ns, backward, inside (math_fallback | multi_head_attention | ""), and from the shapes
    when recorded: batch_heads, seq_q, seq_k, head_dim, flops (-1 when unknown)."""
    kernel_in_chain: np.ndarray
    """Per row of ``trace.gpu``: launched from inside a chain's host span."""
    kernel_is_gemm: np.ndarray
    """Per row of ``trace.gpu``: a matmul kernel (the part of the chain a fused kernel still computes)."""
    fused_ops: int
    """Host ops or kernels of fused attention implementations seen anywhere in the trace."""
    gemm_ops: pd.DataFrame
    """The trace's leaf matmul ops outside chains with recorded shapes: ts, dur, flops (the rate
    this machine reached on ordinary matmuls)."""


def attention_chains(trace: Trace) -> AttentionChains:
    """The unfused attention chains of a trace, computed once per trace."""
    return cached(trace.host, "attention_chains", lambda: _find(trace), trace.gpu, trace.runtime)


def _find(trace: Trace) -> AttentionChains:
    host = trace.host
    gpu = trace.gpu
    is_op = host["cat"].isin(DISPATCH_CATS).to_numpy(dtype=bool)
    names = host["name"]
    matmul = is_op & name_mask(names, MATMUL_OPS)
    softmax = is_op & name_mask(names, SOFTMAX_OPS)
    fused = int((is_op & name_mask(names, FUSED_ATTENTION)).sum())
    if len(gpu):
        fused += int(name_mask(gpu["name"], FUSED_ATTENTION).sum())
    empty = AttentionChains(_EMPTY.copy(), np.zeros(len(gpu), bool), np.zeros(len(gpu), bool), fused, _NO_GEMMS.copy())
    if not softmax.any() or not matmul.any():
        return empty
    ts = host["ts"].to_numpy(np.int64)
    end = host["end"].to_numpy(np.int64)
    tid = host["tid"].to_numpy(np.int64)
    batched = name_mask(names, BATCHED_OPS)
    dims = host["input_dims"].astype(str).to_numpy() if "input_dims" in host else np.full(len(host), "", object)

    rows: list[dict[str, object]] = []
    for t in np.unique(tid[softmax]):
        on = tid == t
        mm_idx = np.flatnonzero(matmul & on)
        sm_idx = np.flatnonzero(softmax & on)
        if len(mm_idx) == 0:
            continue
        sm_idx = _outermost(sm_idx, ts, end)
        by_end = mm_idx[np.argsort(end[mm_idx], kind="stable")]
        by_ts = mm_idx[np.argsort(ts[mm_idx], kind="stable")]
        # Nearest matmul ending before the softmax starts (the outermost: matmul ends after its bmm),
        # nearest starting after it ends (the outermost again: matmul starts before its bmm).
        before = np.searchsorted(end[by_end], ts[sm_idx], side="right") - 1
        after = np.searchsorted(ts[by_ts], end[sm_idx], side="left")
        ok = (before >= 0) & (after < len(by_ts))
        for s, b, a in zip(sm_idx[ok], before[ok], after[ok], strict=True):
            first, second = int(by_end[b]), int(by_ts[a])
            if not (batched[first] and batched[second]):
                continue
            shape = _shape(dims[s], dims[first])
            if shape is not None and shape[0] < 0:
                continue  # recorded shapes say this is not a batched S x S softmax
            bh, sq, sk, d = shape if shape is not None else (-1, -1, -1, -1)
            rows.append(
                {
                    "tid": int(t),
                    "ts": int(ts[first]),
                    "end": int(end[second]),
                    "gemm_host_ns": int(end[first] - ts[first] + end[second] - ts[second]),
                    "backward": "backward" in str(names.iat[s]),
                    "batch_heads": bh,
                    "seq_q": sq,
                    "seq_k": sk,
                    "head_dim": d,
                    "flops": 4 * bh * sq * sk * d if d > 0 else -1,
                }
            )
    if not rows:
        return empty
    chains = pd.DataFrame(rows).sort_values("ts", kind="stable").reset_index(drop=True)
    chains["inside"] = _inside(host, is_op, chains)
    c_s, c_e = chains["ts"].to_numpy(np.int64), chains["end"].to_numpy(np.int64)
    if len(gpu):
        launched = launch_times(gpu, trace.runtime)
        is_kernel = (gpu["kind"] == "kernel").to_numpy() & ~gpu["is_comm"].to_numpy(dtype=bool)
        in_chain = is_kernel & in_windows(launched, c_s, c_e)
        is_gemm = in_chain & np.char.startswith(kernel_classes(gpu).astype(str), "gemm")
    else:
        in_chain = is_gemm = np.zeros(0, dtype=bool)
    return AttentionChains(chains, in_chain, is_gemm, fused, _gemm_ops(host, is_op, dims, c_s, c_e))


LEAF_GEMMS = re.compile(r"^aten::(mm|addmm|bmm|baddbmm)$")
"""Matmul ops that do the work themselves (``linear``/``matmul`` wrap one of these)."""


def _gemm_ops(
    host: pd.DataFrame, is_op: np.ndarray, dims: np.ndarray, c_s: np.ndarray, c_e: np.ndarray
) -> pd.DataFrame:
    leaf = np.flatnonzero(is_op & name_mask(host["name"], LEAF_GEMMS) & (dims != ""))
    ts = host["ts"].to_numpy(np.int64)[leaf]
    leaf = leaf[~in_windows(ts, c_s, c_e)] if len(c_s) else leaf
    names = host["name"].astype(str).to_numpy()
    flops = np.array([gemm_flops(names[i], dims[i]) for i in leaf.tolist()], dtype=np.int64)
    keep = flops > 0
    return pd.DataFrame(
        {
            "ts": host["ts"].to_numpy(np.int64)[leaf][keep],
            "dur": host["dur"].to_numpy(np.int64)[leaf][keep],
            "flops": flops[keep] if len(flops) else np.zeros(0, np.int64),
        }
    )


def gemm_flops(name: str, text: str) -> int:
    """2*M*N*K (times the batch) from an op's ``Input Dims``; 0 when the shapes do not fit."""
    try:
        d = json.loads(text)
        if name.endswith("addmm") or name.endswith("baddbmm"):
            d = d[1:]
        a, b = d[0], d[1]
        if len(a) == 2 and len(b) == 2 and a[1] == b[0]:
            return 2 * a[0] * a[1] * b[1]
        if len(a) == 3 and len(b) == 3 and a[2] == b[1]:
            return 2 * a[0] * a[1] * a[2] * b[2]
    except (ValueError, IndexError, TypeError, KeyError):
        pass
    return 0


_NO_GEMMS = pd.DataFrame(
    {"ts": pd.Series(dtype=np.int64), "dur": pd.Series(dtype=np.int64), "flops": pd.Series(dtype=np.int64)}
)


_EMPTY = pd.DataFrame(
    {
        "tid": pd.Series(dtype=np.int64),
        "ts": pd.Series(dtype=np.int64),
        "end": pd.Series(dtype=np.int64),
        "gemm_host_ns": pd.Series(dtype=np.int64),
        "backward": pd.Series(dtype=bool),
        "batch_heads": pd.Series(dtype=np.int64),
        "seq_q": pd.Series(dtype=np.int64),
        "seq_k": pd.Series(dtype=np.int64),
        "head_dim": pd.Series(dtype=np.int64),
        "flops": pd.Series(dtype=np.int64),
        "inside": pd.Series(dtype=object),
    }
)


def _outermost(idx: np.ndarray, ts: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Softmax ops not nested in another (``aten::softmax`` holds ``aten::_softmax``), by start."""
    idx = idx[np.lexsort((-end[idx], ts[idx]))]
    reach = np.maximum.accumulate(end[idx])
    nested = np.zeros(len(idx), dtype=bool)
    nested[1:] = end[idx][1:] <= reach[:-1]
    return idx[~nested]


def _shape(softmax_dims: str, gemm_dims: str) -> tuple[int, int, int, int] | None:
    """(batch*heads, S_q, S_k, head dim) from recorded shapes; None when not recorded; (-1, ...) when
    the shapes rule the chain out (a softmax over fewer than 3 dimensions: no batch of score matrices)."""
    try:
        s = json.loads(softmax_dims) if softmax_dims else None
        g = json.loads(gemm_dims) if gemm_dims else None
    except ValueError:
        return None
    if not s or not isinstance(s[0], list) or not s[0]:
        return None
    x = s[0]
    if len(x) < 3:
        return (-1, -1, -1, -1)
    bh = int(np.prod(x[:-2]))
    d = -1
    if g and isinstance(g[0], list) and len(g[0]) >= 3 and g[0][-2] == x[-2]:
        d = int(g[0][-1])  # Q (.., S_q, d) @ K^T (.., d, S_k)
    return (bh, int(x[-2]), int(x[-1]), d)


def _inside(host: pd.DataFrame, is_op: np.ndarray, chains: pd.DataFrame) -> list[str]:
    starts = chains["ts"].to_numpy(np.int64)
    out = np.full(len(chains), "", dtype=object)
    for label, pattern in (("multi_head_attention", MHA_OPS), ("math_fallback", MATH_FALLBACK)):
        hit = is_op & name_mask(host["name"], pattern)
        if hit.any():
            inside = in_windows(starts, host["ts"].to_numpy(np.int64)[hit], host["end"].to_numpy(np.int64)[hit] + 1)
            out[inside] = label
    return out.tolist()


def chain_spans(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Host spans of the chains (for the ``launch.attention`` cause)."""
    c = attention_chains(trace).chains
    return c["ts"].to_numpy(np.int64), c["end"].to_numpy(np.int64)
