"""AMP001: matmuls and convolutions run in FP32 on a GPU with tensor cores."""

from __future__ import annotations

from mlprof.rules._kernels import kernel_facts, top_names
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option


class Fp32MatmulOptions(RuleOptions, frozen=True):
    """AMP001's thresholds (``[tool.mlprof.rules.AMP001]``, ``mlprof explain AMP001``)."""

    min_share: float = common("min_share", 0.05)
    local_speedup: float = option(
        2.0, "x (>= 1)", 1.0, 64.0, "assumed speedup of FP32 matmul/conv kernels once run in TF32/BF16 on tensor cores"
    )


class Fp32Matmul(Rule[Fp32MatmulOptions]):
    id = "AMP001"
    options_class = Fp32MatmulOptions
    name = "fp32-matmul"
    category = "precision"
    summary = "FP32 matmul/convolution kernels on a GPU with tensor cores (no AMP/TF32)"
    claims = ("compute.gemm_fp32",)
    doc = RuleDoc(
        what="Matrix multiplications and convolutions run as FP32 SIMT kernels (`sgemm`, "
        "`scudnn`, `implicit_convolve_sgemm`) although the GPU has tensor cores.",
        why="Tensor cores run FP16/BF16 (and TF32 on Ampere and later) matmuls many times faster "
        "than FP32 SIMT units (V100: 125 vs 15.7 TFLOPS peak). Matmul-heavy models typically gain "
        "1.5-2x end to end from mixed precision.",
        detection="Kernel names classified as matmul/convolution with FP32 markers and no "
        "tensor-core markers (`h884`, `s1688`, `16816`, `tf32`, `bf16`, `xmma`, `sm80_`...), on a "
        "device whose compute capability is 7.0 or newer (or a known tensor-core GPU in the "
        "spec table). The time lost is the FP32 matmul time on the critical path "
        "(`compute.gemm_fp32`) times `1 - 1/local_speedup` (default 2x, the conservative end of "
        "what AMP gives on matmuls, well below the peak ratio).",
        fix="Run the forward pass under autocast. On Ampere and later (compute capability 8.0+: "
        "A100, H100, L4, RTX 30/40) use BF16 and allow TF32 for what stays FP32; on Volta/Turing "
        "(V100, T4, RTX 20) there is no BF16 or TF32: use FP16 with a GradScaler. The finding's fix "
        "names the one for the GPU in the trace:\n\n"
        "    torch.backends.cuda.matmul.allow_tf32 = True\n"
        "    torch.backends.cudnn.allow_tf32 = True\n"
        "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "        loss = model(x).loss\n"
        "    # Volta/Turing: scaler = torch.cuda.amp.GradScaler()\n"
        "    #   with torch.autocast('cuda', dtype=torch.float16): loss = model(x).loss\n"
        "    #   scaler.scale(loss).backward(); scaler.step(opt); scaler.update()",
        false_alarms="Models that need FP32 for accuracy (some scientific models) or layers kept "
        "in FP32 on purpose. Matmuls too small for tensor cores to matter. Kernel names from "
        "unknown libraries may be misclassified: check the kernels listed.",
    )

    def check(self, ctx: RankContext, opts: Fp32MatmulOptions) -> list[Finding]:
        if not _has_tensor_cores(ctx):
            return []
        exposed = ctx.per_step("compute.gemm_fp32")
        lost = exposed * (1.0 - 1.0 / max(opts.local_speedup, 1.0))
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        k = kernel_facts(ctx).kernels
        fp32 = k[k["klass"] == "gemm_fp32"]
        tensor = k[k["klass"] == "gemm_tensor"]
        n_steps = max(ctx.n_windows, 1)
        device = ctx.trace.meta.devices[0].name if ctx.trace.meta.devices else "unknown"
        arch, fix, advice = _precision_advice(ctx)
        spec = ctx.gpu_spec
        ratio = round(spec.tensor_tflops / spec.fp32_tflops, 1) if spec and spec.tensor_tflops else None
        return [
            self.finding(
                ctx,
                title=f"Matmuls run in FP32 without tensor cores ({ms(exposed)} ms per step on {device}): "
                f"{advice} saves ~{ms(lost)} ms",
                time_lost_ns_per_step=lost,
                confidence="medium",
                confidence_reason="kernel precision read from names; "
                f"assumed {opts.local_speedup:.1f}x on those kernels"
                + (f" (the peak tensor-core/FP32 ratio of this GPU is {ratio}x)" if ratio else ""),
                evidence={
                    "fp32_matmul_ms_per_step": ms(exposed),
                    "fp32_matmul_kernels_per_step": round(len(fp32) / n_steps, 1),
                    "tensor_core_kernels_per_step": round(len(tensor) / n_steps, 1),
                    "device": device,
                    "architecture": arch,
                    "assumed_speedup_on_fp32_matmuls": opts.local_speedup,
                    "peak_tensor_core_to_fp32_ratio": ratio,
                    "top_kernels": top_names(fp32, n_steps),
                },
                fix=fix,
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                claimed={"compute.gemm_fp32": lost},
            )
        ]


def _compute_capability(ctx: RankContext) -> float | None:
    for d in ctx.trace.meta.devices:
        if d.compute_capability:
            try:
                return float(d.compute_capability)
            except ValueError:
                pass
    return None


def _precision_advice(ctx: RankContext) -> tuple[str, str, str]:
    """(architecture, fix, short advice) for this GPU: FP16 + GradScaler before Ampere, BF16/TF32 from it."""
    cc = _compute_capability(ctx)
    spec = ctx.gpu_spec
    ampere = cc >= 8.0 if cc is not None else bool(spec and spec.tf32)
    if ampere:
        arch = f"sm{round(cc * 10)}" if cc is not None else (spec.name if spec else "Ampere or later")
        return (
            f"{arch} (Ampere or later: BF16 and TF32 tensor cores)",
            "torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True; "
            "with torch.autocast('cuda', dtype=torch.bfloat16): ...",
            "BF16 autocast / TF32",
        )
    arch = f"sm{round(cc * 10)}" if cc is not None else (spec.name if spec else "pre-Ampere")
    return (
        f"{arch} (Volta/Turing: FP16 tensor cores only, no BF16 or TF32)",
        "scaler = torch.cuda.amp.GradScaler(); with torch.autocast('cuda', dtype=torch.float16): loss = ...; "
        "scaler.scale(loss).backward(); scaler.step(optimizer); scaler.update()",
        "FP16 autocast + GradScaler",
    )


def _has_tensor_cores(ctx: RankContext) -> bool:
    for d in ctx.trace.meta.devices:
        if d.compute_capability:
            try:
                if float(d.compute_capability) >= 7.0:
                    return True
            except ValueError:
                pass
    spec = ctx.gpu_spec
    return spec is not None and spec.tensor_tflops is not None
