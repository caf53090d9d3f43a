"""Whether a trace shows PyTorch at all: advice in PyTorch terms only where there is PyTorch.

A Kineto trace from ``torch.profiler`` always has ``cpu_op`` ranges (``aten::...``) or
``ProfilerStep#N``; an Nsight Systems export of a PyTorch job has them as NVTX ranges when
recorded with ``emit_nvtx``/``mlprof.range``, or Python/torch names in its host ranges.
A CUDA, Fortran or C++ application's export has none of these: telling its author to use
``DataLoader(pin_memory=True)`` or ``.item()`` less is advice for another program.
"""

from __future__ import annotations

import re

from mlprof.trace.memo import cached
from mlprof.trace.model import Trace
from mlprof.trace.vocabulary import name_mask

PYTORCH_NAMES = re.compile(
    r"^aten::|^ProfilerStep#|^Optimizer\.|^autograd::|^c10d::|^nccl:|DataLoader|^torch/|torch\.nn|^Torch-Compiled"
)
PYTORCH_CATS = ("cpu_op", "python_function", "Operator")


def is_pytorch(trace: Trace) -> bool:
    """True when the trace has PyTorch ops, step markers or Python frames of torch."""
    return cached(trace.host, "is_pytorch", lambda: _is_pytorch(trace))


def _is_pytorch(trace: Trace) -> bool:
    host = trace.host
    if len(host) == 0:
        return False
    if host["cat"].isin(PYTORCH_CATS).any():
        return True
    return bool(name_mask(host["name"], PYTORCH_NAMES).any())
