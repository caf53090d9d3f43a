"""NVML sampler: the real pynvml wherever it can run; a stand-in NVML only for fault paths."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

pynvml = pytest.importorskip("pynvml")

from mlprof.collectors.faults import FaultLog  # noqa: E402
from mlprof.collectors.nvml import NVML_METRICS, NvmlSampler, is_library_missing  # noqa: E402
from mlprof.collectors.output import COUNTER_COLUMNS, CounterFile  # noqa: E402
from mlprof.collectors.sampling import CounterSink  # noqa: E402


def _real_nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


HAS_NVML = _real_nvml_works()


@pytest.mark.skipif(HAS_NVML, reason="this machine has an NVIDIA driver")
def test_real_pynvml_without_a_driver_is_library_missing() -> None:
    """On a CPU machine the real library raises NVMLError_LibraryNotFound: a note, not a fault."""
    faults = FaultLog()
    sampler = NvmlSampler(CounterSink(None, faults), faults)
    with pytest.raises(pynvml.NVMLError) as info:
        sampler.start()
    assert isinstance(info.value, pynvml.NVMLError_LibraryNotFound)
    assert is_library_missing(info.value, pynvml)
    assert faults.errors == []


@pytest.mark.skipif(not HAS_NVML, reason="needs an NVIDIA GPU and driver")
def test_real_pynvml_samples_every_gpu(tmp_path: Path) -> None:
    faults = FaultLog()
    sink = CounterSink(CounterFile(tmp_path / "c.csv"), faults)
    sampler = NvmlSampler(sink, faults, interval_s=0.05, pcie_every=2)
    sampler.start()
    time.sleep(0.5)
    sampler.stop()
    frame = pd.read_csv(tmp_path / "c.csv")
    assert set(frame["device"]) == {d["index"] for d in sampler.devices}
    assert {"gpu_util_pct", "mem_used_bytes", "sm_clock_mhz"} <= set(frame["metric"])
    assert frame["ts"].between(time.time_ns() - 10**10, time.time_ns()).all()


# -- a stand-in NVML for the fault paths -------------------------------------------------


class FakeNVML:
    """Mimics pynvml's surface; ``fail`` maps a function name to the exception it raises."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_Unknown(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = 0, 1

    def __init__(self, gpus: int = 2, fail: dict[str, Exception] | None = None) -> None:
        self.gpus = gpus
        self.fail = fail or {}
        self.calls: dict[str, int] = {}
        self.shutdowns = 0

    def _call(self, name: str, value: Any) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.fail:
            raise self.fail[name]
        return value

    def nvmlInit(self) -> None:
        self._call("nvmlInit", None)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return int(self._call("nvmlDeviceGetCount", self.gpus))

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h:08d}"

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=f"00000000:{h + 0x18:02X}:00.0")

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return self._call("util", SimpleNamespace(gpu=90 + h, memory=40))

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return self._call("memory", SimpleNamespace(used=(1 + h) << 30, total=80 << 30, free=0))

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return int(self._call("clocks", 1980 if kind == self.NVML_CLOCK_SM else 2619))

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self._call("power", 312_500))  # mW

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return int(self._call("temperature", 61))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return int(self._call("throttle", 0x4))

    def nvmlDeviceGetPcieThroughput(self, h: int, counter: int) -> int:
        return int(self._call("pcie", 1500 if counter == self.NVML_PCIE_UTIL_TX_BYTES else 250))  # KB/s


def test_metric_not_supported_is_dropped_with_a_note_not_a_warning() -> None:
    faults = FaultLog()
    nv = FakeNVML(gpus=2, fail={"power": FakeNVML.NVMLError_NotSupported()})
    sampler = NvmlSampler(CounterSink(None, faults), faults, nvml=nv, pcie_every=2)
    sampler.open()
    rows = sampler.sample(123) + sampler.sample(456)
    assert faults.errors == [] and not faults.warned
    assert sampler.notes == [
        "GPU 0: power not available through NVML (NVMLError_NotSupported)",
        "GPU 1: power not available through NVML (NVMLError_NotSupported)",
    ]
    assert nv.calls["power"] == 2  # asked once per GPU, then never again
    first = {(d, m): v for ts, d, m, v, s in rows if ts == 123}
    assert {m for _, m in first} == set(NVML_METRICS) - {"power_w"}
    assert first[(1, "gpu_util_pct")] == 91.0
    assert first[(1, "mem_used_bytes")] == float(2 << 30)
    assert first[(0, "pcie_tx_bytes_per_s")] == 1_500_000.0  # KB/s -> bytes/s
    assert first[(0, "throttle_reasons")] == 4.0
    assert all(s == "nvml" for *_, s in rows)
    assert not any(m.startswith("pcie") for ts, _, m, _, _ in rows if ts == 456)  # pcie_every=2
    assert sampler.devices[1] == {
        "index": 1,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-00000001",
        "pci_bus_id": "00000000:19:00.0",
        "mem_total_bytes": 80 << 30,
    }


