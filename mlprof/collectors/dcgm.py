"""DCGM samplers: a dcgm-exporter ``/metrics`` endpoint, or ``dcgmi dmon`` on PATH.

DCGM adds what NVML cannot see: the profiling fields (SM active, SM occupancy, tensor
pipe active, DRAM active, PCIe/NVLink bytes). Both samplers write the same canonical
counter names as the NVML sampler, with ``source="dcgm"``, into the same counters file.

* **Exporter** (:class:`DcgmExporterSampler`): GETs the Prometheus text exposition
  every ``interval_s`` (default 1 s; dcgm-exporter itself refreshes every 30 s unless
  started with ``-c``). ``ts`` is the time of the poll (``time.time_ns()``) unless the
  sample carries its own millisecond timestamp.
* **dcgmi** (:class:`DcgmiSampler`): runs ``dcgmi dmon -e <fields> -d <ms>`` and reads
  its table as it streams; ``ts`` is the time each line is read.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from typing import IO

from mlprof.collectors.faults import FaultLog
from mlprof.collectors.output import CounterRow
from mlprof.collectors.sampling import BackgroundSampler, CounterSink
from mlprof.counters.dcgm import DCGM_FIELDS
from mlprof.counters.metrics import MIB

EXPORTER_FIELDS = DCGM_FIELDS
"""dcgm-exporter metric name -> (canonical metric, factor to the canonical unit): the same table the
file parsers in :mod:`mlprof.counters.dcgm` use, so a live poll and a saved dump read alike."""

DMON_FIELDS: dict[int, tuple[str, float]] = {
    203: ("gpu_util_pct", 1.0),
    252: ("mem_used_bytes", MIB),
    1001: ("gr_engine_active", 1.0),
    1002: ("sm_active", 1.0),
    1003: ("sm_occupancy", 1.0),
    1004: ("tensor_active", 1.0),
    1005: ("dram_active", 1.0),
    1009: ("pcie_tx_bytes_per_s", 1.0),
    1010: ("pcie_rx_bytes_per_s", 1.0),
    1011: ("nvlink_tx_bytes_per_s", 1.0),
    1012: ("nvlink_rx_bytes_per_s", 1.0),
}
"""DCGM field id -> (canonical metric, factor). The default ``dcgmi dmon`` field list is these ids in order."""

_SAMPLE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)(?:\s+(?P<ts>-?\d+))?\s*$"
)
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exporter_text(text: str, poll_ns: int) -> list[CounterRow]:
    """Prometheus text from dcgm-exporter -> counter rows (unknown metrics and NaN values skipped).

    The device is the ``gpu`` label (an index); samples without one are skipped.
    """
    rows: list[CounterRow] = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        field = EXPORTER_FIELDS.get(m.group("name"))
        if field is None:
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        gpu = labels.get("gpu", "")
        if not gpu.isdigit():
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        if value != value:  # NaN
            continue
        ts = int(m.group("ts")) * 1_000_000 if m.group("ts") else poll_ns  # exposition timestamps are ms
        metric, factor = field
        rows.append((ts, int(gpu), metric, value * factor, "dcgm"))
    return rows


class DcgmExporterSampler(BackgroundSampler):
    """Polls a dcgm-exporter endpoint such as ``http://localhost:9400/metrics``."""

    source = "dcgm"

    def __init__(
        self, sink: CounterSink, faults: FaultLog, url: str, interval_s: float = 1.0, timeout_s: float = 2.0
    ) -> None:
        super().__init__(sink, faults, interval_s)
        self.url = url
        self.timeout_s = timeout_s
        self.failed_polls = 0

    def _get(self) -> str:
        with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
            data: bytes = resp.read()
        return data.decode("utf-8", errors="replace")

    def open(self) -> None:
        self._get()  # unreachable endpoint: fail now, in the caller, with a clear message

    def sample(self, ts: int) -> list[CounterRow]:
        try:
            text = self._get()
        except OSError as exc:  # a missed poll (exporter restarting) is not worth stopping for
            self.failed_polls += 1
            if self.failed_polls == 1:
                self.faults.record(f"DCGM exporter {self.url}", exc)
            return []
        return parse_exporter_text(text, ts)


def dmon_command(fields: tuple[int, ...], interval_ms: int, executable: str = "dcgmi") -> list[str]:
    return [executable, "dmon", "-e", ",".join(str(f) for f in fields), "-d", str(interval_ms)]


def parse_dmon_line(line: str, fields: tuple[int, ...], ts: int) -> list[CounterRow]:
    """One ``dcgmi dmon`` data line (``GPU 0   0.123  N/A ...``) -> rows; headers and other entities -> []."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != "GPU" or not parts[1].isdigit():
        return []
    device = int(parts[1])
    rows: list[CounterRow] = []
    for field_id, raw in zip(fields, parts[2:], strict=False):
        spec = DMON_FIELDS.get(field_id)
        if spec is None:
            continue
        try:
            value = float(raw)
        except ValueError:  # N/A
            continue
        rows.append((ts, device, spec[0], value * spec[1], "dcgm"))
    return rows


class DcgmiSampler(BackgroundSampler):
    """Streams ``dcgmi dmon`` (profiling fields by default) into the counters sink."""

    source = "dcgm"

    def __init__(
        self,
        sink: CounterSink,
        faults: FaultLog,
        interval_s: float = 0.1,
        fields: tuple[int, ...] = tuple(DMON_FIELDS),
        executable: str | None = None,
    ) -> None:
        super().__init__(sink, faults, interval_s)
        self.fields = fields
        self.executable = executable or shutil.which("dcgmi") or "dcgmi"
        self._proc: subprocess.Popen[str] | None = None

    def open(self) -> None:
        cmd = dmon_command(self.fields, max(1, round(self.interval_s * 1000)), self.executable)
        self._proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: stop() ends it and anything it started
        )

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._read_stream, name="mlprof-dcgmi", daemon=True)
        self._thread.start()

    def _read_stream(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        stream: IO[str] = proc.stdout
        try:
            for line in stream:
                rows = parse_dmon_line(line, self.fields, time.time_ns())
                if rows:
                    self.samples += 1
                    self.sink.add(rows)
                if self._stop.is_set():
                    break
        except Exception as exc:
            self.faults.record("dcgmi dmon reader", exc)
        code = proc.poll()
        if code not in (None, 0) and not self._stop.is_set():
            self.notes.append(f"dcgmi dmon exited with status {code}")

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._proc is not None and self._proc.stdout is not None and not self._thread_alive():
            self._proc.stdout.close()
        self.sink.flush()

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _signal(self, sig: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)  # the group we created for it, nothing else
        except (OSError, AttributeError):
            self._proc.send_signal(sig)

    def sample(self, ts: int) -> list[CounterRow]:  # the stream reader pushes rows itself
        return []
