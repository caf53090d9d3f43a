"""SHAPE001: tensor-core GEMMs on misaligned shapes (cuBLAS/CUTLASS picked an align1/align2 kernel)."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pandas as pd

from mlprof.analyzers.attention import gemm_flops
from mlprof.analyzers.kernels import KERNEL_CLASSES, is_misaligned_gemm
from mlprof.rules._kernels import kernel_facts, top_names
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option, top_ranges
from mlprof.trace.vocabulary import name_mask

MULTIPLE = 8
"""Dimensions reported as misaligned from recorded shapes: not multiples of this (16-bit tensor cores)."""
LEAF_GEMMS = re.compile(r"^aten::(mm|addmm|bmm|baddbmm)$")
"""Matmul ops that launch the GEMM themselves (their ``Input Dims`` give M, N, K)."""
GEMM_CLASSES = tuple(c for c in KERNEL_CLASSES if c.startswith("gemm"))
"""The kernel classes of matmuls and convolutions; matched by hashing (``isin``), not per-row string tests:
without pyarrow in the process (the plain ``analyze``) ``str.startswith`` ran in Python, ~30 ms on 1 GB."""
TENSOR_CORE = r"(?i)tensorop|hmma|imma|[hsi]\d{3,5}gemm|bf16|xmma|gmma"
"""Kernel names of tensor-core GEMMs (CUTLASS ``tensorop``, cuBLAS ``s1688``/``h16816``, Hopper ``gmma``)."""


class ShapeAlignmentOptions(RuleOptions, frozen=True):
    """SHAPE001's thresholds (``[tool.mlprof.rules.SHAPE001]``, ``mlprof explain SHAPE001``)."""

    min_share: float = common("min_share", 0.02)
    aligned_speedup: float = option(
        1.5,
        "times faster (>= 1)",
        1.0,
        100.0,
        "how much faster the aligned kernel runs than the align1/align2 one, used by the what-if replay "
        "when the trace cannot measure it (an assumption: time your padded shape and set it)",
    )


