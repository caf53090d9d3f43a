"""Counter files -> the counters table: nvidia-smi, dcgmi dmon, dcgm-exporter, mlprof CSV, nsys GPU metrics.

Real file: the RCKola nvidia-smi log (CATALOG.md row 25). Other formats: hand-written
samples in tests/data/counters built from the documented formats (see its README).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlprof.cli import main
from mlprof.counters import METRICS, load_counters
from mlprof.counters.metrics import MIB, make_counters
from mlprof.errors import BadInputError

from conftest import SAMPLES, external

DATA = Path(__file__).resolve().parent / "data" / "counters"
RCKOLA = "RCKola__Rectified-Point-Flow/gpu_usage.csv"


def by_metric(frame: pd.DataFrame, metric: str, device: int = 0) -> np.ndarray:
    rows = frame[(frame["metric"] == metric) & (frame["device"] == device)]
    return rows["value"].to_numpy()


def check_table(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["ts", "device", "metric", "value", "source"]
    assert frame["ts"].dtype == np.int64 and frame["device"].dtype == np.int64
    assert frame["value"].dtype == np.float64
    assert isinstance(frame["metric"].dtype, pd.CategoricalDtype)
    assert set(frame["metric"].astype(str)) <= METRICS.keys()
    assert frame["ts"].is_monotonic_increasing
    assert np.isfinite(frame["value"]).all()


# ---- the real nvidia-smi log ---------------------------------------------------------


def test_real_nvidia_smi_log() -> None:
    frame = load_counters(external(RCKOLA))
    check_table(frame)
    assert frame.attrs["format"] == "nvidia-smi" and frame.attrs["time_base"] == "epoch"
    util = by_metric(frame, "gpu_util_pct")
    used = by_metric(frame, "mem_used_bytes")
    assert len(util) == len(used) == 90
    assert util.mean() == pytest.approx(57.678, abs=1e-3)  # catalog: mean util 58%
    assert used.max() == 10904 * MIB  # catalog: memory ramps to 10.9 GB (MiB as logged)
    assert used[0] == 1 * MIB
    assert set(by_metric(frame, "mem_total_bytes")) == {24576 * MIB}
    assert frame["ts"].iloc[0] == 1764189075 * 10**9  # epoch seconds -> ns
    assert (frame["source"] == "nvidia-smi").all()


# ---- nvidia-smi variants -------------------------------------------------------------


def test_nvidia_smi_with_units_interleaved_and_repeated_header() -> None:
    frame = load_counters(DATA / "nvidia_smi_units.csv")
    check_table(frame)
    assert frame.attrs["time_base"] == "epoch (naive local time read as UTC)"
    assert by_metric(frame, "gpu_util_pct", 0).tolist() == [37, 95, 96]
    assert by_metric(frame, "gpu_util_pct", 1).tolist() == [0, 0]  # [N/A] dropped
    assert by_metric(frame, "power_w", 1).tolist() == [55.10, 55.00]  # [Not Supported] dropped
    assert by_metric(frame, "mem_used_bytes", 0).tolist() == [1024 * MIB, 2048 * MIB, 3072 * MIB]
    assert by_metric(frame, "throttle_reasons", 0).tolist() == [0, 4, 4]
    assert by_metric(frame, "sm_clock_mhz", 0).tolist() == [1410, 1275, 1275]
    first = frame["ts"].min()
    assert first == pd.Timestamp("2024-01-15 10:23:45.123", tz="UTC").value


def test_nvidia_smi_nounits_devices_by_bus_id() -> None:
    frame = load_counters(DATA / "nvidia_smi_nounits.csv")
    check_table(frame)
    assert by_metric(frame, "gpu_util_pct", 0).tolist() == [37, 41]
    assert by_metric(frame, "gpu_util_pct", 1).tolist() == [5, 7]
    assert by_metric(frame, "mem_used_bytes", 0).tolist() == [1024 * MIB, 1536 * MIB]


def test_nvidia_smi_without_device_column_uses_position_in_sample(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("timestamp,utilization.gpu\n1700000000,10\n1700000000,20\n1700000001,30\n1700000001,40\n")
    frame = load_counters(path)
    assert by_metric(frame, "gpu_util_pct", 0).tolist() == [10, 30]
    assert by_metric(frame, "gpu_util_pct", 1).tolist() == [20, 40]


def test_gzipped_nvidia_smi(tmp_path: Path) -> None:
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress((DATA / "nvidia_smi_nounits.csv").read_bytes()))
    assert len(load_counters(path)) == len(load_counters(DATA / "nvidia_smi_nounits.csv"))


# ---- DCGM ----------------------------------------------------------------------------


def test_dcgmi_dmon() -> None:
    frame = load_counters(DATA / "dcgmi_dmon.txt")
    check_table(frame)
    assert frame.attrs["format"] == "dcgmi-dmon" and frame.attrs["time_base"] == "relative"
    assert by_metric(frame, "sm_active", 0).tolist() == [0.912, 0.905]  # N/A dropped
    assert by_metric(frame, "gpu_util_pct", 1).tolist() == [88, 90, 89]
    assert by_metric(frame, "mem_used_bytes", 0).tolist() == [30542 * MIB, 30600 * MIB, 30700 * MIB]
    ts = frame[(frame["metric"] == "power_w") & (frame["device"] == 0)]["ts"].tolist()
    assert ts == [0, 1_000_000_000, 2_000_000_000]  # dmon's default 1 s delay


def test_dcgm_exporter_prometheus() -> None:
    frame = load_counters(DATA / "dcgm_exporter.prom")
    check_table(frame)
    assert frame.attrs["format"] == "dcgm-exporter"
    assert by_metric(frame, "gpu_util_pct", 0).tolist() == [87]
    assert by_metric(frame, "gpu_util_pct", 1).tolist() == [5]
    assert by_metric(frame, "mem_used_bytes", 0).tolist() == [74112 * MIB]
    assert by_metric(frame, "sm_active", 1).tolist() == [0.03]
    assert by_metric(frame, "tensor_active", 0).tolist() == [0.61]
    assert by_metric(frame, "nvlink_tx_bytes_per_s", 0).tolist() == [123456789]
    assert by_metric(frame, "pcie_rx_bytes_per_s", 0).tolist() == [4096]
    assert (frame["source"] == "dcgm").all()


def test_dcgm_exporter_prometheus_with_timestamps() -> None:
    frame = load_counters(DATA / "dcgm_exporter_timestamps.prom")
    assert frame.attrs["time_base"] == "epoch"
    assert frame["ts"].tolist() == [1705314225000 * 10**6, 1705314226000 * 10**6, 1705314227000 * 10**6]
    assert frame["value"].tolist() == [10, 20, 30]


def test_prometheus_scrapes_appended_without_timestamps(tmp_path: Path) -> None:
    one = (DATA / "dcgm_exporter.prom").read_text()
    path = tmp_path / "scrapes.prom"
    path.write_text(one + one.replace("} 87", "} 90"))
    frame = load_counters(path)
    util = frame[(frame["metric"] == "gpu_util_pct") & (frame["device"] == 0)]
    assert util["value"].tolist() == [87, 90]
    assert util["ts"].tolist() == [0, 1_000_000_000]


def test_dcgm_csv_long_and_wide() -> None:
    long = load_counters(DATA / "dcgm_long.csv")
    check_table(long)
    assert by_metric(long, "gpu_util_pct").tolist() == [50, 70]
    assert by_metric(long, "mem_used_bytes").tolist() == [1000 * MIB, 1100 * MIB]
    assert long["ts"].min() == 1705314225 * 10**9
    wide = load_counters(DATA / "dcgm_wide.csv")
    check_table(wide)
    assert by_metric(wide, "sm_active", 1).tolist() == [0.6, 0.8]
    assert wide["ts"].min() == pd.Timestamp("2024-01-15T10:23:45Z").value


# ---- mlprof's own file and nsys --------------------------------------------------------


def test_mlprof_counters_file_gzipped() -> None:
    frame = load_counters(DATA / "mlprof_counters.csv.gz")
    check_table(frame)
    assert frame.attrs["format"] == "mlprof"
    assert frame["metric"].astype(str).tolist() == ["gpu_util_pct", "mem_used_bytes", "sm_active"]
    assert frame["source"].astype(str).tolist() == ["nvml", "nvml", "dcgm"]
    assert frame.attrs["notes"]  # the unknown metric row is reported, not silently kept


def test_nsys_gpu_metrics_from_generated_export() -> None:
    frame = load_counters(SAMPLES / "synthetic" / "nsys_pytorch_like.sqlite")
    check_table(frame)
    assert frame.attrs["format"] == "nsys-sqlite" and frame.attrs["time_base"] == "epoch"
    assert set(frame["metric"].astype(str)) == {"gr_engine_active", "sm_active", "tensor_active"}
    assert frame["value"].between(0, 1).all()  # percent -> ratio
    assert len(frame) == 90


def test_nsys_export_without_gpu_metrics_is_empty_with_a_note() -> None:
    frame = load_counters(external("hpcgroup__pipit/perlmutter-cloverleaf-cuda.sqlite"))
    assert len(frame) == 0
    assert "gpu-metrics" in frame.attrs["notes"][0]


def test_make_counters_rejects_non_canonical_names() -> None:
    with pytest.raises(KeyError):
        make_counters(np.array([1]), np.array([0]), ["utilization"], np.array([1.0]), "nvml")


# ---- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n", b"garbage that is no format\n1,2,3\n", b"\x1f\x8b\x08\x00broken gzip", b"\x00\x01\x02binary"],
    ids=["empty", "blank", "garbage", "bad-gzip", "binary"],
)
def test_bad_counters_file_is_one_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "counters.csv"
    path.write_bytes(content)
    with pytest.raises(BadInputError) as err:
        load_counters(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file"):
        load_counters(tmp_path / "nope.csv")
    with pytest.raises(BadInputError, match="directory"):
        load_counters(tmp_path)


def test_nvidia_smi_without_timestamp_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("index, utilization.gpu [%]\n0, 10 %\n")
    with pytest.raises(BadInputError, match="timestamp"):
        load_counters(path)


def test_dmon_without_known_columns_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "dmon.txt"
    path.write_text("#Entity   XXXXX\nID\nGPU 0     1\n")
    with pytest.raises(BadInputError, match="not known"):
        load_counters(path)


def test_non_nsys_sqlite_is_bad_input(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(BadInputError, match="not an Nsight Systems export"):
        load_counters(path)


def test_counters_file_given_to_analyze_is_read_as_counters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A counters CSV passed as the trace is sniffed and analysed as counters; garbage is still one error line."""
    path = tmp_path / "gpu.csv"
    path.write_bytes((DATA / "nvidia_smi_units.csv").read_bytes())
    assert main(["analyze", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "GPU003" in out  # GPU 1 sits at 0% while GPU 0 works
    path.write_bytes(b"timestamp;gpu;junk\n\x00\x01\x02\n")
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("mlprof: error:")
