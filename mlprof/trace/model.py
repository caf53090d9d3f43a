"""The trace model: one columnar table per event family, times in int64 nanoseconds.

Every analyzer reads a :class:`Trace` and nothing else, whatever file format it came
from. Tables are pandas DataFrames sorted by ``ts``; string columns are
``Categorical`` (symbol codes), times are int64 ns since the Unix epoch as written by
the profiler (``ts``), with ``end = ts + dur``. Missing integer arguments are ``-1``.

Tables and their columns:

Host ``pid``/``tid`` are int64 (numeric strings such as ``"25738"`` are parsed; other
strings become -1).

``gpu`` (device activity; one row per kernel, memcpy, memset or device-side sync)
    kind (kernel|memcpy|memset|sync), name, ts, end, dur, device, stream,
    correlation, external_id, bytes, is_comm (NCCL/RCCL/HCCL collective kernel)
``runtime`` (CUDA/HIP runtime and driver API calls on the host)
    name, ts, end, dur, pid, tid, correlation, external_id
``host`` (CPU ops, user annotations, Python functions, other host ranges)
    cat (cpu_op|user_annotation|python_function|...), name, ts, end, dur, pid, tid,
    external_id, call_stack, input_dims (``Input Dims`` JSON text of the ops in
    ``vocabulary.SHAPE_OPS`` when the trace has ``record_shapes``; empty otherwise)
``gpu_annotations`` (``gpu_user_annotation`` ranges drawn on a stream)
    name, ts, end, dur, device, stream
``memory`` (``[memory]`` allocator instant events; HTA drops these)
    ts, pid, tid, device_type, device_id, addr, bytes (+alloc/-free),
    total_allocated, total_reserved
``flows`` (``ac2g`` CPU->GPU, ``fwdbwd`` and other flow arrows)
    cat, ph (s|f|t), id, ts, pid, tid
``collectives`` (communication metadata from kernel/op arguments)
    source (gpu|host), name, ts, end, collective, in_nelems, out_nelems,
    group_size, dtype, pg_name, seq
``steps`` (training steps found by :mod:`mlprof.trace.steps`)
    step, name, ts, end, dur
``threads`` (``process_name``/``thread_name``/... metadata events)
    kind, pid, tid, value
"""

from __future__ import annotations

from typing import Any

import msgspec
import pandas as pd

from mlprof.trace.memo import cached

TABLES: tuple[str, ...] = (
    "gpu",
    "runtime",
    "host",
    "gpu_annotations",
    "memory",
    "flows",
    "collectives",
    "steps",
    "threads",
)


class DeviceInfo(msgspec.Struct, frozen=True):
    """One entry of ``deviceProperties``."""

    id: int
    name: str
    total_memory_bytes: int | None = None
    num_sms: int | None = None
    compute_capability: str | None = None


class TraceMeta(msgspec.Struct):
    """Facts about the trace file itself, not about its events."""

    path: str
    format: str
    """``kineto`` (current categories), ``kineto-2021`` (Operator/Runtime/Kernel) or ``nsys``."""
    rank: int | None = None
    world_size: int | None = None
    rank_source: str | None = None
    backend: str | None = None
    devices: list[DeviceInfo] = msgspec.field(default_factory=list)
    base_time_ns: int | None = None
    file_bytes: int = 0
    json_bytes: int = 0
    num_events: int = 0
    step_source: str = "none"
    """How steps were found: ``ProfilerStep``, a fallback marker, a user regex, or ``none``."""
    notes: list[str] = msgspec.field(default_factory=list)
    """Quirks met while reading (invalid UTF-8 repaired, events dropped...)."""
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class Trace(msgspec.Struct, weakref=True):
    """A parsed trace of one rank: tables plus metadata."""

    meta: TraceMeta
    gpu: pd.DataFrame
    runtime: pd.DataFrame
    host: pd.DataFrame
    gpu_annotations: pd.DataFrame
    memory: pd.DataFrame
    flows: pd.DataFrame
    collectives: pd.DataFrame
    steps: pd.DataFrame
    threads: pd.DataFrame = msgspec.field(default_factory=pd.DataFrame)
    """``process_name``/``thread_name`` metadata: pid, tid, kind, value."""

    @property
    def has_device_activity(self) -> bool:
        gpu = self.gpu
        if not len(gpu):
            return False
        # Asked by every rule; once per table.
        return cached(gpu, "has_device_activity", lambda: bool((gpu["kind"] != "sync").any()))

    def table(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise KeyError(name)
        frame: pd.DataFrame = getattr(self, name)
        return frame
