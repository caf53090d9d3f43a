"""Deterministic generator of small synthetic Kineto GPU traces with known ground truth.

Standard library only (json, gzip, decimal). Writes ``synthetic/<name>.json.gz`` and
``synthetic/manifest.json`` next to this script::

    python sample_traces/generate_synthetic.py           # (re)write the files
    python sample_traces/generate_synthetic.py --check   # exit 1 if the files on disk differ

Every scenario is laid out by a tiny "host launches, GPU stream executes" simulation, written
as a trace, and then the ground truth is computed **from the written file** (re-parsed with
``Decimal`` so float microseconds stay exact) by a brute-force elementary-interval sweep that
does not use mlprof.

Ground truth, per step window ``[ts, ts + dur)`` in ns; each ns goes to the first match:

* ``compute``        a non-communication kernel runs (kernel whose name does not contain ``nccl``);
* ``comm_exposed``   a communication kernel (name contains ``nccl``) runs;
* ``memcpy_exposed`` a memcpy or memset runs (``cuda_sync`` device events are not work);
* ``idle_data``      a host range named like ``DataLoader.*__next__`` / ``^enumerate\\(DataLoader\\)``;
* ``idle_sync``      a sync runtime call (cudaDeviceSynchronize, cudaStreamSynchronize,
  cudaEventSynchronize, cudaMemcpy) or an ``aten::item``/``aten::_local_scalar_dense`` op covers
  it, or it lies after the end of a sync runtime call and before the start of the next
  launch-type runtime call on the same host thread;
* ``idle_launch``    a launch-type runtime call (cudaLaunch*, cuLaunch*, cudaMemcpyAsync,
  cudaMemsetAsync, cudaGraphLaunch) or any cpu_op (``Operator`` in 2021 traces) other than
  ``ProfilerStep#*`` covers it;
* ``idle_other``     anything else.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import re
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "synthetic"

US = 1000  # ns per microsecond
MIB = 1 << 20

HOST_PID = 100
HOST_TID = 100
COMPUTE_STREAM = 7
COMM_STREAM = 20

H100 = {
    "id": 0,
    "name": "NVIDIA H100 80GB HBM3",
    "totalGlobalMem": 85029158912,
    "computeMajor": 9,
    "computeMinor": 0,
    "numSms": 132,
}

DATALOADER_NEXT = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"

GEMM = (
    "sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32_warpgroupsize1x1x1_"
    "execute_segment_k_off_kernel__5x_cublas"
)
GEMM_BWD = (
    "sm90_xmma_gemm_f32f32_tf32f32_f32_nt_n_tilesize128x128x32_warpgroupsize1x1x1_"
    "execute_segment_k_off_kernel__5x_cublas"
)
RELU = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::launch_clamp_scalar("
    "at::TensorIteratorBase&, c10::Scalar, c10::Scalar, at::native::detail::ClampLimits)::{lambda()#1}::operator()() "
    "const::{lambda()#7}::operator()() const::{lambda(float)#1}, std::array<char*, 2ul> >(int, "
    "at::native::(anonymous namespace)::launch_clamp_scalar(at::TensorIteratorBase&, c10::Scalar, c10::Scalar, "
    "at::native::detail::ClampLimits)::{lambda()#1}::operator()() const::{lambda()#7}::operator()() const::"
    "{lambda(float)#1}, std::array<char*, 2ul>)"
)
RELU_BWD = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::threshold_kernel_impl<float>("
    "at::TensorIteratorBase&, float, float)::{lambda(float, float)#1}, std::array<char*, 3ul> >(int, "
    "at::native::(anonymous namespace)::threshold_kernel_impl<float>(at::TensorIteratorBase&, float, float)::"
    "{lambda(float, float)#1}, std::array<char*, 3ul>)"
)
MSE = (
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, "
    "at::native::MeanOps<float, float, float, float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float, "
    "at::native::MeanOps<float, float, float, float>, unsigned int, float, 4, 4>)"
)
FOREACH = (
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
    "TensorListMetadata<3>, at::native::(anonymous namespace)::BinaryOpListAlphaFunctor<float, 3, 2, 0>, "
    "std::plus<float>, float>(at::native::(anonymous namespace)::TensorListMetadata<3>, "
    "at::native::(anonymous namespace)::BinaryOpListAlphaFunctor<float, 3, 2, 0>, std::plus<float>, float)"
)
SMALL_KERNELS = (
    (
        "aten::add",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
        "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)",
    ),
    (
        "aten::mul",
        "void at::native::vectorized_elementwise_kernel<4, at::native::binary_internal::MulFunctor<float>, "
        "std::array<char*, 3ul> >(int, at::native::binary_internal::MulFunctor<float>, std::array<char*, 3ul>)",
    ),
    (
        "aten::sigmoid",
        "void at::native::vectorized_elementwise_kernel<4, at::native::sigmoid_kernel_cuda("
        "at::TensorIteratorBase&)::{lambda()#2}::operator()() const::{lambda()#2}::operator()() const::"
        "{lambda(float)#1}, std::array<char*, 2ul> >(int, float, std::array<char*, 2ul>)",
    ),
    (
        "aten::tanh",
        "void at::native::vectorized_elementwise_kernel<4, at::native::tanh_kernel_cuda("
        "at::TensorIteratorBase&)::{lambda()#2}::operator()() const::{lambda()#2}::operator()() const::"
        "{lambda(float)#1}, std::array<char*, 2ul> >(int, float, std::array<char*, 2ul>)",
    ),
)
NCCL_ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
MEMCPY_HTOD = "Memcpy HtoD (Pageable -> Device)"
MEMCPY_DTOH = "Memcpy DtoH (Device -> Pageable)"

# Forward / backward / optimizer ops of the tiny "MLP" step: (op name, kernel name, kernel dur in us).
FORWARD = (
    ("aten::addmm", GEMM, 1200),
    ("aten::relu", RELU, 300),
    ("aten::addmm", GEMM, 1200),
    ("aten::mse_loss", MSE, 300),
)
BACKWARD = (("aten::mm", GEMM_BWD, 2400), ("aten::threshold_backward", RELU_BWD, 600), ("aten::mm", GEMM_BWD, 2400))
OPTIMIZER = (("aten::_foreach_add_", FOREACH, 1100),)


# ---------------------------------------------------------------------------------------------
# Trace builder: host ranges, runtime calls, device activity on per-stream queues
# ---------------------------------------------------------------------------------------------
class TraceBuilder:
    """Collects events with integer-ns times; :meth:`document` renders Kineto JSON text."""

    def __init__(self, *, legacy: bool = False, float_us: bool = False) -> None:
        self.legacy = legacy  # 2021 schema: Operator/Runtime/Kernel/Memcpy, "stream 7" tids
        self.float_us = float_us
        self.events: list[dict[str, Any]] = []
        self.next_corr = 1000
        self.next_ext = 1
        self.stream_free: dict[int, int] = defaultdict(int)
        self.host_tid: Any = str(HOST_TID) if legacy else HOST_TID

    # ---- host side ---------------------------------------------------------------------------
    def _host(self, cat: str, name: str, ts: int, dur: int, args: dict[str, Any] | None = None) -> int:
        ext = self.next_ext
        self.next_ext += 1
        a: dict[str, Any] = {"External id": ext}
        if not self.legacy:
            a["Record function id"] = 0
        a.update(args or {})
        self.events.append(
            {
                "ph": "X",
                "cat": cat,
                "name": name,
                "pid": HOST_PID,
                "tid": self.host_tid,
                "ts": ts,
                "dur": dur,
                "args": a,
            }
        )
        return ext

    def annotation(self, name: str, ts: int, dur: int) -> int:
        """``record_function`` range: ProfilerStep#N, DataLoader __next__, Optimizer.step..."""
        return self._host("Operator" if self.legacy else "user_annotation", name, ts, dur)

    def op(self, name: str, ts: int, dur: int, args: dict[str, Any] | None = None) -> int:
        return self._host("Operator" if self.legacy else "cpu_op", name, ts, dur, args)

    def runtime(self, name: str, ts: int, dur: int, ext: int) -> int:
        corr = self.next_corr
        self.next_corr += 1
        ext_key = "external id" if self.legacy else "External id"
        self.events.append(
            {
                "ph": "X",
                "cat": "Runtime" if self.legacy else "cuda_runtime",
                "name": name,
                "pid": HOST_PID,
                "tid": self.host_tid,
                "ts": ts,
                "dur": dur,
                "args": {"cbid": _CBID.get(name, 0), "correlation": corr, ext_key: ext},
            }
        )
        return corr

    # ---- device side -------------------------------------------------------------------------
    def launch(
        self,
        ts: int,
        dur: int,
        ext: int,
        *,
        name: str,
        device_dur: int,
        kind: str = "kernel",
        stream: int = COMPUTE_STREAM,
        latency: int = 10 * US,
        not_before: int = 0,
        api: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """A launch call ``[ts, ts+dur)`` and the device activity it queues; returns its (start, end).

        The activity starts when the call has returned plus ``latency``, the stream is free and
        ``not_before`` (a cross-stream dependency) has passed.
        """
        api = api or {"kernel": "cudaLaunchKernel", "memcpy": "cudaMemcpyAsync", "memset": "cudaMemsetAsync"}[kind]
        corr = self.runtime(api, ts, dur, ext)
        start = max(ts + dur + latency, self.stream_free[stream], not_before)
        end = start + device_dur
        self.stream_free[stream] = end
        cat = {
            "kernel": ("Kernel", "kernel"),
            "memcpy": ("Memcpy", "gpu_memcpy"),
            "memset": ("Memset", "gpu_memset"),
        }[kind][0 if self.legacy else 1]
        a: dict[str, Any] = {"queued": 0, "device": 0, "context": 1, "stream": stream, "correlation": corr}
        a["external id" if self.legacy else "External id"] = ext
        if kind == "kernel":
            a.update({"registers per thread": 128, "shared memory": 0, "grid": [132, 1, 1], "block": [256, 1, 1]})
        a.update(args or {})
        if kind != "kernel" and "bytes" in a:
            a["memory bandwidth (GB/s)"] = round(a["bytes"] / device_dur, 3)  # bytes/ns == GB/s
        tid = f"stream {stream}" if self.legacy else stream
        self.events.append(
            {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": tid, "ts": start, "dur": device_dur, "args": a}
        )
        flow_cat, flow_name = ("async", "launch") if self.legacy else ("ac2g", "ac2g")
        self.events.append(
            {"ph": "s", "id": corr, "pid": HOST_PID, "tid": self.host_tid, "ts": ts, "cat": flow_cat, "name": flow_name}
        )
        self.events.append(
            {"ph": "f", "id": corr, "pid": 0, "tid": tid, "ts": start, "cat": flow_cat, "name": flow_name, "bp": "e"}
        )
        return start, end

    def stream_sync(self, ts: int, ext: int, *, return_after: int) -> int:
        """``cudaStreamSynchronize`` from ``ts`` until ``return_after`` after the compute stream drains."""
        end = max(ts + 5 * US, self.stream_free[COMPUTE_STREAM] + return_after)
        corr = self.runtime("cudaStreamSynchronize", ts, end - ts, ext)
        # Device-side record of the same wait (Kineto >= 2.2 emits these); never device work.
        self.events.append(
            {
                "ph": "X",
                "cat": "cuda_sync",
                "name": "Stream Sync",
                "pid": 0,
                "tid": COMPUTE_STREAM,
                "ts": ts,
                "dur": end - ts,
                "args": {
                    "cuda_sync_kind": "stream_synchronize",
                    "stream": COMPUTE_STREAM,
                    "correlation": corr,
                    "device": 0,
                    "context": 1,
                },
            }
        )
        return end

    def memory(
        self,
        ts: int,
        addr: int,
        nbytes: int,
        total_allocated: int,
        total_reserved: int,
        *,
        device_type: int = 1,
        device_id: int = 0,
    ) -> None:
        if self.legacy:  # 2021 schema: no category, only the size of the change
            self.events.append(
                {
                    "ph": "i",
                    "s": "t",
                    "name": "[memory]",
                    "pid": HOST_PID,
                    "tid": HOST_TID,
                    "ts": ts,
                    "args": {"Device Type": device_type, "Device Id": device_id, "Bytes": nbytes},
                }
            )
            return
        self.events.append(
            {
                "ph": "i",
                "cat": "cpu_instant_event",
                "s": "t",
                "name": "[memory]",
                "pid": HOST_PID,
                "tid": HOST_TID,
                "ts": ts,
                "args": {
                    "Total Reserved": total_reserved,
                    "Total Allocated": total_allocated,
                    "Bytes": nbytes,
                    "Addr": addr,
                    "Device Id": device_id,
                    "Device Type": device_type,
                },
            }
        )

    # ---- output ------------------------------------------------------------------------------
    def document(self, header: dict[str, Any], trace_name: str) -> str:
        ranged = [e for e in self.events if "ts" in e]
        start = min(e["ts"] for e in ranged)
        end = max(e["ts"] + e.get("dur", 0) for e in ranged)
        meta: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "ts": start, "pid": HOST_PID, "tid": 0, "args": {"name": "python3"}},
            {
                "name": "thread_name",
                "ph": "M",
                "ts": start,
                "pid": HOST_PID,
                "tid": self.host_tid,
                "args": {"name": "thread 100 (python3)"},
            },
        ]
        streams = sorted(
            {e["args"]["stream"] for e in self.events if e.get("pid") == 0 and "stream" in e.get("args", {})}
        )
        if streams:
            meta.append({"name": "process_name", "ph": "M", "ts": start, "pid": 0, "tid": 0, "args": {"name": "GPU 0"}})
            for s in streams:
                tid = f"stream {s}" if self.legacy else s
                meta.append(
                    {
                        "name": "thread_name",
                        "ph": "M",
                        "ts": start,
                        "pid": 0,
                        "tid": tid,
                        "args": {"name": f"stream {s} "},
                    }
                )
        span = {
            "ph": "X",
            "cat": "Trace",
            "ts": start,
            "dur": end - start,
            "pid": "Spans",
            "tid": "PyTorch Profiler",
            "name": "PyTorch Profiler (0)",
            "args": {"Op count": 0},
        }
        events = sorted(self.events, key=lambda e: (e["ts"], -e.get("dur", 0)))
        body = [*meta, span, *events]
        if not self.legacy:
            body.append(
                {
                    "name": "Iteration Start: PyTorch Profiler",
                    "ph": "i",
                    "s": "g",
                    "pid": "Traces",
                    "tid": "Trace PyTorch Profiler",
                    "ts": start,
                }
            )
        lines = ["{"]
        for key, value in header.items():
            lines.append(f'  "{key}": {json.dumps(value)},')
        lines.append('  "traceEvents": [')
        lines.append(",\n".join("  " + self._event_text(e) for e in body))
        lines.append("],")
        lines.append(f'  "traceName": "{trace_name}",')
        lines.append('  "displayTimeUnit": "ms"')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _us(self, ns: int) -> str:
        if self.float_us:
            return f"{ns // US}.{ns % US:03d}"
        if ns % US:
            raise ValueError(f"{ns} ns is not a whole microsecond in an integer-us trace")
        return str(ns // US)

    def _event_text(self, event: dict[str, Any]) -> str:
        parts = []
        for key, value in event.items():
            text = self._us(value) if key in ("ts", "dur") else json.dumps(value)
            parts.append(f'"{key}": {text}')
        return "{" + ", ".join(parts) + "}"


_CBID = {
    "cudaLaunchKernel": 211,
    "cudaMemcpyAsync": 41,
    "cudaStreamSynchronize": 131,
    "cudaMemsetAsync": 51,
    "cudaStreamWaitEvent": 147,
    "cudaEventRecord": 135,
}


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------
def launch_batch_copy(b: TraceBuilder, at: int, ext: int) -> None:
    """The input batch's 4 MiB pageable HtoD copy: a 20 us cudaMemcpyAsync, 50 us on the GPU."""
    b.launch(
        at, 20 * US, ext, name=MEMCPY_HTOD, kind="memcpy", device_dur=50 * US, latency=5 * US, args={"bytes": 4 * MIB}
    )


def training_step(
    b: TraceBuilder,
    start: int,
    *,
    number: int | None,
    data: int,
    scale: float = 1.0,
    tail: int = 270 * US,
    collate_op: bool = False,
) -> tuple[int, dict[str, int]]:
    """One step of the tiny-MLP loop; returns (step end, times of interest for memory events).

    Layout (offsets from the step start): DataLoader ``[0, data)``; ``aten::to`` with an HtoD copy
    ``[data+30, data+80)`` us; then 40 us ops each launching one kernel, the GPU running the kernels
    back to back from ``data+80`` us; the step ends ``tail`` after the last kernel.
    """
    times: dict[str, int] = {}
    b.annotation(DATALOADER_NEXT, start, data)
    if collate_op:  # default_collate's torch.stack: a cpu_op inside __next__, still data time
        b.op("aten::stack", start + data - 300 * US, 200 * US)
    times["collate"] = start + data - data // 3
    t = start + data
    ext = b.op("aten::to", t, 50 * US)
    b.op("aten::copy_", t + 2 * US, 46 * US)
    launch_batch_copy(b, t + 5 * US, ext)
    times["to"] = t + 1 * US
    t += 50 * US
    for phase, ops in (("forward", FORWARD), ("backward", BACKWARD), ("optimizer", OPTIMIZER)):
        times[phase] = t
        if phase == "optimizer":
            b.annotation("Optimizer.step#SGD.step", t, 40 * US * len(ops))
        for i, (op_name, kernel, kdur) in enumerate(ops):
            ext = b.op(op_name, t, 40 * US)
            b.launch(t + 5 * US, 10 * US, ext, name=kernel, device_dur=round(kdur * scale) * US)
            times[f"{phase}{i}"] = t + 2 * US
            t += 40 * US
    end = b.stream_free[COMPUTE_STREAM] + tail
    if number is not None:
        b.annotation(f"ProfilerStep#{number}", start, end - start)
    return end, times


def scenario_healthy() -> TraceBuilder:
    b = TraceBuilder()
    t = T0
    for n in range(2, 8):
        t, _ = training_step(b, t, number=n, data=150 * US)
    return b


DATA_US = (3000, 3400, 2800, 3600, 3200, 3200)
"""DataLoader times of data_starvation / no_profiler_step; the last equals the median of the
first five so the DataLoader-marker fallback (last step = one median step) gets the same windows."""


def scenario_data_starvation(with_profiler_steps: bool = True) -> TraceBuilder:
    b = TraceBuilder()
    t = T0
    for i, data_us in enumerate(DATA_US):
        t, _ = training_step(
            b, t, number=i + 2 if with_profiler_steps else None, data=data_us * US, scale=0.5, collate_op=True
        )
    b.op("aten::empty", t + 20 * US, 30 * US)  # the profiler stops a little after the last step
    return b


def scenario_sync_point() -> TraceBuilder:
    """loss.item() after the forward pass: the host blocks, the GPU drains and stays idle while the
    host runs unprofiled Python (logging) until it launches the backward pass."""
    b = TraceBuilder()
    t = T0
    for n in range(2, 7):
        s = t
        b.annotation(DATALOADER_NEXT, s, 150 * US)
        ext = b.op("aten::to", s + 150 * US, 50 * US)
        launch_batch_copy(b, s + 155 * US, ext)
        h = s + 200 * US
        for (op_name, kernel, _), kdur in zip(FORWARD, (1000, 200, 1000, 300), strict=True):
            ext = b.op(op_name, h, 40 * US)
            b.launch(h + 5 * US, 10 * US, ext, name=kernel, device_dur=kdur * US)
            h += 40 * US
        # .item(): aten::item -> aten::_local_scalar_dense -> cudaMemcpyAsync(DtoH) + cudaStreamSynchronize
        item = s + 400 * US
        b.op("aten::item", item, 2400 * US)
        ext = b.op("aten::_local_scalar_dense", item + 5 * US, 2390 * US)
        b.launch(item + 10 * US, 10 * US, ext, name=MEMCPY_DTOH, kind="memcpy", device_dur=5 * US, args={"bytes": 4})
        sync_end = b.stream_sync(item + 25 * US, ext, return_after=15 * US)
        assert sync_end == s + 2750 * US, sync_end - s
        h = s + 4300 * US  # 1.5 ms of unprofiled Python after .item() returned
        for op_name, kernel, kdur in BACKWARD:
            ext = b.op(op_name, h, 40 * US)
            b.launch(h + 5 * US, 10 * US, ext, name=kernel, device_dur=(kdur * 5 // 6) * US)
            h += 40 * US
        b.annotation("Optimizer.step#SGD.step", h, 40 * US)
        ext = b.op("aten::_foreach_add_", h, 40 * US)
        b.launch(h + 5 * US, 10 * US, ext, name=FOREACH, device_dur=500 * US)
        t = b.stream_free[COMPUTE_STREAM] + 175 * US
        b.annotation(f"ProfilerStep#{n}", s, t - s)
    return b


def scenario_launch_bound() -> TraceBuilder:
    """2021 schema. 100 tiny 5 us kernels per step, each launched by its own 30 us op: the GPU waits
    25 us out of every 30 for the host to dispatch the next kernel."""
    b = TraceBuilder(legacy=True)
    t = T0
    for n in range(2, 7):
        s = t
        b.annotation(DATALOADER_NEXT, s, 100 * US)
        h = s + 100 * US
        for i in range(100):
            op_name, kernel = SMALL_KERNELS[i % len(SMALL_KERNELS)]
            ext = b.op(op_name, h, 30 * US)
            b.launch(h + 10 * US, 10 * US, ext, name=kernel, device_dur=5 * US, latency=5 * US)
            if i in (0, 50):  # two 4 MiB activations per step, freed at the end of the step
                b.memory(h + 1 * US, 0, 4 * MIB, 0, 0)
            if i in (98, 99):
                b.memory(h + 1 * US, 0, -4 * MIB, 0, 0)
            h += 30 * US
        t = s + 3200 * US
        b.annotation(f"ProfilerStep#{n}", s, t - s)
    return b


# comm_exposed durations in ns: not whole microseconds, to exercise the float-us path.
COMM_FORWARD_NS = (1_200_123, 300_456, 1_200_789)
COMM_BACKWARD_NS = (2_000_111, 600_222, 2_000_333)
COMM_NCCL_NS = 3_500_321
COMM_OPTIMIZER_NS = 700_505


def scenario_comm_exposed() -> TraceBuilder:
    """DDP-like rank 0 of 2, float-us timestamps. The gradient all-reduce (stream 20) starts when the
    first backward GEMM is done, runs under the remaining backward kernels (stream 7), and outlives
    them; the optimizer kernel waits for it."""
    b = TraceBuilder(float_us=True)
    t = T0 + 582_988  # ts like 1712195495505582.988
    for n in range(2, 8):
        s = t
        data = 100_017 + 311 * n
        b.annotation(DATALOADER_NEXT, s, data)
        h = s + data
        ext = b.op("aten::to", h, 50_001)
        b.launch(h + 5_003, 20_011, ext, name=MEMCPY_HTOD, kind="memcpy", device_dur=50_007, args={"bytes": 4 * MIB})
        h += 50_001
        for (op_name, kernel, _), kdur in zip(FORWARD[:3], COMM_FORWARD_NS, strict=True):
            ext = b.op(op_name, h, 40_013)
            b.launch(h + 5_001, 10_003, ext, name=kernel, device_dur=kdur)
            h += 40_013
        ext = b.op(BACKWARD[0][0], h, 40_013)
        _, grad_ready = b.launch(h + 5_001, 10_003, ext, name=GEMM_BWD, device_dur=COMM_BACKWARD_NS[0])
        h += 40_013
        b.annotation("nccl:all_reduce", h, 60_029)
        coll = {
            "Collective name": "allreduce",
            "In msg nelems": 2_097_152,
            "Out msg nelems": 2_097_152,
            "Group size": 2,
            "dtype": "Float",
            "Process Group Name": "0",
            "Process Group Description": "default_pg",
            "Seq": n - 1,
        }
        ext = b.op("record_param_comms", h + 2_003, 56_011, args=coll)
        b.launch(
            h + 10_007,
            12_005,
            ext,
            name=NCCL_ALLREDUCE,
            device_dur=COMM_NCCL_NS,
            stream=COMM_STREAM,
            not_before=grad_ready,
            args=coll,
        )
        h += 60_029
        for (op_name, kernel, _), kdur in zip(BACKWARD[1:], COMM_BACKWARD_NS[1:], strict=True):
            ext = b.op(op_name, h, 40_013)
            b.launch(h + 5_001, 10_003, ext, name=kernel, device_dur=kdur)
            h += 40_013
        b.annotation("Optimizer.step#SGD.step", h, 50_021)
        ext = b.op("aten::_foreach_add_", h + 1_001, 48_009)
        b.runtime("cudaStreamWaitEvent", h + 3_001, 2_003, ext)  # wait for the all-reduce
        b.launch(
            h + 6_007, 10_003, ext, name=FOREACH, device_dur=COMM_OPTIMIZER_NS, not_before=b.stream_free[COMM_STREAM]
        )
        t = b.stream_free[COMPUTE_STREAM] + 200_009
        b.annotation(f"ProfilerStep#{n}", s, t - s)
    return b


LEAK_BYTES = 8 * MIB
BASE_ALLOCATED = 512 * MIB


def scenario_memory_leak() -> tuple[TraceBuilder, dict[str, Any]]:
    """The healthy step plus allocator events: activations are allocated in forward and freed in
    backward (sawtooth), but an 8 MiB tensor allocated in the loss op is kept forever."""
    b = TraceBuilder()
    cuda = {"allocated": BASE_ALLOCATED, "reserved": 640 * MIB, "addr": 0x7F0000000000}
    cpu = {"allocated": 0, "addr": 0x55D000000000}

    def cuda_alloc(ts: int, nbytes: int) -> int:
        addr = cuda["addr"]
        cuda["addr"] += 64 * MIB
        cuda["allocated"] += nbytes
        while cuda["reserved"] < cuda["allocated"]:
            cuda["reserved"] += 20 * MIB
        b.memory(ts, addr, nbytes, cuda["allocated"], cuda["reserved"])
        return addr

    def cuda_free(ts: int, addr: int, nbytes: int) -> None:
        cuda["allocated"] -= nbytes
        b.memory(ts, addr, -nbytes, cuda["allocated"], cuda["reserved"])

    t = T0
    step_end_allocated = []
    peaks = []
    for n in range(2, 8):
        t, at = training_step(b, t, number=n, data=150 * US)
        # CPU side: the collated batch lives in pageable host memory until it is copied.
        cpu_addr = cpu["addr"]
        cpu["allocated"] += 4 * MIB
        b.memory(at["collate"], cpu_addr, 4 * MIB, cpu["allocated"], 0, device_type=0, device_id=-1)
        batch = cuda_alloc(at["to"], 4 * MIB)
        cpu["allocated"] -= 4 * MIB
        b.memory(at["to"] + 40 * US, cpu_addr, -4 * MIB, cpu["allocated"], 0, device_type=0, device_id=-1)
        acts = [cuda_alloc(at[f"forward{i}"], 64 * MIB) for i in range(3)]
        cuda_alloc(at["forward3"], LEAK_BYTES)  # appended to a Python list, never released
        loss = cuda_alloc(at["forward3"] + 1 * US, 512)
        grad = cuda_alloc(at["backward0"], 32 * MIB)
        peaks.append(cuda["allocated"])  # everything of the step is live right now
        for i, addr in enumerate(reversed(acts)):
            cuda_free(at[f"backward{min(i, 2)}"] + 3 * US, addr, 64 * MIB)
        cuda_free(at["backward2"] + 5 * US, grad, 32 * MIB)
        cuda_free(at["optimizer0"] + 5 * US, loss, 512)
        cuda_free(at["optimizer0"] + 6 * US, batch, 4 * MIB)
        step_end_allocated.append(cuda["allocated"])
    growth = [b2 - a for a, b2 in itertools.pairwise(step_end_allocated)]
    assert all(g == LEAK_BYTES for g in growth), growth
    info = {
        "device_type": 1,
        "device_id": 0,
        "growth_per_step_bytes": LEAK_BYTES,
        "allocated_before_first_step_bytes": BASE_ALLOCATED,
        "allocated_at_step_end_bytes": step_end_allocated,
        "peak_allocated_per_step_bytes": peaks,
        "cpu_events_per_step": 2,
        "note": "per step: 6 CUDA allocs (batch, 3 activations, the leaked 8 MiB tensor, loss) and "
        "1 gradient temp, 6 CUDA frees; plus 1 CPU alloc/free pair (Device Type 0, Device Id -1)",
    }
    return b, info


def scenario_cpu_only() -> TraceBuilder:
    """No device activity at all: DataLoader, framework ops and unprofiled gaps on the host."""
    b = TraceBuilder()
    t = T0
    for n in range(2, 7):
        s = t
        b.annotation(DATALOADER_NEXT, s, 500 * US)
        b.op("aten::linear", s + 500 * US, 1000 * US)
        b.op("aten::addmm", s + 520 * US, 960 * US)
        b.op("aten::relu", s + 1500 * US, 200 * US)
        b.op("aten::linear", s + 1700 * US, 1000 * US)
        b.op("aten::addmm", s + 1720 * US, 960 * US)
        b.op("aten::mse_loss", s + 2700 * US, 100 * US)
        b.op("autograd::engine::evaluate_function: AddmmBackward0", s + 2900 * US, 2000 * US)
        b.op("aten::mm", s + 2950 * US, 1900 * US)
        b.annotation("Optimizer.step#SGD.step", s + 5000 * US, 600 * US)
        b.op("aten::_foreach_add_", s + 5050 * US, 500 * US)
        b.memory(s + 600 * US, 0x55D000000000, 65536, 65536, 0, device_type=0, device_id=-1)
        b.memory(s + 4800 * US, 0x55D000000000, -65536, 0, 0, device_type=0, device_id=-1)
        t = s + 5700 * US
        b.annotation(f"ProfilerStep#{n}", s, t - s)
    return b


T0 = 1_712_195_495_505_000 * US
"""Epoch-like start of every trace, in ns."""


# ---------------------------------------------------------------------------------------------
# Ground truth: brute-force sweep over the written file
# ---------------------------------------------------------------------------------------------
CATEGORIES = ("compute", "comm_exposed", "memcpy_exposed", "idle_data", "idle_sync", "idle_launch", "idle_other")
KERNEL_CATS = {"kernel", "Kernel"}
COPY_CATS = {"gpu_memcpy", "gpu_memset", "Memcpy", "Memset"}
RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "Runtime"}
DEVICE_CATS = KERNEL_CATS | COPY_CATS | {"cuda_sync", "gpu_user_annotation"}
NOT_HOST_CATS = DEVICE_CATS | RUNTIME_CATS | {"Trace"}
OP_CATS = {"cpu_op", "Operator"}
DATALOADER_RE = re.compile(r"DataLoader.*__next__|^enumerate\(DataLoader\)")
SYNC_CALLS = {"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy"}
SYNC_OPS = {"aten::item", "aten::_local_scalar_dense"}
LAUNCH_PREFIXES = ("cudaLaunch", "cuLaunch", "cudaMemcpyAsync", "cudaMemsetAsync", "cudaGraphLaunch")
PROFILER_STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")


def to_ns(value: Any) -> int:
    """Exact ns from a JSON number parsed as int or Decimal (microseconds)."""
    ns = Decimal(value) * US
    assert ns == ns.to_integral_value(), value
    return int(ns)


def parse_ranges(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for e in doc["traceEvents"]:
        if e.get("ph") == "X":
            out.append({**e, "start": to_ns(e["ts"]), "end": to_ns(e["ts"]) + to_ns(e["dur"])})
    return out


def step_windows(ranges: list[dict[str, Any]]) -> tuple[list[tuple[int, str, int, int]], str]:
    """(step number, name, start, end): ProfilerStep ranges, else consecutive DataLoader starts."""
    steps = []
    for r in ranges:
        m = PROFILER_STEP_RE.match(r["name"])
        if m and r["cat"] not in NOT_HOST_CATS:
            steps.append((int(m.group(1)), r["name"], r["start"], r["end"]))
    if steps:
        return sorted(steps, key=lambda s: s[2]), "ProfilerStep"
    starts = sorted(r["start"] for r in ranges if r["cat"] not in NOT_HOST_CATS and DATALOADER_RE.search(r["name"]))
    if len(starts) < 2:
        return [], "none"
    gaps = sorted(b - a for a, b in itertools.pairwise(starts))
    assert len(gaps) % 2 == 1, "pick an odd number of gaps so the median is one of them"
    ends = [*starts[1:], starts[-1] + gaps[len(gaps) // 2]]
    return [
        (i, DATALOADER_NEXT, a, b) for i, (a, b) in enumerate(zip(starts, ends, strict=True))
    ], "DataLoader __next__"


def layers(ranges: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """Interval lists, one per category test, in ns."""
    out: dict[str, list[tuple[int, int]]] = {k: [] for k in ("compute", "comm", "copy", "data", "sync", "launch")}
    launches: dict[tuple[Any, Any], list[int]] = defaultdict(list)
    sync_ends: list[tuple[tuple[Any, Any], int]] = []
    for r in ranges:
        iv = (r["start"], r["end"])
        cat, name = r["cat"], r["name"]
        if cat in KERNEL_CATS:
            out["comm" if "nccl" in name.lower() else "compute"].append(iv)
        elif cat in COPY_CATS:
            out["copy"].append(iv)
        elif cat in RUNTIME_CATS:
            if name in SYNC_CALLS:
                out["sync"].append(iv)
                sync_ends.append(((r["pid"], r["tid"]), r["end"]))
            elif name.startswith(LAUNCH_PREFIXES):
                out["launch"].append(iv)
                launches[(r["pid"], r["tid"])].append(r["start"])
        elif cat not in NOT_HOST_CATS:
            if DATALOADER_RE.search(name):
                out["data"].append(iv)
            if cat in OP_CATS and name in SYNC_OPS:
                out["sync"].append(iv)
            if cat in OP_CATS and not PROFILER_STEP_RE.match(name):
                out["launch"].append(iv)
    far = 1 << 62
    for thread, end in sync_ends:
        nxt = min((s for s in launches[thread] if s >= end), default=far)
        out["sync"].append((end, nxt))
    return out


def covers(intervals: list[tuple[int, int]], t: int) -> bool:
    return any(a <= t < b for a, b in intervals)


def attribute(lay: dict[str, list[tuple[int, int]]], w0: int, w1: int) -> dict[str, int]:
    """Elementary-interval sweep: between consecutive boundaries nothing changes, so test the left end."""
    cuts = {w0, w1}
    for ivs in lay.values():
        for a, b in ivs:
            if w0 < a < w1:
                cuts.add(a)
            if w0 < b < w1:
                cuts.add(b)
    edges = sorted(cuts)
    result = dict.fromkeys(CATEGORIES, 0)
    order = (
        ("compute", "compute"),
        ("comm_exposed", "comm"),
        ("memcpy_exposed", "copy"),
        ("idle_data", "data"),
        ("idle_sync", "sync"),
        ("idle_launch", "launch"),
    )
    for a, b in itertools.pairwise(edges):
        category = next((cat for cat, key in order if covers(lay[key], a)), "idle_other")
        result[category] += b - a
    return result


def measure(intervals: list[tuple[int, int]]) -> int:
    total, reach = 0, None
    for a, b in sorted(intervals):
        if reach is None or a >= reach:
            total += b - a
            reach = b
        elif b > reach:
            total += b - reach
            reach = b
    return total


def intersection(xs: list[tuple[int, int]], ys: list[tuple[int, int]]) -> int:
    cuts = sorted({p for iv in xs + ys for p in iv})
    return sum(b - a for a, b in itertools.pairwise(cuts) if covers(xs, a) and covers(ys, a))


def ground_truth(doc: dict[str, Any]) -> dict[str, Any]:
    ranges = parse_ranges(doc)
    windows, source = step_windows(ranges)
    lay = layers(ranges)
    steps = []
    for number, name, w0, w1 in windows:
        parts = attribute(lay, w0, w1)
        assert sum(parts.values()) == w1 - w0, (name, parts)
        steps.append({"step": number, "name": name, "ts_ns": w0, "dur_ns": w1 - w0, **parts})
    events = doc["traceEvents"]
    cats = [e.get("cat") for e in events if e.get("ph") == "X"]
    counts = {
        "steps": len(steps),
        "kernels": sum(c in KERNEL_CATS for c in cats),
        "comm_kernels": sum(r["cat"] in KERNEL_CATS and "nccl" in r["name"].lower() for r in ranges),
        "memcpy": sum(c in {"gpu_memcpy", "Memcpy"} for c in cats),
        "memset": sum(c in {"gpu_memset", "Memset"} for c in cats),
        "gpu_sync": sum(c == "cuda_sync" for c in cats),
        "runtime": sum(c in RUNTIME_CATS for c in cats),
        "host_ranges": sum(c not in NOT_HOST_CATS for c in cats),
        "memory_events": sum(e.get("name") == "[memory]" for e in events),
        "flows": sum(e.get("ph") in ("s", "f") for e in events),
    }
    return {
        "step_source": source,
        "counts": counts,
        "steps": steps,
        "totals": {k: sum(s[k] for s in steps) for k in CATEGORIES},
        "comm_total_ns": measure(lay["comm"]),
        "comm_overlapped_ns": intersection(lay["comm"], lay["compute"]),
    }


# ---------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------
SCENARIOS: dict[str, str] = {
    "healthy": "6 steps of 10 ms; the GPU runs kernels 95% of each step (9.5 ms compute, 50 us HtoD copy, "
    "150 us DataLoader, 30 us launch gap, 270 us idle tail).",
    "data_starvation": "6 steps; each starts with 2.8-3.6 ms in DataLoader __next__ (with a nested aten::stack "
    "cpu_op) while the GPU is idle, then 4.75 ms of kernels.",
    "sync_point": "5 steps; mid-step aten::item -> aten::_local_scalar_dense -> cudaStreamSynchronize (plus a "
    "cuda_sync device event); the GPU drains and stays idle through 1.5 ms of unprofiled Python until the "
    "next launch (1570 us idle_sync per step).",
    "launch_bound": "2021 schema (Operator/Runtime/Kernel, tid 'stream 7', Bytes-only [memory]); 5 steps of 100 "
    "tiny 5 us kernels each launched by a 30 us op: 2500 us of 3200 us per step is idle_launch.",
    "comm_exposed": "float-us timestamps with ns decimals; rank 0 of 2; an NCCL all-reduce on stream 20 overlaps "
    "the backward kernels on stream 7 and then runs alone before the optimizer kernel.",
    "memory_leak": "the healthy step plus [memory] events: forward/backward alloc-free sawtooth, and Total "
    "Allocated grows by 8 MiB every step (a kept tensor).",
    "no_profiler_step": "data_starvation without ProfilerStep annotations: steps are the windows between "
    "consecutive DataLoader __next__ starts, the last one lasting the median step (3200 us of data + 5100 us).",
    "cpu_only": "no device or runtime events at all (CPU-only run); 5 steps of 5.7 ms split into idle_data, "
    "idle_launch (ops) and idle_other.",
}


def build_all() -> dict[str, tuple[TraceBuilder, dict[str, Any], dict[str, Any]]]:
    """name -> (builder, header, extra manifest fields)."""
    current = {"schemaVersion": 1, "deviceProperties": [H100]}

    def dist(rank: int = 0, world: int = 1, backend: str = "nccl") -> dict[str, Any]:
        return {"distributedInfo": {"backend": backend, "rank": rank, "world_size": world}}

    memory_builder, memory_info = scenario_memory_leak()
    return {
        "healthy": (scenario_healthy(), {**current, **dist()}, {}),
        "data_starvation": (scenario_data_starvation(), {**current, **dist()}, {}),
        "sync_point": (scenario_sync_point(), {**current, **dist()}, {}),
        "launch_bound": (scenario_launch_bound(), {"schemaVersion": 1, "deviceProperties": [H100]}, {}),
        "comm_exposed": (scenario_comm_exposed(), {**current, **dist(0, 2)}, {}),
        "memory_leak": (memory_builder, {**current, **dist()}, {"memory": memory_info}),
        "no_profiler_step": (scenario_data_starvation(with_profiler_steps=False), {**current, **dist()}, {}),
        "cpu_only": (scenario_cpu_only(), {"schemaVersion": 1, **dist(backend="gloo")}, {}),
    }


def probes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The first kernel and first NCCL kernel exactly as written, for exact-ns checks."""
    out = []
    kernels = [e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") in KERNEL_CATS]
    picks = kernels[:1] + [e for e in kernels if "nccl" in e["name"].lower()][:1]
    for e in picks:
        out.append(
            {
                "name": e["name"],
                "ts_text": str(e["ts"]),
                "dur_text": str(e["dur"]),
                "ts_ns": to_ns(e["ts"]),
                "dur_ns": to_ns(e["dur"]),
            }
        )
    return out


def render() -> dict[str, bytes]:
    """File name -> bytes, for every synthetic trace and the manifest."""
    files: dict[str, bytes] = {}
    manifest_traces = []
    for name, (builder, header, extra) in build_all().items():
        text = builder.document(header, f"synthetic/{name}")
        doc = json.loads(text, parse_float=Decimal)
        truth = ground_truth(doc)
        file_name = f"{name}.json.gz"
        files[file_name] = gzip.compress(text.encode(), compresslevel=9, mtime=0)
        entry: dict[str, Any] = {
            "file": file_name,
            "scenario": name,
            "description": SCENARIOS[name],
            "format": "kineto-2021" if builder.legacy else "kineto",
            "time_format": "float_us" if builder.float_us else "integer_us",
            "rank": header.get("distributedInfo", {}).get("rank"),
            "world_size": header.get("distributedInfo", {}).get("world_size"),
            **truth,
            "probes": probes(doc),
            **extra,
        }
        manifest_traces.append(entry)
    manifest = {
        "generator": "sample_traces/generate_synthetic.py",
        "units": "ns (int); step windows are [ts_ns, ts_ns + dur_ns)",
        "categories": list(CATEGORIES),
        "semantics": __doc__.split("Ground truth,", 1)[1].strip(),
        "traces": manifest_traces,
    }
    files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: sample_traces/synthetic)")
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = [n for n, data in files.items() if not (args.out / n).exists() or (args.out / n).read_bytes() != data]
        for n in stale:
            print(f"out of date: {args.out / n}")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n, data in files.items():
        (args.out / n).write_bytes(data)
        print(f"wrote {args.out / n} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
