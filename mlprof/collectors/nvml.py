"""NVML sampler: per-GPU utilisation, memory, clocks, power, temperature, PCIe, throttling.

Uses ``pynvml`` from the ``nvidia-ml-py`` package (NVIDIA's own binding). Values are
converted once to the canonical counter names and units of ``mlprof.counters``
(``gpu_util_pct``, ``mem_used_bytes``, ``power_w``...). A metric the GPU does not
support (``NVMLError_NotSupported``/``NoPermission``) is dropped for that GPU with a
note, not treated as a fault; any other failing call is a fault (one warning per run)
and that metric is dropped after three failures in a row.

PCIe throughput is read every ``pcie_every`` ticks only: each
``nvmlDeviceGetPcieThroughput`` call blocks ~20 ms while NVML measures, which would
stretch a 100 ms tick on a many-GPU node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from mlprof.collectors.faults import FaultLog
from mlprof.collectors.output import CounterRow
from mlprof.collectors.sampling import BackgroundSampler, CounterSink

NVML_METRICS: tuple[str, ...] = (
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_bytes",
    "mem_total_bytes",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "power_w",
    "temp_c",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
    "throttle_reasons",
)
"""Canonical names this sampler writes (all defined in ``mlprof.counters.metrics``)."""

KB = 1000
"""NVML reports PCIe throughput in "KB/s"; taken as 1000 bytes."""

_MAX_CONSECUTIVE_FAILURES = 3

Reader = Callable[[Any], list[tuple[str, float]]]


def load_pynvml() -> ModuleType:
    import pynvml

    return pynvml


def _readers(nv: Any) -> dict[str, Reader]:
    """One reader per NVML call; each returns (canonical metric, value) pairs."""

    def util(h: Any) -> list[tuple[str, float]]:
        u = nv.nvmlDeviceGetUtilizationRates(h)
        return [("gpu_util_pct", float(u.gpu)), ("mem_util_pct", float(u.memory))]

    def memory(h: Any) -> list[tuple[str, float]]:
        m = nv.nvmlDeviceGetMemoryInfo(h)
        return [("mem_used_bytes", float(m.used)), ("mem_total_bytes", float(m.total))]

    def clocks(h: Any) -> list[tuple[str, float]]:
        return [
            ("sm_clock_mhz", float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))),
            ("mem_clock_mhz", float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))),
        ]

    def power(h: Any) -> list[tuple[str, float]]:
        return [("power_w", nv.nvmlDeviceGetPowerUsage(h) / 1000.0)]  # mW

    def temperature(h: Any) -> list[tuple[str, float]]:
        return [("temp_c", float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))]

    # Renamed "clocks event reasons" in recent drivers; the old name is kept as an alias in older bindings.
    reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )

    def throttle(h: Any) -> list[tuple[str, float]]:
        if reasons_fn is None:
            raise nv.NVMLError(getattr(nv, "NVML_ERROR_NOT_SUPPORTED", 3))
        return [("throttle_reasons", float(reasons_fn(h)))]

    return {
        "utilization": util,
        "memory": memory,
        "clocks": clocks,
        "power": power,
        "temperature": temperature,
        "throttle": throttle,
    }


def _pcie_reader(nv: Any) -> Reader:
    def pcie(h: Any) -> list[tuple[str, float]]:
        return [
            ("pcie_tx_bytes_per_s", float(nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES)) * KB),
            ("pcie_rx_bytes_per_s", float(nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES)) * KB),
        ]

    return pcie


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSampler(BackgroundSampler):
    """Samples every NVML metric of the chosen GPUs every ``interval_s`` (default 100 ms).

    Args:
        devices: NVML indices to sample; ``None`` = every GPU NVML sees.
        pcie_every: read PCIe throughput every this many ticks (0 = never).
        nvml: the NVML binding; ``None`` imports ``pynvml``. Tests pass a stand-in to
            exercise fault paths that real hardware cannot be made to produce.
    """

    source = "nvml"

    def __init__(
        self,
        sink: CounterSink,
        faults: FaultLog,
        interval_s: float = 0.1,
        devices: Sequence[int] | None = None,
        pcie_every: int = 10,
        nvml: ModuleType | Any | None = None,
    ) -> None:
        super().__init__(sink, faults, interval_s)
        self._nvml = nvml
        self._wanted = None if devices is None else list(devices)
        self.pcie_every = pcie_every
        self.devices: list[dict[str, Any]] = []
        """Static facts per sampled GPU: index, name, uuid, pci_bus_id, mem_total_bytes."""
        self.driver_version: str | None = None
        self._handles: list[tuple[int, Any]] = []
        self._readers: dict[int, dict[str, Reader]] = {}
        self._failures: dict[tuple[int, str], int] = {}
        self._pcie: Reader | None = None
        self._tick = 0
        self._initialised = False

    def open(self) -> None:
        nv = self._nvml if self._nvml is not None else load_pynvml()
        self._nvml = nv
        nv.nvmlInit()
        self._initialised = True
        try:
            self.driver_version = _text(nv.nvmlSystemGetDriverVersion())
        except Exception:
            self.driver_version = None
        count = int(nv.nvmlDeviceGetCount())
        indices = range(count) if self._wanted is None else [i for i in self._wanted if 0 <= i < count]
        for index in indices:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            self._handles.append((index, handle))
            self._readers[index] = _readers(nv)
            self.devices.append(self._static_info(nv, index, handle))
        self._pcie = _pcie_reader(nv) if self.pcie_every > 0 else None

    @staticmethod
    def _static_info(nv: Any, index: int, handle: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"index": index}
        for key, call in (
            ("name", lambda: _text(nv.nvmlDeviceGetName(handle))),
            ("uuid", lambda: _text(nv.nvmlDeviceGetUUID(handle))),
            ("pci_bus_id", lambda: _text(nv.nvmlDeviceGetPciInfo(handle).busId)),
            ("mem_total_bytes", lambda: int(nv.nvmlDeviceGetMemoryInfo(handle).total)),
        ):
            try:
                info[key] = call()
            except Exception:
                info[key] = None
        return info

    def sample(self, ts: int) -> list[CounterRow]:
        rows: list[CounterRow] = []
        with_pcie = self._pcie is not None and self._tick % self.pcie_every == 0
        self._tick += 1
        for index, handle in self._handles:
            readers = self._readers[index]
            for key, reader in list(readers.items()):
                self._read(rows, ts, index, handle, key, reader, readers)
            if with_pcie and self._pcie is not None:
                pcie_readers = {"pcie": self._pcie}
                self._read(rows, ts, index, handle, "pcie", self._pcie, pcie_readers)
                if not pcie_readers:
                    self._pcie = None
        return rows

    def _read(
        self,
        rows: list[CounterRow],
        ts: int,
        index: int,
        handle: Any,
        key: str,
        reader: Reader,
        readers: dict[str, Reader],
    ) -> None:
        try:
            values = reader(handle)
        except Exception as exc:
            if self._unsupported(exc):
                readers.pop(key, None)
                self.notes.append(f"GPU {index}: {key} not available through NVML ({type(exc).__name__})")
                return
            failures = self._failures.get((index, key), 0) + 1
            self._failures[(index, key)] = failures
            if failures == 1:
                self.faults.record(f"NVML {key} on GPU {index}", exc)
            if failures >= _MAX_CONSECUTIVE_FAILURES:
                readers.pop(key, None)
                self.notes.append(f"GPU {index}: {key} dropped after {failures} failed NVML calls in a row")
            return
        self._failures.pop((index, key), None)
        rows.extend((ts, index, metric, value, self.source) for metric, value in values)

    def _unsupported(self, exc: Exception) -> bool:
        nv = self._nvml
        names = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
        return any(isinstance(exc, cls) for cls in (getattr(nv, n, None) for n in names) if isinstance(cls, type))

    def close(self) -> None:
        if self._initialised and self._nvml is not None:
            self._initialised = False
            self._nvml.nvmlShutdown()


def is_library_missing(exc: BaseException, nvml: Any | None = None) -> bool:
    """True when NVML itself is absent (no driver: a CPU-only machine), as opposed to failing."""
    if isinstance(exc, ImportError):
        return True
    cls = getattr(nvml, "NVMLError_LibraryNotFound", None) if nvml is not None else None
    if isinstance(cls, type) and isinstance(exc, cls):
        return True
    return type(exc).__name__ in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
