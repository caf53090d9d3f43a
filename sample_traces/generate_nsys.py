"""Deterministic generator of a tiny PyTorch-like Nsight Systems SQLite export.

Standard library only. Writes ``synthetic/nsys_pytorch_like.sqlite`` next to this script::

    python sample_traces/generate_nsys.py           # (re)write the file
    python sample_traces/generate_nsys.py --check   # exit 1 if the file on disk differs

No public PyTorch nsys export exists (see ../shared/external_traces/CATALOG.md, Gaps),
so this one is built to the schema recent nsys versions write (2024.5, export schema
3.13: the column lists and comments of the real CloverLeaf export, and the NVTX_EVENTS
layout of the Nsight Systems "SQLite Export Schema Reference"). It holds 3 training
steps as ``ProfilerStep#N`` NVTX push/pop ranges, each with a pageable HtoD copy of
the batch, 4 compute kernels, an NCCL all-reduce on a second stream, a memset, a
``cudaStreamSynchronize`` and its device-side sync record, plus GPU metrics samples.

:class:`Export` is also what ``tests/test_nsys.py`` uses to build schema variants.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "synthetic" / "nsys_pytorch_like.sqlite"

SESSION_START_NS = 1_730_000_000_000_000_000
PID, TID = 4242, 4243
GLOBAL_PID = (1 << 48) | (PID << 24)
GLOBAL_TID = GLOBAL_PID | TID
US = 1000

ENUMS: dict[str, list[tuple[int, str, str]]] = {
    "ENUM_CUDA_MEMCPY_OPER": [
        (0, "CUDA_MEMCPY_KIND_UNKNOWN", "Unknown"),
        (1, "CUDA_MEMCPY_KIND_HTOD", "Host-to-Device"),
        (2, "CUDA_MEMCPY_KIND_DTOH", "Device-to-Host"),
        (8, "CUDA_MEMCPY_KIND_DTOD", "Device-to-Device"),
        (10, "CUDA_MEMCPY_KIND_PTOP", "Peer-to-Peer"),
    ],
    "ENUM_CUDA_MEM_KIND": [
        (0, "CUDA_MEMOPR_MEMORY_KIND_PAGEABLE", "Pageable"),
        (1, "CUDA_MEMOPR_MEMORY_KIND_PINNED", "Pinned"),
        (2, "CUDA_MEMOPR_MEMORY_KIND_DEVICE", "Device"),
        (7, "CUDA_MEMOPR_MEMORY_KIND_UNKNOWN", "Unknown"),
    ],
    "ENUM_CUPTI_SYNC_TYPE": [
        (0, "CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_UNKNOWN", "Unknown"),
        (1, "CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_EVENT_SYNCHRONIZE", "Event sync"),
        (2, "CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_WAIT_EVENT", "Stream wait sync"),
        (3, "CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_SYNCHRONIZE", "Stream sync"),
        (4, "CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_CONTEXT_SYNCHRONIZE", "Context sync"),
    ],
    "ENUM_NSYS_EVENT_TYPE": [
        (34, "NvtxMark", "NvtxMark"),
        (59, "NvtxPushPopRange", "NvtxPushPopRange"),
        (60, "NvtxStartEndRange", "NvtxStartEndRange"),
        (75, "NvtxDomainCreate", "NvtxDomainCreate"),
    ],
}

SCHEMA: dict[str, str] = {
    "StringIds": "id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL",
    "TARGET_INFO_SESSION_START_TIME": "utcEpochNs INTEGER, utcTime TEXT, localTime TEXT",
    "META_DATA_EXPORT": "name TEXT, value TEXT",
    "TARGET_INFO_GPU": "vmId INTEGER, id INTEGER, name TEXT, totalMemory INTEGER, smCount INTEGER, "
    "computeMajor INTEGER, computeMinor INTEGER, cuDevice INTEGER, pwGpuId INTEGER",
    "PROCESSES": "globalPid INTEGER, pid INTEGER, name TEXT",
    "ThreadNames": "nameId INTEGER, priority INTEGER, globalTid INTEGER",
    "CUPTI_ACTIVITY_KIND_KERNEL": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, "
    "contextId INTEGER NOT NULL, greenContextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, "
    "globalPid INTEGER, demangledName INTEGER NOT NULL, shortName INTEGER NOT NULL, mangledName INTEGER, "
    "gridX INTEGER, gridY INTEGER, gridZ INTEGER, blockX INTEGER, blockY INTEGER, blockZ INTEGER",
    "CUPTI_ACTIVITY_KIND_MEMCPY": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, "
    "contextId INTEGER NOT NULL, greenContextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, "
    "globalPid INTEGER, bytes INTEGER NOT NULL, copyKind INTEGER NOT NULL, deprecatedSrcId INTEGER, "
    "srcKind INTEGER, dstKind INTEGER, srcDeviceId INTEGER, dstDeviceId INTEGER",
    "CUPTI_ACTIVITY_KIND_MEMSET": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, "
    "contextId INTEGER NOT NULL, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, "
    "value INTEGER NOT NULL, bytes INTEGER NOT NULL, memKind INTEGER",
    "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, "
    "contextId INTEGER NOT NULL, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, "
    "syncType INTEGER NOT NULL, eventId INTEGER NOT NULL",
    "CUPTI_ACTIVITY_KIND_RUNTIME": "start INTEGER NOT NULL, end INTEGER NOT NULL, eventClass INTEGER NOT NULL, "
    "globalTid INTEGER, correlationId INTEGER, nameId INTEGER NOT NULL, returnValue INTEGER NOT NULL, "
    "callchainId INTEGER",
    "NVTX_EVENTS": "start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL, rangeId INTEGER, "
    "category INTEGER, color INTEGER, text TEXT, globalTid INTEGER, endGlobalTid INTEGER, textId INTEGER, "
    "domainId INTEGER, uint64Value INTEGER, int64Value INTEGER, doubleValue REAL, uint32Value INTEGER, "
    "int32Value INTEGER, floatValue REAL, jsonTextId INTEGER, jsonText TEXT",
    "TARGET_INFO_GPU_METRICS": "typeId INTEGER NOT NULL, sourceId INTEGER NOT NULL, typeName TEXT NOT NULL, "
    "metricId INTEGER NOT NULL, metricName TEXT NOT NULL",
    "GPU_METRICS": "rawTimestamp INTEGER NOT NULL, timestamp INTEGER NOT NULL, typeId INTEGER NOT NULL, "
    "metricId INTEGER NOT NULL, value INTEGER NOT NULL",
}


@dataclass
class Export:
    """Rows of an nsys export, written by :meth:`write`; times in ns since the session start."""

    strings: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    correlation: int = 0

    def sid(self, text: str) -> int:
        if text not in self.strings:
            self.strings[text] = len(self.strings) + 1
        return self.strings[text]

    def add(self, table: str, *row: Any) -> None:
        self.rows.setdefault(table, []).append(row)

    def runtime(self, name: str, start: int, end: int) -> int:
        self.correlation += 1
        self.add("CUPTI_ACTIVITY_KIND_RUNTIME", start, end, 0, GLOBAL_TID, self.correlation, self.sid(name), 0, None)
        return self.correlation

    def kernel(self, name: str, start: int, end: int, corr: int, stream: int = 7, device: int = 0) -> None:
        short = name.split("<")[0].split("(")[0].replace("void ", "").split("::")[-1]
        self.add(
            "CUPTI_ACTIVITY_KIND_KERNEL",
            *(start, end, device, 1, None, stream, corr, GLOBAL_PID),
            *(self.sid(name), self.sid(short), None, 80, 1, 1, 256, 1, 1),
        )

    def memcpy(self, start: int, end: int, corr: int, nbytes: int, kind: int, src: int, dst: int) -> None:
        self.add(
            "CUPTI_ACTIVITY_KIND_MEMCPY",
            *(start, end, 0, 1, None, 7, corr, GLOBAL_PID, nbytes, kind, None, src, dst, 0, 0),
        )

    def nvtx(self, text: str, start: int, end: int | None, *, registered: bool = False, event_type: int = 59) -> None:
        text_col, text_id = (None, self.sid(text)) if registered else (text, None)
        self.add("NVTX_EVENTS", start, end, event_type, None, None, None, text_col, GLOBAL_TID, None, text_id, 0)

    def write(self, path: Path, *, tables: set[str] | None = None, enums: bool = True) -> Path:
        """Write the export; ``tables`` limits which tables exist (nsys creates them lazily)."""
        wanted = set(SCHEMA) if tables is None else tables
        con = sqlite3.connect(path)
        try:
            for table, cols in SCHEMA.items():
                if table not in wanted:
                    continue
                con.execute(f"CREATE TABLE {table} ({cols})")
                n = len(cols.split(","))
                for row in self.rows.get(table, []):
                    con.execute(f"INSERT INTO {table} VALUES ({','.join('?' * n)})", row + (None,) * (n - len(row)))
            if "StringIds" in wanted:
                con.executemany("INSERT INTO StringIds VALUES (?, ?)", [(i, s) for s, i in self.strings.items()])
            if enums:
                for table, rows in ENUMS.items():
                    con.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, label TEXT)")
                    con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", rows)
            con.commit()
        finally:
            con.close()
        return path


# ---- the PyTorch-like scenario -----------------------------------------------------------

STEPS = 3
STEP_NS = 10_000 * US
KERNELS = (
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>(int, float*)", 300 * US),
    ("ampere_sgemm_128x64_tn", 2_000 * US),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>(float*)", 400 * US),
    ("ampere_sgemm_64x64_nn", 1_500 * US),
)
NCCL = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"
BATCH_BYTES = 64 << 20
METRIC_NAMES = {1: "GR Active [Throughput %]", 2: "SMs Active [Throughput %]", 3: "Tensor Active [Throughput %]"}


def pytorch_like() -> Export:
    """3 ProfilerStep ranges; see the module docstring. Step k starts at 1 ms + k * 10 ms."""
    ex = Export()
    ex.add("TARGET_INFO_SESSION_START_TIME", SESSION_START_NS, "2024-10-27T03:33:20", "2024-10-27T03:33:20")
    for name, value in (("EXPORT_PRODUCT_VERSION", "2024.5.1.113"), ("EXPORT_SCHEMA_VERSION", "3.13.2")):
        ex.add("META_DATA_EXPORT", name, value)
    ex.add("TARGET_INFO_GPU", 0, 0, "NVIDIA H100 80GB HBM3", 85_029_158_912, 132, 9, 0, 0, 0)
    ex.add("PROCESSES", GLOBAL_PID, PID, "python")
    ex.add("ThreadNames", ex.sid("python"), 10, GLOBAL_TID)
    ex.add("NVTX_EVENTS", 0, None, 75, None, None, None, "PyTorch", GLOBAL_TID, None, None, 1)
    t = 1_000 * US
    for step in range(STEPS):
        s0 = t + step * STEP_NS
        ex.nvtx(f"ProfilerStep#{step + 1}", s0, s0 + STEP_NS - 100 * US, registered=step % 2 == 1)
        ex.nvtx("aten::copy_, seq = 11, sizes = [[64, 1024, 256]]", s0 + 10 * US, s0 + 900 * US)
        corr = ex.runtime("cudaMemcpyAsync_v3020", s0 + 20 * US, s0 + 880 * US)
        ex.memcpy(s0 + 50 * US, s0 + 850 * US, corr, BATCH_BYTES, 1, 0, 2)  # pageable HtoD
        corr = ex.runtime("cudaMemsetAsync_v3020", s0 + 900 * US, s0 + 905 * US)
        ex.add("CUPTI_ACTIVITY_KIND_MEMSET", s0 + 910 * US, s0 + 920 * US, 0, 1, 7, corr, GLOBAL_PID, 0, 4096, 2)
        k0 = s0 + 1_000 * US
        for i, (name, dur) in enumerate(KERNELS):
            corr = ex.runtime("cudaLaunchKernel_v7000", k0 - 50 * US + i * 10 * US, k0 - 45 * US + i * 10 * US)
            ex.kernel(name, k0, k0 + dur, corr)
            k0 += dur + 100 * US
        corr = ex.runtime("ncclGroupEnd", k0 - 80 * US, k0 - 70 * US)
        corr = ex.runtime("cudaLaunchKernel_v7000", k0 - 60 * US, k0 - 55 * US)
        ex.kernel(NCCL, k0, k0 + 2_000 * US, corr, stream=20)
        corr = ex.runtime("cudaStreamSynchronize_v3020", k0, k0 + 2_050 * US)
        ex.add(
            "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION",
            *(k0 + 10 * US, k0 + 2_040 * US, 0, 1, 7, corr, GLOBAL_PID, 3, 0xFFFFFFFF),
        )
    type_id = 0x1000100000000
    for mid, name in METRIC_NAMES.items():
        ex.add("TARGET_INFO_GPU_METRICS", type_id, 0x1000100000000, "GPU 0", mid, name)
    for i in range(STEPS * 10):
        ts = t + i * 1_000 * US
        for mid in METRIC_NAMES:
            ex.add("GPU_METRICS", ts, ts, type_id, mid, (37 * i + 11 * mid) % 100)
    return ex


def build() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = pytorch_like().write(Path(tmp) / "x.sqlite")
        return path.read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file on disk is stale")
    args = parser.parse_args(argv)
    data = build()
    if args.check:
        if not OUT.exists() or OUT.read_bytes() != data:
            print(f"{OUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