class ShapeAlignment(Rule[ShapeAlignmentOptions]):
    id = "SHAPE001"
    options_class = ShapeAlignmentOptions
    name = "shape-alignment"
    category = "shape_alignment"
    summary = "tensor-core GEMMs with M/N/K not multiples of 8 (align1/align2 kernel variants)"
    claims = ()
    doc = RuleDoc(
        what="Matrix multiplies run on tensor cores with a kernel variant for misaligned operands "
        "(`..._align1`, `..._align2` in CUTLASS/cuBLAS kernel names): some dimension of the GEMM (M, "
        "N, K or a leading dimension) is not a multiple of 8 elements for FP16/BF16, 4 for TF32 or 16 "
        "for INT8/FP8.",
        why="Tensor-core kernels load operands in 16-byte vectors. With a dimension of, say, 50257 "
        "(GPT-2's vocabulary) or a hidden size of 1000, cuBLAS must fall back to kernels that load "
        "one or two elements at a time, or to non-tensor-core paths; NVIDIA's guidance measures "
        "several-fold slower GEMMs for the same FLOPs.",
        detection="GEMM kernels whose name says tensor cores (`tensorop`, `s1688`, `h16816`, "
        "`imma`...) and `align1`/`align2`. Their time per step and share of all GEMM time is the "
        "evidence; with `record_shapes` the ops that launched them (by external id) and their input "
        "shapes are named, with the dimensions that are not multiples of 8. No time is claimed by the "
        "attribution. The what-if replay divides these kernels by the aligned/misaligned throughput "
        "ratio: measured in the trace when `record_shapes` gives the FLOPs (2*M*N*K) of the ops that launched "
        "aligned and misaligned tensor-core GEMMs of similar size (within 4x in FLOPs; achieved FLOP/s of "
        "the aligned ones over the misaligned ones, confidence medium), else `aligned_speedup` (default "
        "1.5, an assumption: the finding then stays low confidence and out of the plan).",
        fix="Pad the odd dimension to a multiple of 8 (16-bit), 16 (8-bit) or 64 to be safe:\n\n"
        "    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)  # vocabulary\n"
        "    hidden = 1024                     # not 1000; heads x head_dim a multiple of 8\n"
        "    x = F.pad(x, (0, (-x.shape[-1]) % 8))   # pad a feature dim, slice the result back",
        false_alarms="Small GEMMs where alignment does not matter next to launch cost; shapes fixed "
        "by the data (an odd number of classes) whose GEMM is a tiny part of the step. FP32 SIMT "
        "kernels (`simt_sgemm..._align1`) are not tensor-core kernels and are not counted.",
    )

    def check(self, ctx: RankContext, opts: ShapeAlignmentOptions) -> list[Finding]:
        k = kernel_facts(ctx).kernels
        gemm = k[k["klass"].isin(GEMM_CLASSES).to_numpy()]
        if len(gemm) == 0 or ctx.step_ns <= 0:
            return []
        bad = gemm[is_misaligned_gemm(gemm["name"])]
        if len(bad) == 0:
            return []
        n_steps = max(ctx.n_windows, 1)
        bad_ns = float(bad["dur"].sum()) / n_steps
        share = bad_ns / ctx.step_ns
        if share < opts.min_share:
            return []
        gemm_share = float(bad["dur"].sum()) / max(float(gemm["dur"].sum()), 1.0)
        shapes = _launching_shapes(ctx, bad)
        measured = _measured_ratio(ctx)
        title = (
            f"Tensor-core GEMMs on misaligned shapes: {len(bad) / n_steps:.0f} align1/align2 kernels per step, "
            f"{ms(bad_ns)} ms ({gemm_share:.0%} of GEMM time)"
            + (f"; e.g. {shapes[0]['op']} {shapes[0]['input_dims']}" if shapes else "")
        )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=0.0,
                confidence="medium" if measured else "low",
                confidence_reason="alignment read from kernel names; "
                + (
                    f"aligned tensor-core GEMMs of similar size ran {measured['aligned_speedup_measured']:.2f}x the "
                    "FLOP/s of the misaligned ones in this trace (record_shapes): the replay uses that ratio"
                    if measured
                    else "the aligned kernel's speed is not in this trace: the replay assumes "
                    f"aligned_speedup={opts.aligned_speedup:g}x for these kernels"
                ),
                evidence={
                    "misaligned_kernels_per_step": round(len(bad) / n_steps, 1),
                    "misaligned_gemm_ms_per_step": ms(bad_ns),
                    "share_of_gemm_time": round(gemm_share, 3),
                    "share_of_step": round(share, 3),
                    "top_kernels": top_names(bad, n_steps),
                    "ops_and_shapes": shapes,
                    **(measured or {"aligned_speedup_assumed": opts.aligned_speedup}),
                },
                fix="pad the odd GEMM dimension (vocabulary, hidden size, batch x sequence) to a multiple of 8 "
                "(16-bit) / 16 (8-bit); e.g. resize_token_embeddings(..., pad_to_multiple_of=64)",
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                time_ranges_ns=top_ranges(bad["ts"].to_numpy(np.int64), bad["end"].to_numpy(np.int64)),
                severity_override="warning" if share >= 0.1 else "info",
            )
        ]


def _launching_shapes(ctx: RankContext, bad: pd.DataFrame) -> list[dict[str, Any]]:
    """The ops (with recorded shapes) that launched the misaligned kernels, by external id."""
    gpu = ctx.trace.gpu
    host = ctx.trace.host
    if "input_dims" not in host or not (host["input_dims"] != "").any():
        return []
    starts = gpu["ts"].to_numpy(np.int64)
    kernel_ext = gpu["external_id"].to_numpy(np.int64)[np.isin(starts, bad["ts"].to_numpy(np.int64))]
    ops = host[(host["input_dims"] != "").to_numpy() & np.isin(host["external_id"].to_numpy(np.int64), kernel_ext)]
    if len(ops) == 0:
        return []
    counts = ops.groupby([ops["name"].astype(str), ops["input_dims"].astype(str)]).size()
    out = []
    for (op, dims), n in counts.sort_values(ascending=False).head(5).items():
        out.append({"op": op, "input_dims": dims, "calls": int(n), "dims_not_multiple_of_8": _odd_dims(dims)})
    return out


