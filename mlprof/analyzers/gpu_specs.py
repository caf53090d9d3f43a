"""Datasheet figures for the GPUs mlprof meets, keyed by the name in ``deviceProperties``.

Rules turn measured time into "how much faster after the fix" with these numbers:
memory bandwidth bounds how fast a fused memory-bound kernel can go, the ratio of
tensor-core to FP32 throughput bounds what mixed precision can give, and the memory
size tells how many steps a leak has left. Values are dense (no sparsity) datasheet
peaks for the SXM/OAM part unless the name says PCIe; the source of each row is the
vendor datasheet (see ``../shared/reference/ml-perf-notes.md`` section 3.13 for the
cross-checked table). Users with other parts can add rows via ``[tool.mlprof.gpus]``.
"""

from __future__ import annotations

import re

import msgspec

from mlprof.trace.model import DeviceInfo


class GpuSpec(msgspec.Struct, frozen=True):
    """A GPU model's memory, bandwidth and peak throughput."""

    name: str
    memory_bytes: int
    bandwidth_gbs: float
    """HBM/GDDR peak, GB/s (10^9 bytes per second)."""
    fp32_tflops: float
    """Non-tensor-core FP32 peak."""
    tensor_tflops: float | None
    """Dense FP16/BF16 tensor-core peak; None where the part has no tensor cores."""
    tf32: bool
    """Whether FP32 matmuls can run on tensor cores as TF32 (Ampere and later)."""


GIB = 1 << 30
GB = 10**9

SPECS: tuple[tuple[str, GpuSpec], ...] = (
    (r"B200", GpuSpec("B200", 192 * GB, 8000.0, 80.0, 2250.0, True)),
    (r"H200", GpuSpec("H200", 141 * GB, 4800.0, 67.0, 989.0, True)),
    (r"H100.*PCIe", GpuSpec("H100 PCIe", 80 * GB, 2000.0, 51.0, 756.0, True)),
    (r"H100", GpuSpec("H100 SXM", 80 * GB, 3350.0, 67.0, 989.0, True)),
    (r"GH200", GpuSpec("GH200", 96 * GB, 4000.0, 67.0, 989.0, True)),
    (r"A100.*80GB.*PCIe|A100.*PCIe.*80GB", GpuSpec("A100 80GB PCIe", 80 * GB, 1935.0, 19.5, 312.0, True)),
    (r"A100.*80GB", GpuSpec("A100 80GB SXM", 80 * GB, 2039.0, 19.5, 312.0, True)),
    (r"A100", GpuSpec("A100 40GB", 40 * GB, 1555.0, 19.5, 312.0, True)),
    (r"A10G", GpuSpec("A10G", 24 * GB, 600.0, 31.2, 125.0, True)),
    (r"A10\b", GpuSpec("A10", 24 * GB, 600.0, 31.2, 125.0, True)),
    (r"L40S", GpuSpec("L40S", 48 * GB, 864.0, 91.6, 362.0, True)),
    (r"L4\b", GpuSpec("L4", 24 * GB, 300.0, 30.3, 121.0, True)),
    (r"V100.*32GB|V100.*DGXS", GpuSpec("V100 32GB", 32 * GB, 900.0, 15.7, 125.0, False)),
    (r"V100", GpuSpec("V100", 16 * GB, 900.0, 15.7, 125.0, False)),
    (r"T4\b", GpuSpec("T4", 16 * GB, 320.0, 8.1, 65.0, False)),
    (r"RTX 2080 Ti", GpuSpec("RTX 2080 Ti", 11 * GB, 616.0, 13.4, 53.8, False)),
    (r"RTX 3090", GpuSpec("RTX 3090", 24 * GB, 936.0, 35.6, 71.0, True)),
    (r"RTX 4090", GpuSpec("RTX 4090", 24 * GB, 1008.0, 82.6, 165.0, True)),
    (r"MI300X", GpuSpec("MI300X", 192 * GB, 5300.0, 163.4, 1307.0, True)),
    (r"MI325X", GpuSpec("MI325X", 256 * GB, 6000.0, 163.4, 1307.0, True)),
    (r"MI250X?", GpuSpec("MI250X", 128 * GB, 3277.0, 47.9, 383.0, False)),
)


def lookup(device_name: str | None) -> GpuSpec | None:
    """The spec of a device name as Kineto writes it (``NVIDIA H100 80GB HBM3``), or None."""
    if not device_name:
        return None
    for pattern, spec in SPECS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return spec
    return None


def spec_for(devices: list[DeviceInfo]) -> GpuSpec | None:
    """The spec of the trace's first known device (a job uses one GPU model)."""
    for device in devices:
        spec = lookup(device.name)
        if spec is not None:
            return spec
    return None
