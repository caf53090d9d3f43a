"""What each kernel is (matmul, memory-bound, communication...) and where it came from.

The fusion and precision rules need to know which kernels are memory-bound
(elementwise, norm, softmax, optimizer per-parameter updates), which are matmuls or
convolutions and in what precision, and which kernels a given host range launched.
Classification is by kernel name, evaluated once per distinct name; the name
patterns were checked against the cuDNN/cuBLAS/ATen names in the real traces under
``../shared/external_traces`` (V100, RTX 2080 Ti, B200, MI300X).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd

from mlprof.analyzers.intervals import covered, merge
from mlprof.trace.build import COMM_KERNEL
from mlprof.trace.memo import cached
from mlprof.trace.vocabulary import names_matching

KERNEL_CLASSES: tuple[str, ...] = (
    "comm",
    "gemm_fp32",
    "gemm_tensor",
    "gemm",
    "attention",
    "compiled",
    "memory_bound",
    "other",
)
"""``gemm`` is a matmul/convolution whose precision the name does not tell."""

_ATTENTION = re.compile(r"flash|fmha|attention|sdpa|attn", re.IGNORECASE)
_COMPILED = re.compile(r"^triton_|^(void )?triton|cutlass_tensorop_fused|CompiledFxGraph", re.IGNORECASE)
_GEMM = re.compile(
    r"gemm|cublas|cutlass|xmma|scudnn|hcudnn|cudnn.*(conv|engine|winograd|fprop|dgrad|wgrad)|"
    r"implicit_convolve|winograd|convolve|conv2d|conv_|dgrad|wgrad|nvjet|_mm_|matmul|Cijk_",
    re.IGNORECASE,
)
_TENSOR = re.compile(
    r"h884|s884|h1688|s1688|i8816|16816|h16816|s16816|tf32|bf16|f16|fp16|half|hmma|tensorop|wmma|"
    r"xmma|sm80_|sm90_|sm100_|nvjet|ampere_h|turing_h|volta_h|_h\d+gemm|hgemm|hcudnn|"
    r"Alik_Bljk|MT\d+x\d+x\d+_MI",
    re.IGNORECASE,
)
_FP32 = re.compile(r"sgemm|scudnn|implicit_convolve_sgemm|<float|\bfloat\b|_fp32|gemmSN|gemv2T|gemv2N", re.IGNORECASE)
_MEMORY_BOUND = re.compile(
    r"elementwise|reduce_kernel|layer_norm|LayerNorm|layernorm|rms_?norm|softmax|batch_norm|bn_fw|bn_bw|"
    r"welford|dropout|gelu|relu|silu|threshold|clamp|Fill|copy|cat_|CatArray|index|where|pow|"
    r"multi_tensor_apply|adam|sgd|\blamb\b|addcmul|addcdiv|sqrt|norm_kernel",
    re.IGNORECASE,
)
_FOREACH = re.compile(r"multi_tensor_apply|fused_adam|FusedAdam|fused_sgd|_fused_", re.IGNORECASE)
"""Optimizer kernels that already update many parameters per launch."""


def _found(pattern: re.Pattern[str], name: str) -> bool:
    """``pattern.search(name) is not None`` for the case-insensitive patterns above (ASCII, no uppercase escape),
    several times faster on an ASCII name: its lowercase form searched with the pattern's lowercase twin (no
    IGNORECASE flag, so ``re`` skips ahead to where an alternative can start: kernel names are ~150 characters
    and the patterns have up to ~40 alternatives), the same answer as ASCII letters fold only to each other.
    Any other name is searched with the pattern itself (Unicode folding: the Kelvin sign, the long s...)."""
    if name.isascii():
        return _lowercase_twin(pattern).search(name.lower()) is not None
    return pattern.search(name) is not None


@functools.cache
def _lowercase_twin(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """``pattern`` lowercased, without IGNORECASE (compiled on first use); for :func:`_found` only."""
    text = pattern.pattern
    if not text.isascii() or re.search(r"\\[A-Z]", text) or pattern.flags & re.IGNORECASE == 0:
        raise ValueError(f"not a case-insensitive ASCII pattern without uppercase escapes: {text!r}")
    return re.compile(text.lower())


@functools.lru_cache(maxsize=1 << 16)
def classify_name(name: str, is_comm: bool = False) -> str:
    if is_comm:
        return "comm"
    if _found(_COMPILED, name):
        return "compiled"
    if _found(_ATTENTION, name):
        return "attention"
    if _found(_GEMM, name):
        if _found(_TENSOR, name):
            return "gemm_tensor"
        if _found(_FP32, name):
            return "gemm_fp32"
        return "gemm"
    if _found(_MEMORY_BOUND, name):
        return "memory_bound"
    return "other"


@functools.lru_cache(maxsize=1 << 16)
def _class_of(name: str) -> str:
    return classify_name(name, bool(COMM_KERNEL.search(name)))


def uses_tensor_cores(names: pd.Series) -> np.ndarray:
    """Whether each kernel name is a tensor-core kernel's (HMMA/WMMA/xmma, ``h16816``-style tile names,
    bf16/fp16/tf32 GEMMs, sm80+/nvjet kernels): the names ``gemm_tensor`` is judged by, for any kernel."""
    # A categorical column is judged on its categories as it is: ``astype(str)`` built one Python string
    # per row first (11% of a rank's analysis on the 1,024-rank job); the regex answer is cached per name
    # across the ranks of a job (5% more).
    cats = names if isinstance(names.dtype, pd.CategoricalDtype) else names.astype(str).astype("category")
    table = np.array([_is_tensor_core_name(str(c)) for c in cats.cat.categories] + [False], dtype=bool)
    return table[cats.cat.codes.to_numpy()]


@functools.lru_cache(maxsize=1 << 16)
def _is_tensor_core_name(name: str) -> bool:
    return _found(_TENSOR, name)


def kernel_classes(gpu: pd.DataFrame) -> np.ndarray:
    """Class of every row of ``gpu`` (non-kernel rows get ``""``), classified once per distinct name.

    Computed once per ``gpu`` table (read-only result).
    """
    return cached(gpu, "kernel_classes", lambda: _kernel_classes(gpu))


def _kernel_classes(gpu: pd.DataFrame) -> np.ndarray:
    out = np.full(len(gpu), "", dtype=object)
    if len(gpu) == 0:
        return out
    names = gpu["name"].astype("category")
    categorical: pd.Categorical = names.array
    table = np.array([_class_of(str(c)) for c in categorical.categories.tolist()] + [""], dtype=object)
    codes = categorical.codes
    kernels = (gpu["kind"] == "kernel").to_numpy()
    out[kernels] = table[codes[kernels]]
    return out


def is_foreach_optimizer_kernel(names: pd.Series) -> np.ndarray:
    if isinstance(names.dtype, pd.CategoricalDtype):
        return np.asarray(names_matching(names, _FOREACH))
    cats = names.astype("category")
    hits = [c for c in cats.cat.categories if _FOREACH.search(str(c))]
    return np.asarray(cats.isin(hits))


MISALIGNED_GEMM = re.compile(r"(?:tensorop|hmma|imma|[hsi]\d{3,5}gemm|bf16).*_align[12](?:\b|_|>|$)", re.IGNORECASE)
"""Tensor-core GEMM kernels built for operands aligned to 1 or 2 elements: a dimension (or leading
dimension) is not a multiple of 8 (16-bit), 4 (TF32) or 16 (8-bit), so the vectorised loads the
fast variants need cannot be used (SHAPE001; its fix in the replay scales these kernels)."""


def is_misaligned_gemm(names: pd.Series) -> np.ndarray:
    """Which kernel names are misaligned tensor-core GEMMs (:data:`MISALIGNED_GEMM`), once per distinct name."""
    if len(names) == 0:
        return np.zeros(0, dtype=bool)
    cats = names.astype("category")
    hits = [c for c in cats.cat.categories if _is_misaligned_name(str(c))]
    return np.asarray(cats.isin(hits))


@functools.lru_cache(maxsize=1 << 16)
def _is_misaligned_name(name: str) -> bool:
    return _found(MISALIGNED_GEMM, name)


def launch_times(gpu: pd.DataFrame, runtime: pd.DataFrame) -> np.ndarray:
    """Host time at which each GPU row was launched (its runtime call's start), else its own start.

    Joined on the CUPTI correlation id, which Kineto and Nsight both record. Computed once
    per pair of tables (read-only result).
    """
    return cached(gpu, "launch_times", lambda: _launch_times(gpu, runtime), runtime)


def _launch_times(gpu: pd.DataFrame, runtime: pd.DataFrame) -> np.ndarray:
    ts = gpu["ts"].to_numpy(np.int64).copy()
    if len(runtime) == 0 or len(gpu) == 0:
        return ts
    all_corr = runtime["correlation"].to_numpy(np.int64)
    positive = all_corr > 0
    # The first call of each correlation id, sorted by id (what drop_duplicates then a sort gave).
    rt_corr, first = np.unique(all_corr[positive], return_index=True)
    rt_ts = runtime["ts"].to_numpy(np.int64)[positive][first]
    corr = gpu["correlation"].to_numpy(np.int64)
    pos = np.clip(np.searchsorted(rt_corr, corr), 0, max(len(rt_corr) - 1, 0))
    found = (corr > 0) & (len(rt_corr) > 0)
    if len(rt_corr):
        found &= rt_corr[pos] == corr
        ts[found] = rt_ts[pos[found]]
    return ts


def in_windows(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each point lies in one of the (possibly overlapping) ``[start, end)`` windows."""
    s, e = merge(starts.astype(np.int64), ends.astype(np.int64))
    return covered(s, e, points)


MAX_CHAIN_GAP_NS = 1_000_000
"""A gap longer than this between two kernels (a sync, a data wait) ends a chain: no compiler fuses across it."""


def chain_savings(
    ts: np.ndarray,
    dur: np.ndarray,
    stream_key: np.ndarray,
    is_member: np.ndarray,
    max_gap_ns: int = MAX_CHAIN_GAP_NS,
) -> tuple[np.ndarray, np.ndarray]:
    """Time a fusing compiler would save on runs of consecutive memory-bound kernels.

    Within one stream, kernels are taken in start order; a chain is a maximal run of
    member kernels not interrupted by a non-member kernel or by a gap over ``max_gap_ns``. A fused kernel reads the
    chain's inputs once and writes its output once, about the memory traffic of the
    chain's largest kernel, so the estimate of its time is that kernel's duration and
    the saving is ``sum(dur) - max(dur)`` per chain. Returns (per-kernel saving share
    in ns, chain id per kernel (-1 for non-members)), inputs aligned to the same rows.
    """
    n = len(ts)
    saving = np.zeros(n, dtype=np.float64)
    chain_id = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return saving, chain_id
    order = np.lexsort((ts, stream_key))
    member = is_member[order]
    key = stream_key[order]
    d = dur[order].astype(np.float64)
    start_new = np.ones(n, dtype=bool)
    t = ts[order]
    gap = np.zeros(n, dtype=np.int64)
    gap[1:] = t[1:] - (t[:-1] + dur[order][:-1])
    start_new[1:] = (key[1:] != key[:-1]) | ~member[:-1] | (gap[1:] > max_gap_ns)
    run = np.cumsum(start_new) - 1
    run_m = run[member]
    if len(run_m) == 0:
        return saving, chain_id
    uniq, inverse = np.unique(run_m, return_inverse=True)
    total = np.bincount(inverse, weights=d[member])
    longest = np.zeros(len(uniq))
    np.maximum.at(longest, inverse, d[member])
    count = np.bincount(inverse)
    chain_saving = np.where(count >= 2, total - longest, 0.0)
    # Spread each chain's saving over its kernels in proportion to their duration.
    share = np.where(total[inverse] > 0, d[member] / np.maximum(total[inverse], 1), 0.0)
    out_saving = np.zeros(n)
    out_saving[np.flatnonzero(member)] = chain_saving[inverse] * share
    out_chain = np.full(n, -1, dtype=np.int64)
    out_chain[np.flatnonzero(member)] = np.where(count[inverse] >= 2, inverse, -1)
    saving[order] = out_saving
    chain_id[order] = out_chain
    return saving, chain_id
