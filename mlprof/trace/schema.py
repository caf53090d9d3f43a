"""Typed shape of one Kineto (PyTorch profiler) Chrome-trace event.

Decoding straight into these ``msgspec`` structs is what makes loading fast: only
the fields below are materialised, every other key (``Input Dims``, ``Call stack``,
``Comms Id`` with its integers above int64, ...) is skipped by the C decoder without
building Python objects. ``ts``/``dur`` are kept as raw JSON text and converted to
exact int64 nanoseconds in bulk by :mod:`mlprof.trace.numbers`, because recent
Kineto writes float microseconds with nanosecond decimals (``1712195495505582.988``)
that a float64 cannot hold exactly.

``gc=False`` keeps the garbage collector from scanning millions of short-lived
events; they hold no reference cycles.
"""

from __future__ import annotations

from typing import Any

import msgspec

RAW_ZERO = msgspec.Raw(b"0")
RAW_NONE = msgspec.Raw(b"")

Scalar = int | float | str | None


class EventArgs(msgspec.Struct, gc=False, omit_defaults=True):
    """The ``args`` keys mlprof reads; each is optional in real traces."""

    external_id: Scalar = msgspec.field(default=None, name="External id")
    external_id_old: Scalar = msgspec.field(default=None, name="external id")
    correlation: Scalar = None
    device: Scalar = None
    stream: Scalar = None
    bytes: Scalar = None
    mem_bytes: Scalar = msgspec.field(default=None, name="Bytes")
    total_allocated: Scalar = msgspec.field(default=None, name="Total Allocated")
    total_reserved: Scalar = msgspec.field(default=None, name="Total Reserved")
    addr: Scalar = msgspec.field(default=None, name="Addr")
    device_type: Scalar = msgspec.field(default=None, name="Device Type")
    device_id: Scalar = msgspec.field(default=None, name="Device Id")
    collective_name: Scalar = msgspec.field(default=None, name="Collective name")
    in_msg_nelems: Scalar = msgspec.field(default=None, name="In msg nelems")
    out_msg_nelems: Scalar = msgspec.field(default=None, name="Out msg nelems")
    group_size: Scalar = msgspec.field(default=None, name="Group size")
    dtype: Scalar = None
    pg_name: Scalar = msgspec.field(default=None, name="Process Group Name")
    seq: Scalar = msgspec.field(default=None, name="Seq")
    call_stack: Scalar = msgspec.field(default=None, name="Call stack")
    input_dims: msgspec.Raw = msgspec.field(default=RAW_NONE, name="Input Dims")
    """Kept as raw JSON text (no Python lists built); read only for the ops in ``vocabulary.SHAPE_OPS``."""
    # Metadata events (ph == "M") carry their payload here.
    name: Scalar = None
    labels: Scalar = None
    sort_index: Scalar = None


class TraceEvent(msgspec.Struct, gc=False):
    """One element of ``traceEvents``.

    Only what the tables read: each field present in the JSON is a Python object made and
    freed per event (a flow's ``bp``, an instant's ``s``: decoding was 6-8% slower with them).
    """

    ph: Scalar = None
    cat: Scalar = None
    name: Scalar = None
    pid: Scalar = None
    tid: Scalar = None
    ts: msgspec.Raw = RAW_NONE
    dur: msgspec.Raw = RAW_NONE
    id: Scalar = None
    args: EventArgs | None = None


class TraceDocument(msgspec.Struct, gc=False):
    """A whole trace file, or one slice of it wrapped as ``{"traceEvents": [...]}``."""

    traceEvents: list[TraceEvent] = msgspec.field(default_factory=list)
    schemaVersion: Any = None
    deviceProperties: Any = None
    distributedInfo: Any = None
    baseTimeNanoseconds: Any = None
    displayTimeUnit: Any = None
    traceName: Any = None
    record_shapes: Any = None
    with_stack: Any = None
    profile_memory: Any = None
    cuda_runtime_version: Any = None
    cuda_driver_version: Any = None
    hip_runtime_version: Any = None
    cupti_version: Any = None
    roctracer_version: Any = None


HEADER_FIELDS: tuple[str, ...] = tuple(f for f in TraceDocument.__struct_fields__ if f != "traceEvents")
