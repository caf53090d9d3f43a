"""The kernel classes' name patterns searched the fast way (``kernels._found``) give ``pattern.search``'s answer.

The truth is the case-insensitive pattern itself, searched as written; the names are the real kernel names of
traces from V100, B200 and MI300X, the same names in other cases, and random names made of the patterns' own
fragments (in random case, with separators and non-ASCII letters that Python's case folding matches to ASCII
ones: the Kelvin sign for ``k``, the long s for ``s``, the dotted capital I for ``i``).
"""

from __future__ import annotations

import random

import pytest

from mlprof.analyzers import kernels
from mlprof.analyzers.kernels import _found, classify_name
from mlprof.trace.loader import load_trace

from conftest import external

PATTERNS = [
    kernels._ATTENTION,
    kernels._COMPILED,
    kernels._GEMM,
    kernels._TENSOR,
    kernels._FP32,
    kernels._MEMORY_BOUND,
    kernels.MISALIGNED_GEMM,
]
TRACES = [
    "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz",
    "AMD-AGI__TraceLens/b200/eager_trace.json.gz",
    "AMD-AGI__TraceLens/mi300/resnet_act_checkpoint.json.gz",
]
FRAGMENTS = [
    *("gemm", "sgemm", "hgemm", "_h1688gemm", "cudnn", "scudnn", "conv", "winograd", "xmma", "tensorop", "hmma"),
    *("h16816", "s1688", "i8816", "tf32", "bf16", "fp16", "half", "sm80_", "sm90_", "nvjet", "Cijk_", "Alik_Bljk"),
    *("MT64x64x16_MI", "_align1", "_align2", "_align4", "<float", " float ", "float", "_fp32", "gemv2T", "flash"),
    *("fmha", "attention", "sdpa", "triton_", "void triton", "cutlass_tensorop_fused", "CompiledFxGraph"),
    *("elementwise", "reduce_kernel", "LayerNorm", "rms_norm", "softmax", "batch_norm", "lamb", " lamb ", "copy"),
    *("at::native::", "<", ">", "(", ")", "_", " ", "::", "kernel", "1", "8", "x", "void ", "\n"),
    *("\u212a", "\u017f", "\u0130", "\u0131", "é", "ſgemm", "hmma_\u212aernel", "flaſh", "ATTENT\u0130ON"),
]


def _truth(pattern: object, name: str) -> bool:
    return pattern.search(name) is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize("relative", TRACES)
def test_real_kernel_names_in_any_case(relative: str) -> None:
    trace = load_trace(external(relative))
    names = [str(n) for n in trace.gpu["name"].astype(str).unique()]
    assert len(names) > 20
    for name in names:
        for variant in (name, name.upper(), name.lower(), name.swapcase()):
            for pattern in PATTERNS:
                assert _found(pattern, variant) == _truth(pattern, variant), (pattern.pattern, variant)


def test_random_names_from_the_patterns_fragments() -> None:
    rng = random.Random(26)
    hits = 0
    non_ascii = 0
    for _ in range(20_000):
        parts = rng.choices(FRAGMENTS, k=rng.randint(1, 8))
        name = "".join(p.upper() if rng.random() < 0.3 else p for p in parts)
        non_ascii += not name.isascii()
        for pattern in PATTERNS:
            found = _found(pattern, name)
            assert found == _truth(pattern, name), (pattern.pattern, name)
            hits += found
    assert hits > 20_000 and non_ascii > 2_000  # both answers and both paths, many times


def test_non_ascii_names_fold_as_python_folds_them() -> None:
    """Where lowercasing would not give the pattern's answer, the pattern itself is asked."""
    assert _found(kernels._FP32, "\u017fgemm") and "\u017fgemm".lower() == "\u017fgemm"  # long s folds to s
    assert _found(kernels._TENSOR, "HMMA_\u212a") and _found(kernels._GEMM, "\u212a_cublas")
    assert classify_name("volta_\u017fgemm_128x64_nn") == "gemm_fp32"
    assert classify_name("volta_h884gemm_128x64_nn") == "gemm_tensor"


def test_only_case_insensitive_ascii_patterns_are_taken() -> None:
    import re

    with pytest.raises(ValueError):
        _found(re.compile(r"\Dgemm", re.IGNORECASE), "xgemm")
    with pytest.raises(ValueError):
        _found(re.compile(r"gemm"), "GEMM")
