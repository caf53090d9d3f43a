"""What ``nn.DataParallel`` does on the host every step: its forward range and its per-step phases.

``nn.DataParallel.forward`` records a ``DataParallel.forward`` range (PyTorch 1.8+); with
``with_stack=True`` the Python frames of ``torch/nn/parallel`` say which phase ran:
``replicate`` (parameters broadcast to every device), ``scatter`` / ``scatter_kwargs``
(the batch split), ``parallel_apply`` (the replicas, one Python thread each) and
``gather`` (the outputs copied back to the first device). Under DistributedDataParallel
each process holds its own replica and its own shard of the batch, so replicate, scatter
and gather are not done per step at all; ``parallel_apply``'s work stays (each process
runs one replica) and the gradient reduction (``reduce_add_coalesced`` in DataParallel's
backward, an all-reduce under DDP) stays too.
"""

from __future__ import annotations

import re

import numpy as np

from mlprof.trace.model import Trace
from mlprof.trace.vocabulary import name_mask

DP_FORWARD = re.compile(r"^DataParallel\.forward$")
"""The range ``nn.DataParallel.forward`` records around every call (PyTorch 1.8+)."""
DP_PHASES = re.compile(r"torch/nn/parallel/(replicate|scatter_gather|parallel_apply|comm)\.py\(\d+\): (\w+)")
"""Python frames of DataParallel's per-step work (``with_stack=True``): replicate, scatter, parallel_apply, gather."""
DP_OVERHEAD = re.compile(
    r"torch/nn/parallel/(?:replicate\.py\(\d+\): \w+|scatter_gather\.py\(\d+\): \w+"
    r"|comm\.py\(\d+\): (?:broadcast\w*|scatter|gather))$"
)
"""The phases DDP does not do per step: replicate, scatter/gather and comm's broadcast/scatter/gather
(not ``reduce_add*``: the gradient reduction, which DDP does as an all-reduce)."""


def overhead_spans(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Host spans (absolute ns) of the replicate / scatter / gather frames of every DataParallel call."""
    host = trace.host
    if len(host) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    hit = name_mask(host["name"], DP_OVERHEAD)
    return host["ts"].to_numpy(np.int64)[hit], host["end"].to_numpy(np.int64)[hit]
