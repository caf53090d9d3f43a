"""DCGM samplers against real endpoints: a local http.server serving dcgm-exporter text, a dmon stream."""

from __future__ import annotations

import http.server
import json
import os
import stat
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mlprof.collectors.dcgm import (
    DMON_FIELDS,
    DcgmExporterSampler,
    DcgmiSampler,
    parse_dmon_line,
    parse_exporter_text,
)
from mlprof.collectors.faults import FaultLog
from mlprof.collectors.output import CounterFile
from mlprof.collectors.sampling import CounterSink

# The shape dcgm-exporter 3.x serves (default + profiling counters, two GPUs), saved as a file.
EXPORTER_TEXT = (Path(__file__).parent / "data" / "dcgm_exporter_metrics.prom").read_text(encoding="utf-8")


class _Handler(http.server.BaseHTTPRequestHandler):
    body = EXPORTER_TEXT.encode()
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        if self.path != "/metrics":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def exporter() -> Iterator[http.server.ThreadingHTTPServer]:
    """A real HTTP server on a free localhost port, serving exporter text at /metrics."""
    _Handler.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: http.server.ThreadingHTTPServer, path: str = "/metrics") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_parse_exporter_text_units_labels_and_skips() -> None:
    rows = parse_exporter_text(EXPORTER_TEXT, 1_000)
    got = {(dev, metric): value for ts, dev, metric, value, src in rows}
    assert all(ts == 1_000 and src == "dcgm" for ts, *_, src in rows)
    assert got == {
        (0, "sm_clock_mhz"): 1980.0,
        (1, "sm_clock_mhz"): 1755.0,
        (0, "gpu_util_pct"): 97.0,
        (1, "gpu_util_pct"): 12.0,
        (0, "mem_used_bytes"): 61234.0 * 2**20,  # MiB -> bytes
        (1, "mem_used_bytes"): 1024.0 * 2**20,
        (0, "power_w"): 612.337,
        (0, "sm_active"): 0.912345,  # GPU 1's NaN is dropped; XID errors are not a counter we keep
        (0, "tensor_active"): 0.4512,
        (0, "dram_active"): 0.333,
        (0, "pcie_tx_bytes_per_s"): 123456789.0,
    }


def test_exposition_timestamps_are_milliseconds() -> None:
    rows = parse_exporter_text('DCGM_FI_DEV_GPU_UTIL{gpu="3"} 55 1712195495505\n', 7)
    assert rows == [(1712195495505_000_000, 3, "gpu_util_pct", 55.0, "dcgm")]


def test_sampler_polls_a_real_http_endpoint(exporter: http.server.ThreadingHTTPServer, tmp_path: Path) -> None:
    faults = FaultLog()
    sink = CounterSink(CounterFile(tmp_path / "c.csv"), faults)
    sampler = DcgmExporterSampler(sink, faults, _url(exporter), interval_s=0.05)
    before = time.time_ns()
    sampler.start()
    time.sleep(0.3)
    sampler.stop()
    assert faults.errors == []
    frame = pd.read_csv(tmp_path / "c.csv")
    polls = frame["ts"].nunique()
    assert polls == sampler.samples and polls >= 3 and _Handler.hits >= polls + 1  # +1: the check in open()
    assert len(frame) == 11 * polls
    assert frame["ts"].min() >= before
    sm = frame[(frame["metric"] == "sm_active") & (frame["device"] == 0)]["value"]
    assert (sm == 0.912345).all()


