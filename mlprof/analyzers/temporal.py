"""Trace-level GPU time split and communication/computation overlap.

These reproduce the definitions of HTA's ``get_temporal_breakdown`` and
``get_comm_comp_overlap`` so the two tools can be checked against each other:

* the window is the GPU activity span, first device activity start to last end;
* ``idle`` = span minus the union of all device activity (kernels, memcpy, memset);
* ``compute`` = union of non-communication kernels;
* ``non_compute`` = span - idle - compute (communication and copies not under compute);
* ``comm_comp_overlap`` = |comm ∩ compute| / |comm|: the share of communication
  time hidden under compute.

Unlike HTA, device-side ``cuda_sync`` events are not counted as kernels, and both
``ncclKernel_*`` and ``ncclDevKernel_*`` are communication.
"""

from __future__ import annotations

import msgspec
import numpy as np

from mlprof.analyzers.intervals import intersect_total, total
from mlprof.trace.model import Trace


class TemporalBreakdown(msgspec.Struct, frozen=True):
    """HTA's temporal breakdown of a trace's span: idle, compute and non-compute device time."""

    span_ns: int
    idle_ns: int
    compute_ns: int
    non_compute_ns: int
    comm_ns: int
    comm_overlapped_ns: int

    @property
    def idle_pct(self) -> float:
        return 100.0 * self.idle_ns / self.span_ns if self.span_ns else 0.0

    @property
    def compute_pct(self) -> float:
        return 100.0 * self.compute_ns / self.span_ns if self.span_ns else 0.0

    @property
    def non_compute_pct(self) -> float:
        return 100.0 * self.non_compute_ns / self.span_ns if self.span_ns else 0.0

    @property
    def comm_comp_overlap_pct(self) -> float | None:
        """None when the trace has no communication (HTA returns NaN there)."""
        return 100.0 * self.comm_overlapped_ns / self.comm_ns if self.comm_ns else None


def temporal_breakdown(trace: Trace) -> TemporalBreakdown:
    gpu = trace.gpu[trace.gpu["kind"] != "sync"]
    if len(gpu) == 0:
        return TemporalBreakdown(0, 0, 0, 0, 0, 0)
    starts = gpu["ts"].to_numpy(np.int64)
    ends = gpu["end"].to_numpy(np.int64)
    span = int(ends.max() - starts.min())
    busy = total(starts, ends)
    is_kernel = (gpu["kind"] == "kernel").to_numpy()
    is_comm = gpu["is_comm"].to_numpy(dtype=bool)
    comp = is_kernel & ~is_comm
    comm = is_kernel & is_comm
    compute = total(starts[comp], ends[comp])
    comm_total = total(starts[comm], ends[comm])
    overlapped = intersect_total((starts[comm], ends[comm]), (starts[comp], ends[comp]))
    return TemporalBreakdown(
        span_ns=span,
        idle_ns=span - busy,
        compute_ns=compute,
        non_compute_ns=busy - compute,
        comm_ns=comm_total,
        comm_overlapped_ns=overlapped,
    )
