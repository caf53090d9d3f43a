"""ATTN001: attention computed as matmul -> softmax -> matmul, materialising the S x S score matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlprof.analyzers.attention import attention_chains
from mlprof.rules._kernels import top_names
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option, top_ranges

FP32_BYTES = 4
"""Element size assumed for the bytes a fused kernel must read (the larger, so the cost is not understated)."""
HALF_KERNEL = r"Half|BFloat16|half|bf16|fp16|f16"
"""Kernel names of 16-bit work: the fused kernel then runs on tensor cores."""


class UnfusedAttentionOptions(RuleOptions, frozen=True):
    """ATTN001's thresholds (``[tool.mlprof.rules.ATTN001]``, ``mlprof explain ATTN001``)."""

    min_share: float = common("min_share", 0.03)
    min_seq_len: int = option(
        64, "tokens", 1.0, 1e7, "attention chains with a known sequence length shorter than this are not reported"
    )
    fused_efficiency: float = option(
        0.5,
        "share of peak FLOP/s (0-1)",
        0.01,
        1.0,
        "the fraction of peak a fused attention kernel is assumed to reach when estimating its time",
    )


class UnfusedAttention(Rule[UnfusedAttentionOptions]):
    id = "ATTN001"
    options_class = UnfusedAttentionOptions
    name = "unfused-attention"
    category = "attention"
    summary = "attention as bmm -> softmax -> bmm (S x S score matrix written out); no fused SDPA kernel"
    claims = ("compute.attention", "launch.attention")
    needs_device = False
    doc = RuleDoc(
        what="Attention written out op by op: `scores = q @ k.transpose(-2, -1)`, a scale/mask, "
        "`softmax`, then `scores @ v`, so the `batch x heads x S x S` score matrix is written to "
        "memory, read back by every following op, and kept for the backward pass. No "
        "`scaled_dot_product_attention` / flash / memory-efficient kernel does the work.",
        why="The two matmuls are the useful FLOPs; everything between them is memory traffic over "
        "S^2 elements per head (and, in training, S^2 activations saved per layer). A fused kernel "
        "keeps score tiles in on-chip memory and reads only Q, K and V. On long sequences the "
        "score-matrix passes dominate: on real inference traces this chain held 70-87% of GPU time.",
        detection="On each host thread, a softmax op (`aten::softmax`/`_softmax`/`_safe_softmax`, or "
        "`_softmax_backward_data`) whose nearest matmul-like op before and after it are both batched "
        "(`bmm`/`baddbmm`/`matmul`/`einsum`; with `record_shapes`, a softmax input of 3+ dimensions "
        "whose rows are at least `min_seq_len` long). The chain's device time is the kernels launched "
        "from inside it (`compute.attention`), its host time with the device idle is "
        "`launch.attention` (all of it on a CPU-only trace). With shapes, a fused kernel is costed from "
        "the chain's FLOPs (4 x batch x heads x S_q x S_k x head_dim) at the GPU's peak (16-bit tensor "
        "core when the chain's kernels are FP16/BF16, else FP32) times `fused_efficiency` (default 0.5, "
        "what flash kernels reach), or the bytes of Q, K, V and the output at the device bandwidth when "
        "that is longer; on a CPU-only trace, at the rate the trace's other matmul ops reached (the "
        "chain's own matmuls are bound by the score matrix's traffic). Without shapes the fused kernel "
        "is costed as the chain's matmul time. Host dispatch of the chain's other ops is saved too. "
        "The time lost is the chain's time minus that cost, on the critical path only.",
        fix="Call the fused kernel (it picks flash, memory-efficient or cuDNN attention for the "
        "device, dtype and mask):\n\n"
        "    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,\n"
        "                                                           dropout_p=p, is_causal=causal)\n"
        "    # Hugging Face: AutoModel.from_pretrained(..., attn_implementation='sdpa')\n"
        "    # nn.MultiheadAttention: mha(q, k, v, need_weights=False)",
        false_alarms="Code that needs the attention weights themselves (visualisation, some "
        "relative-position schemes) must materialise them. Short sequences (below `min_seq_len`) "
        "gain little. Flash kernels need FP16/BF16 and sm80+; on older GPUs or in FP32 SDPA uses "
        "the memory-efficient kernel, which saves less. The backward pass's saving is counted only "
        "where its softmax backward sits between batched matmuls.",
    )

    def check(self, ctx: RankContext, opts: UnfusedAttentionOptions) -> list[Finding]:
        found = attention_chains(ctx.trace)
        chains = found.chains
        if len(chains) == 0 or ctx.step_ns <= 0:
            return []
        chains = chains[ctx.in_windows(chains["ts"].to_numpy(np.int64))]
        seq = chains["seq_k"].to_numpy(np.int64)
        chains = chains[(seq < 0) | (seq >= opts.min_seq_len)]
        if len(chains) == 0:
            return []
        n_steps = max(ctx.n_windows, 1)
        spec = ctx.gpu_spec
        known = chains[chains["head_dim"] > 0]
        flops = float(known["flops"].sum()) if len(known) == len(chains) else 0.0
        io_bytes = float((4 * known["batch_heads"] * known["seq_q"] * known["head_dim"]).sum()) * FP32_BYTES
        host_ns = float((chains["end"] - chains["ts"]).sum())
        gemm_host = float(chains["gemm_host_ns"].sum())
        cost: dict[str, Any] = {"chain_flops_per_step": flops / n_steps if flops else None}
        if ctx.has_device:
            # Host: the chain's ops become one; what is not its two matmul ops is dispatch saved.
            fused_host = gemm_host
        else:
            # CPU-only: the fused op does the chain's FLOPs at the rate this machine reached on the
            # trace's ordinary matmuls (the chain's own are bound by the score matrix's traffic).
            gemm_ops = found.gemm_ops[ctx.in_windows(found.gemm_ops["ts"].to_numpy(np.int64))]
            rate = float(gemm_ops["flops"].sum()) / float(gemm_ops["dur"].sum()) if len(gemm_ops) else 0.0
            fused_host = flops / rate if flops and rate > 0 else gemm_host
            cost["matmul_rate_gflops"] = round(rate, 2) if rate else None
            cost["matmul_ops_measured"] = len(gemm_ops)
        host_keep = min(fused_host / host_ns, 1.0) if host_ns > 0 else 1.0
        lost_host = ctx.per_step("launch.attention") * (1.0 - host_keep)
        # Device: the chain's kernels become one fused kernel: its FLOPs at the tensor-core (16-bit)
        # or FP32 peak times fused_efficiency, or its Q/K/V/output bytes at the bandwidth if longer.
        gpu = ctx.trace.gpu
        kernels = gpu[found.kernel_in_chain] if len(gpu) else gpu
        in_win = ctx.in_windows(kernels["ts"].to_numpy(np.int64)) if len(kernels) else np.zeros(0, bool)
        kernels = kernels[in_win]
        is_gemm = found.kernel_is_gemm[found.kernel_in_chain][in_win] if len(gpu) else np.zeros(0, bool)
        chain_dev = float(kernels["dur"].sum()) if len(kernels) else 0.0
        gemm_dev = float(kernels["dur"].to_numpy()[is_gemm].sum()) if len(kernels) else 0.0
        fused_dev = gemm_dev
        if spec is not None and flops and chain_dev > 0:
            half = bool(kernels["name"].astype(str).str.contains(HALF_KERNEL).any())
            peak = spec.tensor_tflops if half and spec.tensor_tflops else spec.fp32_tflops
            flops_ns = flops / (peak * 1e12 * opts.fused_efficiency) * 1e9
            fused_dev = max(flops_ns, io_bytes / (spec.bandwidth_gbs * 1e9) * 1e9)
            cost["peak_tflops_used"] = peak
            cost["peak_is"] = "16-bit tensor core" if half and spec.tensor_tflops else "FP32"
        dev_keep = min(fused_dev / chain_dev, 1.0) if chain_dev > 0 else 1.0
        lost_dev = ctx.per_step("compute.attention") * (1.0 - dev_keep)
        lost = lost_host + lost_dev
        if lost / ctx.step_ns < opts.min_share:
            return []
        share = (ctx.per_step("compute.attention") + ctx.per_step("launch.attention")) / ctx.step_ns
        shapes = _shapes(chains)
        inside = sorted({str(v) for v in chains["inside"] if v})
        device = ctx.trace.meta.devices[0].name if ctx.trace.meta.devices else None
        dispatch = _fused_kernel(ctx) if ctx.has_device else "_scaled_dot_product_flash_attention_for_cpu (CPU)"
        title = (
            f"Attention computed unfused ({len(chains) / n_steps:.0f} bmm -> softmax -> bmm chains per step, "
            f"{share:.0%} of the step{', S=' + str(shapes[0]['seq_k']) if shapes else ''}): "
            f"scaled_dot_product_attention saves ~{ms(lost)} ms per step"
        )
        fix = "out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # dispatches to " + dispatch
        if "multi_head_attention" in inside:
            fix += "; nn.MultiheadAttention: call with need_weights=False (its fused path)"
        if "math_fallback" in inside:
            fix += "; SDPA fell back to its math path here: check dtype, head_dim and mask against the fused kernels"
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=lost,
                confidence="medium",
                confidence_reason="fused attention costed from the chain's FLOPs (at the GPU's peak times "
                f"fused_efficiency={opts.fused_efficiency}, or on a CPU trace at the rate its other matmuls ran) "
                "and the bytes of Q/K/V/output; without shapes, as the chain's own matmul time",
                evidence={
                    "chains_per_step": round(len(chains) / n_steps, 1),
                    "attention_share_of_step": round(share, 3),
                    "chain_host_ms_per_step": ms(host_ns / n_steps),
                    "gemm_op_host_ms_per_step": ms(gemm_host / n_steps),
                    "chain_kernel_ms_per_step": ms(chain_dev / n_steps),
                    "gemm_kernel_ms_per_step": ms(gemm_dev / n_steps),
                    "fused_kernel_estimate_ms_per_step": ms(fused_dev / n_steps),
                    "fused_op_host_estimate_ms_per_step": ms(fused_host / n_steps),
                    "fused_cost": cost,
                    "shapes": shapes,
                    "inside": inside,
                    "backward_chains_per_step": round(float(chains["backward"].sum()) / n_steps, 1),
                    "fused_attention_ops_seen": found.fused_ops,
                    "device": device,
                    "fused_kernel_on_this_device": dispatch,
                    "top_kernels": top_names(kernels, n_steps) if len(kernels) else [],
                },
                fix=fix,
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                time_ranges_ns=top_ranges(chains["ts"].to_numpy(np.int64), chains["end"].to_numpy(np.int64)),
                claimed={"compute.attention": lost_dev, "launch.attention": lost_host},
            )
        ]