def test_a_failing_call_warns_once_and_is_dropped_after_three() -> None:
    faults = FaultLog()
    nv = FakeNVML(gpus=1, fail={"temperature": FakeNVML.NVMLError_Unknown("GPU is lost")})
    sampler = NvmlSampler(CounterSink(None, faults), faults, nvml=nv, pcie_every=0)
    sampler.open()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for i in range(5):
            rows = sampler.sample(i)
    assert len(record) == 1 and "NVML temperature on GPU 0" in str(record[0].message)
    assert nv.calls["temperature"] == 3
    assert sampler.notes == ["GPU 0: temperature dropped after 3 failed NVML calls in a row"]
    assert {m for _, _, m, _, _ in rows} == set(NVML_METRICS) - {"temp_c", "pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s"}


def test_sampler_thread_writes_the_counters_csv(tmp_path: Path) -> None:
    faults = FaultLog()
    sink = CounterSink(CounterFile(tmp_path / "counters.rank0.csv"), faults, flush_every_s=0.05)
    nv = FakeNVML(gpus=2)
    sampler = NvmlSampler(sink, faults, interval_s=0.01, nvml=nv)
    before = time.time_ns()
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    after = time.time_ns()
    assert nv.shutdowns == 1
    frame = pd.read_csv(tmp_path / "counters.rank0.csv")
    assert tuple(frame.columns) == COUNTER_COLUMNS
    assert str(frame["ts"].dtype) == "int64" and frame["ts"].between(before, after).all()
    assert sampler.samples >= 5
    per_tick = frame.groupby("ts").size()
    assert set(per_tick) <= {18, 22}  # 9 metrics x 2 GPUs, + PCIe tx/rx x 2 GPUs every 10th tick
    assert len(frame) == sink.rows_seen == sink.file.rows_written  # type: ignore[union-attr]
    try:
        from mlprof.counters.metrics import METRICS
    except ImportError:
        return
    assert set(frame["metric"]) <= set(METRICS)  # canonical names of the counters table


def test_counter_write_failure_keeps_rows_and_warns_once(tmp_path: Path) -> None:
    target = tmp_path / "counters.rank0.csv"
    target.mkdir()  # a real obstacle: the file cannot be opened for appending
    faults = FaultLog()
    sink = CounterSink(CounterFile(target), faults)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sink.add([(1, 0, "power_w", 300.0, "nvml")])
        sink.flush()
        sink.add([(2, 0, "power_w", 301.0, "nvml")])
        sink.flush()
    assert len(record) == 1 and len(faults.errors) == 2
    assert [r[0] for r in sink.buffered()] == [1, 2]  # kept, in order, for a later flush
    target.rmdir()
    sink.flush()
    assert pd.read_csv(target)["value"].tolist() == [300.0, 301.0]


def test_profile_with_nvml_faults_keeps_training_and_writes_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    import mlprof
    from mlprof.collectors import nvml as nvml_mod

    nv = FakeNVML(gpus=1, fail={"temperature": FakeNVML.NVMLError_Unknown("boom")})
    monkeypatch.setattr(nvml_mod, "load_pynvml", lambda: nv)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(name="nv", out_dir=tmp_path, summary=False, nvml_interval_s=0.01, wait=0, active=2) as run:
            for _ in range(3):
                torch.ones(8).sum()
                time.sleep(0.05)
                run.step()
    assert len([w for w in record if str(w.message).startswith("mlprof")]) == 1
    meta = json.loads((tmp_path / "nv" / "meta.json").read_text())
    assert meta["counters"]["file"] == "counters.rank0.csv" and meta["counters"]["rows_written"] > 0
    (source,) = meta["counters"]["sources"]
    assert source["source"] == "nvml" and source["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert meta["gpus"]["driver_version"] == "550.54.15"
    assert meta["errors"] == ["NVML temperature on GPU 0: NVMLError_Unknown: boom"]
    frame = pd.read_csv(tmp_path / "nv" / "counters.rank0.csv")
    assert len(frame) == meta["counters"]["rows_written"] and "temp_c" not in set(frame["metric"])


def test_profile_nvml_init_failure_with_a_gpu_is_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    import mlprof
    from mlprof.collectors import nvml as nvml_mod
    from mlprof.collectors import profile as profile_mod

    monkeypatch.setattr(nvml_mod, "load_pynvml", lambda: FakeNVML(fail={"nvmlInit": FakeNVML.NVMLError_Unknown()}))
    monkeypatch.setattr(profile_mod, "_cuda_available", lambda: True)  # a GPU machine whose NVML is broken
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(name="nv", out_dir=tmp_path, summary=False, cuda=False, wait=0, active=1) as run:
            for _ in range(3):  # warm-up 2, then 1 recorded
                torch.ones(1)
                run.step()
    msgs = [str(w.message) for w in record if str(w.message).startswith("mlprof")]
    assert len(msgs) == 1 and "starting the NVML sampler" in msgs[0]
    assert (tmp_path / "nv" / "trace.rank0.json.gz").exists()