SIMILAR_FLOPS = 4.0
"""Aligned GEMM ops within this factor of the misaligned ones' median FLOPs are compared with them."""


def _measured_ratio(ctx: RankContext) -> dict[str, Any] | None:
    """Achieved FLOP/s of aligned over misaligned tensor-core GEMMs of similar size, from recorded shapes.

    Each kernel is joined to the op that launched it by external id; an op's FLOPs
    (``2*M*N*K``, from ``Input Dims``) are divided by the time of its tensor-core GEMM kernels.
    None when the trace has no shapes or lacks either side (ml-perf-notes R09: measure it in
    the same trace, else the ratio is not known).
    """
    host, gpu = ctx.trace.host, ctx.trace.gpu
    if "input_dims" not in host or len(gpu) == 0:
        return None
    ts = gpu["ts"].to_numpy(np.int64)
    gemm = gpu[(gpu["kind"] == "kernel").to_numpy() & ctx.in_windows(ts)]
    ops = host[(host["input_dims"] != "").to_numpy() & name_mask(host["name"], LEAF_GEMMS)]
    if len(ops) == 0:
        return None
    # Each distinct (op, shapes) pair is parsed once: a trace repeats a few shapes over many steps (tiled x4:
    # 38 k GEMM ops, a handful of pairs). The values per pair keep the dtype pandas gives them (object where
    # a product leaves int64), then are taken per op.
    codes, pairs = pd.MultiIndex.from_arrays([ops["name"].astype(str), ops["input_dims"].astype(str)]).factorize()
    per_pair = pd.Series([gemm_flops(n, d) for n, d in pairs]).to_numpy()
    flops = pd.Series(per_pair[codes], index=ops["external_id"].to_numpy(np.int64))
    flops = flops[(flops > 0) & (flops.index >= 0)].groupby(level=0).first()
    core = gemm[gemm["name"].astype(str).str.contains(TENSOR_CORE)]
    ext = core["external_id"].to_numpy(np.int64)
    bad = is_misaligned_gemm(core["name"])
    t_bad = core["dur"][bad].groupby(ext[bad]).sum()
    t_good = core["dur"][~bad].groupby(ext[~bad]).sum()
    f_bad, f_good = flops.reindex(t_bad.index).dropna(), flops.reindex(t_good.index).dropna()
    if len(f_bad) == 0 or len(f_good) == 0:
        return None
    mid = float(f_bad.median())
    f_good = f_good[(f_good >= mid / SIMILAR_FLOPS) & (f_good <= mid * SIMILAR_FLOPS)]
    if len(f_good) == 0:
        return None
    rate_bad = float(f_bad.sum()) / float(t_bad[f_bad.index].sum())
    rate_good = float(f_good.sum()) / float(t_good[f_good.index].sum())
    return {
        "aligned_speedup_measured": round(max(rate_good / rate_bad, 1.0), 4),
        "aligned_gemm_tflops": round(rate_good / 1e3, 3),
        "misaligned_gemm_tflops": round(rate_bad / 1e3, 3),
        "ops_compared": {"aligned": len(f_good), "misaligned": len(f_bad)},
    }


def _odd_dims(text: str) -> list[int]:
    try:
        dims = json.loads(text)
    except ValueError:
        return []
    return sorted({int(d) for shape in dims if isinstance(shape, list) for d in shape[-2:] if int(d) % MULTIPLE})
