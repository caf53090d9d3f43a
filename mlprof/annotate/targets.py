"""Which device event each of a finding's time ranges points at, and from where, so an arrow proves the finding.

An arrow starts on the finding's slice (drawn over its evidence: the sync call, the
DataLoader wait, the launching op, the kernel chain) and ends on a device event the
finding is about, never earlier in time than where it starts:

* a range that *is* device work (it starts exactly where a kernel or copy starts: a
  chain of unfused kernels, an exposed collective, a misaligned GEMM) points at the
  first kernel of the finding's kind that starts inside it, from the range's start;
* a host range that launches work (a step, an op, ``DataParallel.forward``) points at
  the first kernel of the finding's kind it launched (CUPTI correlation id), from the
  launch call;
* a host range that launches nothing (a sync call, a DataLoader wait, ``cudaMalloc``)
  points at the first kernel of the finding's kind launched after it: the work the GPU
  waited for, from the range's end.

"Of the finding's kind": collectives for the communication rules, FP32 GEMMs for
AMP001, GEMMs for SHAPE001, memory-bound kernels for the fusion rules, host-to-device
copies for DATA002; any compute kernel (never a memcpy or memset) for the others.
Memory and clock findings are about no kernel and get no arrow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlprof.analyzers.kernels import kernel_classes, launch_times
from mlprof.results.findings import Finding
from mlprof.trace.model import Trace

KERNEL_CLASSES: dict[str, tuple[str, ...]] = {
    "AMP001": ("gemm_fp32",),
    "SHAPE001": ("gemm", "gemm_fp32", "gemm_tensor"),
    "FUSE001": ("memory_bound",),
    "FUSE002": ("memory_bound",),
    "COMM001": ("comm",),
    "COMM002": ("comm",),
    "STRAG001": ("comm",),
}
"""Rules whose arrows land only on kernels of these classes (:func:`mlprof.analyzers.kernels.classify_name`)."""
COPY_RULES = frozenset({"DATA002"})
"""Rules about host-to-device copies: their arrows land on the copies."""
NO_KERNEL_CATEGORIES = frozenset({"memory_leak", "gpu_clocks"})
"""Findings about memory or clocks concern no kernel: no arrow."""


@dataclass(frozen=True)
class Arrow:
    start_ns: int
    """Where the arrow leaves the finding's slice (inside the range)."""
    row: int
    """Row of ``trace.gpu`` it lands on."""
    end_ns: int
    """Where it lands: inside that row's [ts, end], and never before ``start_ns``."""


class Targets:
    """The device rows of one trace, with their launch times, ready to answer :meth:`arrow` per range."""

    def __init__(self, trace: Trace) -> None:
        gpu = trace.gpu
        self.kind = gpu["kind"].astype(str).to_numpy() if len(gpu) else np.zeros(0, dtype=object)
        self.ts = gpu["ts"].to_numpy(np.int64)
        self.end = gpu["end"].to_numpy(np.int64)
        self.launch = launch_times(gpu, trace.runtime) if len(gpu) else np.zeros(0, dtype=np.int64)
        self.klass = kernel_classes(gpu) if len(gpu) else np.zeros(0, dtype=object)
        self.device_starts = np.unique(self.ts[self.kind != "sync"])
        self._direction: np.ndarray | None = None
        self._gpu = gpu

    def candidates(self, f: Finding) -> np.ndarray:
        """Rows the finding's arrows may land on."""
        if f.category in NO_KERNEL_CATEGORIES:
            return np.zeros(len(self.ts), dtype=bool)
        if f.rule in COPY_RULES:
            return (self.kind == "memcpy") & self._h2d()
        mask = self.kind == "kernel"
        classes = KERNEL_CLASSES.get(f.rule)
        if classes is not None:
            mask &= np.isin(self.klass, classes)
        return mask

    def _h2d(self) -> np.ndarray:
        if self._direction is None:
            from mlprof.analyzers.copies import copy_table

            direction = np.full(len(self.ts), "", dtype=object)
            direction[self.kind == "memcpy"] = copy_table(self._gpu)["direction"].to_numpy()
            self._direction = direction
        return np.asarray(self._direction == "HtoD")

    def arrow(self, a: int, b: int, rows: np.ndarray | Candidates) -> Arrow | None:
        """The arrow for range [a, b) among ``rows`` (candidate row indices, or :meth:`prepare`'s), or None."""
        c = rows if isinstance(rows, Candidates) else self.prepare(rows)
        if len(c.by_ts) == 0:
            return None
        b = max(b, a + 1)
        pos = np.searchsorted(self.device_starts, a)
        if pos < len(self.device_starts) and self.device_starts[pos] == a:  # the range is device work
            i = int(np.searchsorted(c.ts_sorted, a, side="left"))
            return self._make(int(c.by_ts[i]), a) if i < len(c.by_ts) and c.ts_sorted[i] < b else None
        i = int(np.searchsorted(c.launch_sorted, a, side="left"))
        if i < len(c.by_launch) and c.launch_sorted[i] < b:  # launched from inside the range
            return self._make(int(c.by_launch[i]), int(c.launch_sorted[i]))
        i = int(np.searchsorted(c.launch_sorted, b, side="left"))  # the first launched after it
        return self._make(int(c.by_launch[i]), max(a, b - 1)) if i < len(c.by_launch) else None

    def prepare(self, rows: np.ndarray) -> Candidates:
        """The candidate rows sorted by start and by launch (ties: the one that ends first), for many ranges.

        Rows that end before their launch call starts (a device clock behind the host's) cannot be
        pointed at forward in time from their launch; they are left out of the launch order."""
        ts, end, launch = self.ts[rows], self.end[rows], self.launch[rows]
        by_ts = rows[np.lexsort((end, ts))]
        forward = end >= launch
        kept = rows[forward]
        by_launch = kept[np.lexsort((end[forward], launch[forward]))]
        return Candidates(by_ts, self.ts[by_ts], by_launch, self.launch[by_launch])

    def _make(self, row: int, start: int) -> Arrow | None:
        k_ts, k_end = int(self.ts[row]), int(self.end[row])
        if k_end < start:  # device clock behind the host's: no forward arrow to this kernel
            return None
        land = max(k_ts + (k_end - k_ts) // 2, start)
        return Arrow(start_ns=start, row=row, end_ns=land)


@dataclass(frozen=True)
class Candidates:
    """One finding's candidate rows in two orders, so each range is answered by binary search."""

    by_ts: np.ndarray
    ts_sorted: np.ndarray
    by_launch: np.ndarray
    launch_sorted: np.ndarray