def test_endpoint_down_is_one_warning_and_the_job_goes_on(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import mlprof

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(
            name="d", out_dir=tmp_path, summary=False, dcgm_url="http://127.0.0.1:9/metrics", wait=0, active=1
        ) as run:
            for _ in range(3):
                torch.ones(2).sum()
                run.step()
    msgs = [str(w.message) for w in record if str(w.message).startswith("mlprof")]
    assert len(msgs) == 1 and "starting the DCGM sampler (http://127.0.0.1:9/metrics)" in msgs[0]
    assert (tmp_path / "d" / "trace.rank0.json.gz").exists()


def test_profile_writes_dcgm_rows_and_survives_the_exporter_going_away(
    exporter: http.server.ThreadingHTTPServer, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    import mlprof

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(
            name="d", out_dir=tmp_path, summary=False, dcgm_url=_url(exporter), dcgm_interval_s=0.05, wait=0, active=2
        ) as run:
            for i in range(4):
                torch.ones(2).sum()
                time.sleep(0.1)
                if i == 2:
                    exporter.shutdown()
                    exporter.server_close()
                run.step()
    msgs = [str(w.message) for w in record if str(w.message).startswith("mlprof")]
    assert len(msgs) == 1 and "DCGM exporter" in msgs[0]  # the first failed poll; later ones are counted
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    (source,) = meta["counters"]["sources"]
    assert source["source"] == "dcgm" and source["url"] == _url(exporter)
    frame = pd.read_csv(tmp_path / "d" / "counters.rank0.csv")
    assert set(frame["source"]) == {"dcgm"} and len(frame) == meta["counters"]["rows_written"] > 0
    assert set(frame["device"]) == {0, 1}


# -- dcgmi dmon -------------------------------------------------------------------------

# Lines as `dcgmi dmon -e 203,252,1001,...` prints them (DCGM 3.x): a header, the ID row, then data.
DMON_OUTPUT = """\
#Entity   GPUTL  FBUSD  GRACT  SMACT  SMOCC  TENSO  DRAMA  PCITX  PCIRX  NVLTX  NVLRX
ID
GPU 0     98     61234  0.991  0.912  0.455  0.451  0.333  1.2e+08  3.4e+07  N/A    N/A
GPU 1     11     1024   0.120  0.050  0.010  0.000  0.002  1000   2000   0      0
"""


def test_parse_dmon_lines() -> None:
    fields = tuple(DMON_FIELDS)
    lines = DMON_OUTPUT.splitlines()
    assert parse_dmon_line(lines[0], fields, 5) == [] and parse_dmon_line(lines[1], fields, 5) == []
    gpu0 = {m: v for _, d, m, v, _ in parse_dmon_line(lines[2], fields, 5)}
    assert gpu0["gpu_util_pct"] == 98.0 and gpu0["mem_used_bytes"] == 61234.0 * 2**20
    assert gpu0["sm_active"] == 0.912 and gpu0["pcie_tx_bytes_per_s"] == 1.2e8
    assert "nvlink_tx_bytes_per_s" not in gpu0  # N/A
    assert len(parse_dmon_line(lines[3], fields, 5)) == 11


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stand-in")
def test_dcgmi_stream_is_read_as_it_arrives(tmp_path: Path) -> None:
    """A stand-in `dcgmi` executable (no DCGM here) prints real dmon output and keeps running, like dmon does."""
    script = tmp_path / "dcgmi"
    body = "".join(f"echo '{line}'\n" for line in DMON_OUTPUT.splitlines())
    script.write_text(f"#!/bin/sh\n{body}for i in 1 2 3; do echo 'GPU 0 50 100 0.5'; sleep 0.05; done\nsleep 30\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    faults = FaultLog()
    sink = CounterSink(CounterFile(tmp_path / "c.csv"), faults)
    sampler = DcgmiSampler(sink, faults, interval_s=0.05, executable=str(script))
    sampler.start()
    time.sleep(0.6)
    t0 = time.monotonic()
    sampler.stop()
    assert time.monotonic() - t0 < 3  # terminated, not waited for
    frame = pd.read_csv(tmp_path / "c.csv")
    assert sampler.samples == 5 and len(frame) == 9 + 11 + 3 * 3  # GPU 0: two N/A fields
    assert faults.errors == [] and os.path.exists(tmp_path / "c.csv")