def _shapes(chains: pd.DataFrame) -> list[dict[str, Any]]:
    """Distinct recorded (batch*heads, S_q, S_k, head dim) with the score matrix's size, most frequent first."""
    known = chains[chains["seq_k"] > 0]
    if len(known) == 0:
        return []
    cols = ["batch_heads", "seq_q", "seq_k", "head_dim"]
    counts = known.groupby(cols).size().sort_values(ascending=False).head(3)
    out = []
    for key, n in counts.items():
        bh, sq, sk, d = (int(v) for v in key)
        out.append(
            {
                "batch_heads": bh,
                "seq_q": sq,
                "seq_k": sk,
                "head_dim": d,
                "chains": int(n),
                "score_matrix_elements": bh * sq * sk,
                "score_matrix_mib_fp32": round(bh * sq * sk * 4 / 2**20, 2),
                "gflop_per_chain": round(4 * bh * sq * sk * d / 1e9, 3) if d > 0 else None,
            }
        )
    return out


def _fused_kernel(ctx: RankContext) -> str:
    """Which kernel SDPA picks on this GPU (PyTorch 2.x dispatch order: flash, memory-efficient, math)."""
    cc = None
    for d in ctx.trace.meta.devices:
        try:
            cc = float(d.compute_capability) if d.compute_capability else None
        except ValueError:
            cc = None
        if cc is not None:
            break
    if cc is None:
        return "flash attention (FP16/BF16, sm80+) or the memory-efficient kernel"
    if cc >= 8.0:
        return f"flash attention with FP16/BF16 inputs (sm{int(cc * 10)}); the memory-efficient kernel in FP32"
    return f"the memory-efficient kernel (flash attention needs sm80+; this GPU is sm{int(cc * 10)})"
