"""Names that mean something in a trace, in one place.

Runtime and op names differ between CUDA and HIP and across PyTorch versions; step
detection, every analyzer and every rule that needs "is this a sync call?" asks here,
so a new name is added once.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import numpy as np

from mlprof.trace.memo import cached

if TYPE_CHECKING:  # pandas is imported where a Series is made: the trace reader imports this module
    import pandas as pd

SYNC_RUNTIME = re.compile(
    r"^(cuda|hip)(DeviceSynchronize|StreamSynchronize|EventSynchronize|Memcpy|MemcpyWithStream|Memcpy2D|MemcpyDtoH)$"
    r"|^cu(StreamSynchronize|CtxSynchronize|EventSynchronize|MemcpyDtoH|MemcpyHtoD)(_v2)?$"
)
"""Host calls that block until the device has finished (blocking copies included)."""

SYNC_OPS = re.compile(r"^aten::(item|_local_scalar_dense|is_nonzero|nonzero|tolist)$")
"""ATen ops that read a device value on the host and therefore wait for the queue."""

LAUNCH_RUNTIME = re.compile(
    r"^(cuda|hip)(LaunchKernel|LaunchKernelExC|LaunchCooperativeKernel|ExtModuleLaunchKernel|ModuleLaunchKernel"
    r"|MemcpyAsync|MemsetAsync|Memset|GraphLaunch|LaunchHostFunc)(_v2|_ptsz)?$"
    r"|^cu(LaunchKernel|LaunchKernelEx|LaunchCooperativeKernel|GraphLaunch|MemcpyAsync|MemsetD8Async|MemsetD32Async)"
    r"(_v2|_ptsz)?$"
    r"|^hipModuleLaunchKernel$|^hipExtLaunchKernel$"
)
"""Host calls that put work on a device queue."""

ALLOC_RUNTIME = re.compile(
    r"^(cuda|hip)(Malloc|Free|MallocAsync|FreeAsync|MallocHost|FreeHost|HostAlloc|ExtMallocWithFlags)(_v2)?$"
    r"|^cu(MemAlloc|MemFree|MemAllocAsync|MemFreeAsync|MemHostAlloc|MemFreeHost)(_v2)?$"
)
"""Device allocator calls; ``cudaFree`` also waits for the device, so steady-state calls cost twice."""

DATALOADER = re.compile(r"DataLoader.*__next__|^enumerate\(DataLoader\)")
"""Host ranges that fetch the next batch."""

PROFILER_STEP = re.compile(r"^ProfilerStep#(\d+)$")
"""What ``prof.step()`` records; the group is the step number."""

OPTIMIZER_STEP = re.compile(r"^Optimizer\.step#|^Optimizer\.step$|^optimizer\.step$")
"""``torch.optim`` step ranges: the end of a typical training iteration."""

SHAPE_OPS = re.compile(
    r"^aten::(bmm|baddbmm|matmul|einsum|mm|addmm|linear|softmax|_softmax|_safe_softmax|_softmax_backward_data"
    r"|scaled_dot_product_attention|_scaled_dot_product_\w+|_native_multi_head_attention"
    r"|convolution|_convolution|conv[123]d|cudnn_convolution)$"
)
"""Ops whose ``Input Dims`` (``record_shapes=True``) the trace model keeps: matmuls, softmax, attention, convs."""

DISPATCH_CATS = ("cpu_op", "Operator")
"""Host categories whose ranges mean the host is busy running framework code."""


def names_matching(series: pd.Series, pattern: re.Pattern[str]) -> pd.Series:
    """Boolean mask of a categorical name column, evaluating the regex once per distinct name.

    The per-name answers are kept with the column's categories (which every filtered
    copy of the table shares), and the mask is a lookup by category code.
    """
    import pandas as pd

    return pd.Series(name_mask(series, pattern), index=series.index, name=series.name, copy=False)


def name_mask(series: pd.Series, pattern: re.Pattern[str]) -> np.ndarray:
    """:func:`names_matching` as a numpy array (for selecting from numpy columns of the same table)."""
    categorical: pd.Categorical = series.array
    table = category_hits(categorical.categories, pattern)
    mask: np.ndarray = table[categorical.codes]
    return mask


def category_hits(categories: pd.Index, pattern: re.Pattern[str]) -> np.ndarray:
    """Whether ``pattern`` matches each category, plus a final ``False`` (what code -1, a missing name, reads)."""

    def compute() -> np.ndarray:
        return np.array([_matches(pattern, c) for c in categories.tolist()] + [False], dtype=bool)

    return cached(categories, ("names_matching", pattern), compute)


@functools.lru_cache(maxsize=1 << 18)
def _matches(pattern: re.Pattern[str], name: str) -> bool:
    """Cached per (pattern, name): the symbol tables of many ranks of a job share most names."""
    return pattern.search(name) is not None
