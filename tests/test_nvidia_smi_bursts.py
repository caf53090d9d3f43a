"""nvidia-smi logs without an index column: the GPU of each row recovered from the sampling bursts and the
memory used, on 2-GPU and 8-GPU logs written the way ``nvidia-smi --query-gpu=... --format=csv -l 1`` writes
them (one row per GPU per sample, GPUs in index order, each row stamped with its own millisecond time);
start-up and shutdown idle set aside by GPU001."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from mlprof.counters.loader import load_counters
from mlprof.counters.nvidia_smi import gpu_index_from_bursts
from mlprof.rules.config import RuleConfig
from mlprof.rules.counter_base import CounterContext
from mlprof.rules.engine import diagnose_counters

HEADER = "timestamp, name, utilization.gpu [%], memory.used [MiB], memory.total [MiB]"
START = datetime(2025, 3, 14, 9, 26, 53)


def _write_log(
    path: Path, gpus: int, samples: int, drop: set[tuple[int, int]], idle_edges: int = 0, seed: int = 0
) -> list[int]:
    """Write the log; return the true GPU index of every data row, in file order.

    Each GPU sits at its own memory level (GPU g ~ 10 + 7 g GiB, drifting a little); ``drop`` lists
    (sample, gpu) rows left out (a cut line); the first and last ``idle_edges`` samples are all-idle.
    """
    rng = random.Random(seed)
    lines, truth = [HEADER], []
    for s in range(samples):
        t = START + timedelta(seconds=s)
        for g in range(gpus):
            t += timedelta(milliseconds=rng.randint(1, 6))  # each row is read and stamped in turn
            if (s, g) in drop:
                continue
            edge = s < idle_edges or s >= samples - idle_edges
            util = 0 if edge else rng.randint(60, 99)
            mem = (10 + 7 * g) * 1024 + rng.randint(-200, 200) if not edge else 3
            stamp = t.strftime("%Y/%m/%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"
            lines.append(f"{stamp}, NVIDIA A100-SXM4-80GB, {util} %, {mem} MiB, 81920 MiB")
            truth.append(g)
    path.write_text("\n".join(lines) + "\n")
    return truth


@pytest.mark.parametrize("gpus", [2, 8])
def test_gpu_index_recovered_from_bursts_and_memory(tmp_path: Path, gpus: int) -> None:
    drop = {(5, gpus - 1), (9, 0), (17, gpus // 2)}  # missing rows: a short burst must not shift the others
    truth = _write_log(tmp_path / "smi.csv", gpus, samples=30, drop=drop)
    counters = load_counters(tmp_path / "smi.csv")
    util = counters[counters["metric"] == "gpu_util_pct"]
    assert util["device"].tolist() == truth
    assert sorted(counters["device"].unique().tolist()) == list(range(gpus))
    # Each GPU's memory level is its own: the rows were not swapped between GPUs.
    mem = counters[counters["metric"] == "mem_used_bytes"]
    for g in range(gpus):
        level = mem[mem["device"] == g]["value"].to_numpy() / 2**30
        assert np.all(np.abs(level - (10 + 7 * g)) < 0.25), g


def test_single_gpu_log_with_a_pause_stays_one_gpu() -> None:
    ts = np.concatenate([np.arange(40) * 60, 40 * 60 + 3600 + np.arange(40) * 60]).astype(np.int64) * 10**9
    assert (gpu_index_from_bursts(ts, None) == 0).all()


def test_equal_timestamps_per_sample(tmp_path: Path) -> None:
    """Hand-rolled loggers stamp every GPU of a sample with the same epoch second."""
    ts = np.repeat(np.arange(10, dtype=np.int64) * 10**9, 4)
    assert gpu_index_from_bursts(ts, None).tolist() == [0, 1, 2, 3] * 10


def test_startup_and_shutdown_idle_are_set_aside(tmp_path: Path) -> None:
    _write_log(tmp_path / "edges.csv", 2, samples=60, drop=set(), idle_edges=10)
    ctx = CounterContext(load_counters(tmp_path / "edges.csv"))
    diag = diagnose_counters(ctx, RuleConfig())
    assert "GPU001" not in {f.rule for f in diag.findings}  # busy throughout once started
    util = ctx.util(10.0)
    assert util is not None
    # 10 idle samples at each end, 1 s apart, each holding for one interval (the last one too): ~10 s each.
    assert util.startup_idle_ns == pytest.approx(10e9, rel=0.02)
    assert util.shutdown_idle_ns == pytest.approx(10e9, rel=0.02)
    assert "set aside" in diag.verdicts["GPU001"]
