"""The GPU ground-truth script (sample_traces/scenarios/gpu/run_all.py) run for real, and its recordings.

On this CPU machine the script runs end to end with ``--cpu`` on a reduced set (one
scenario both ways, one whose fix needs CUDA) and must produce what a GPU session
brings back: the manifest and an archive of run folders that mlprof loads and analyses.
The manifest's step times come from the script's own clock; mlprof measures the same
steps from the profiler's trace; the two must agree.

The children run with the packages the GPU machine lacks (msgspec, sqlalchemy, plotly,
streamlit) made unimportable, so a recording session there cannot fail on an import.

``test_gpu_recording_*`` read ``sample_traces/scenarios/gpu/recorded/`` (unpacked from a
GPU session's ``recorded*.tar.gz``) and skip, saying so, until a GPU session has made it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from mlprof.trace.loader import load_job

from conftest import SAMPLES

GPU_DIR = SAMPLES / "scenarios" / "gpu"
RUN_ALL = GPU_DIR / "run_all.py"
GPU_RECORDED = GPU_DIR / "recorded"
REPO = SAMPLES.parent
ABSENT_ON_GPU_MACHINE = ("msgspec", "sqlalchemy", "plotly", "streamlit")
TOLERANCE = 0.20
"""Predicted vs measured speedup on the GPU recordings (the issue's bar)."""

sys.path.insert(0, str(GPU_DIR))
import run_all  # noqa: E402
import truth_table  # noqa: E402

BLOCKER = f"""
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_ON_GPU_MACHINE!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
        return None
sys.meta_path.insert(0, _Absent())
"""


def _env(tmp: Path) -> dict[str, str]:
    (tmp / "sitecustomize.py").write_text(BLOCKER)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), str(REPO)]), CUDA_VISIBLE_DEVICES="")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("run_all")
    blocker = tmp_path_factory.mktemp("blocker")
    args = ["--cpu", "--out", str(out), "--only", "memory_leak", "--only", "launch_bound"]
    args += ["--steps", "10", "--wall-steps", "3", "--overhead-repeats", "0"]
    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), *args], env=_env(blocker), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for archive in sorted(out.glob("recorded*.tar.gz")):
        with tarfile.open(archive) as tar:
            tar.extractall(out / "unpacked", filter="data")
    return out, json.loads((out / "manifest.json").read_text())


def test_cpu_run_writes_manifest_and_archive(cpu_run: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = cpu_run
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "recorded.tar.gz", "run_all.log", "unpacked"]
    recorded = out / "unpacked" / "recorded"
    assert json.loads((recorded / "manifest.json").read_text()) == manifest
    assert manifest["device"] == "cpu" and manifest["cpu_mode_note"].startswith("CPU run")
    assert manifest["machine"]["torch"] and manifest["machine"]["gpu"] is None
    assert manifest["overhead"] == {"status": "not run", "why": "--overhead-repeats 0"}
    assert manifest["nvml_tests"]["status"] == "not run"
    assert manifest["archives"] == {"recorded.tar.gz": ["memory_leak", "launch_bound"]}
    assert manifest["left_out"] == {}
    assert set(manifest["scenarios"]) == {"memory_leak", "launch_bound"}
    leak, launch = manifest["scenarios"]["memory_leak"], manifest["scenarios"]["launch_bound"]
    for entry in (leak["bad"], leak["fixed"], launch["bad"]):
        assert entry["status"] == "ok", entry
        folder = recorded / entry["dir"]
        assert {p.name: p.stat().st_size for p in folder.iterdir()} == entry["files"]
        sanity = entry["sanity"]
        assert sanity["ok"] and sanity["steps"]["ok"] and sanity["ranges"]["host"] == 10
        assert sanity["kernels"]["ok"] is None and sanity["counters"]["ok"] is None  # said, not faked
        assert entry["host_step_ns"]["n"] == 10 and entry["device_step_ns"] is None
    assert launch["fixed"]["status"] == "skipped" and "CUDA" in launch["fixed"]["why"]
    assert launch["speedup"]["host_median"] is None
    assert leak["rule"] == "MEM001" and leak["speedup"]["host_median"] > 0


def test_manifest_step_times_equal_what_mlprof_measures(cpu_run: tuple[Path, dict[str, Any]]) -> None:
    """Script clock (manifest) vs profiler trace read by mlprof: the same 10 steps, the same durations."""
    out, manifest = cpu_run
    for name, entry in manifest["scenarios"].items():
        for variant in ("bad", "fixed"):
            info = entry[variant]
            if info["status"] != "ok":
                continue
            (trace,) = load_job(out / "unpacked" / "recorded" / info["dir"])
            first, last = info["profiled_steps"]
            assert trace.steps["step"].tolist() == list(range(first, last + 1)), name
            durs = trace.steps["dur"].tolist()
            # the manifest's exact-decimal read of the trace and mlprof's reader agree to the ns
            assert info["trace_step_ns"]["median"] == round(statistics.median(durs))
            assert info["trace_step_ns"]["min"] == min(durs) and info["trace_step_ns"]["max"] == max(durs)
            # The script's clock and the profiler agree step by step: the typical step within 2%, and
            # 8 of 10 within 10% (or 0.3 ms). Not all 10: on a loaded VM the process can be preempted
            # between the script's timestamp and the profiler's (one step read 2.97 ms vs 15.2 ms).
            meta = json.loads((out / "unpacked" / "recorded" / info["dir"] / "meta.json").read_text())
            host = meta["user"]["scenario"]["host_step_ns"][first : last + 1]
            assert round(statistics.median(host)) == info["host_step_ns"]["median"]
            rel = [abs(h - d) / d for h, d in zip(host, durs, strict=True)]
            assert statistics.median(rel) <= 0.02, (name, variant, host, durs)
            close = [abs(h - d) <= max(0.10 * d, 300_000) for h, d in zip(host, durs, strict=True)]
            assert sum(close) >= 8, (name, variant, host, durs)


def test_memory_rule_on_the_cpu_run(cpu_run: tuple[Path, dict[str, Any]]) -> None:
    """MEM001 needs no GPU: it fires on the leaking run and not on the fixed one, through mlprof.analyze.

    (A timing rule is not asserted on this run: on a shared 2-core VM one run each way of
    data_starvation measured anything from 0.9x to 6.5x. The committed CPU recordings,
    test_scenario_truth, and the GPU recordings, below, hold the predictions to measurements.)"""
    out, manifest = cpu_run
    entry = manifest["scenarios"]["memory_leak"]
    bad, fixed = (_analysis(out / "unpacked" / "recorded" / entry[v]["dir"]) for v in ("bad", "fixed"))
    (finding,) = _matching(bad, entry)
    # The scenario keeps 0.5 MiB of autograd graph per step. On this live run other allocations sometimes
    # land on a step boundary (0.59 MiB/step seen once in three full runs), so the live figure is held to
    # [0.48, 0.75]; the committed recordings hold MEM001 to the exact figure (test_scenario_truth).
    assert 0.48 <= finding["evidence"]["growth_mib_per_step"] <= 0.75
    assert not _matching(fixed, entry)


def test_truth_table_of_the_cpu_run(cpu_run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    out, manifest = cpu_run
    recorded = out / "unpacked" / "recorded"
    rows = {r["scenario"]: r for r in truth_table.rows(recorded)}
    leak = rows["memory_leak"]
    assert leak["fires_on_bad"] is True and leak["fixed_time_lost_ratio"] == 0.0
    assert leak["measured"] == manifest["scenarios"]["memory_leak"]["speedup"]["host_median"]
    launch = rows["launch_bound"]
    assert launch["status"] == {"bad": "ok", "fixed": "skipped"} and launch["predicted"] is None
    assert truth_table.main([str(recorded)]) == 0
    table = capsys.readouterr().out
    assert "| launch_bound | cuda_graphs | LAUNCH001 | bad: ok; fixed: skipped (the fix (CUDA graphs" in table
    assert f"| memory_leak | detach_metric | MEM001 | {leak['measured']:.3f}x |" in table
    assert truth_table.main([str(out / "nowhere")]) == 2


def test_run_all_needs_a_gpu_or_cpu_flag(tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--cpu" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_run_all_never_overwrites_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("mine")
    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), "--cpu", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "exists" in proc.stderr
    assert (tmp_path / "manifest.json").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_every_fix_type_of_the_issue_has_a_scenario() -> None:
    """Each scenario named in run_all exists as a script (attention comes from its own issue)."""
    fix_types = {s.fix_type for s in run_all.SCENARIOS}
    assert fix_types >= {
        "dataloader_workers",
        "item_every_n",
        "fused_optimizer",
        "bf16_autocast",
        "torch_compile",
        "cuda_graphs",
        "sdpa",
        "detach_metric",
        "pinned_h2d",
        "ddp_overlap",
    }
    missing = [s.name for s in run_all.SCENARIOS if not (SAMPLES / "scenarios" / f"{s.name}.py").exists()]
    assert set(missing) <= {"attention"}, missing


# -- the GPU recordings, once a GPU session has made them -------------------------------------


@cache
def _gpu_manifest() -> dict[str, Any]:
    return json.loads((GPU_RECORDED / "manifest.json").read_text())


@cache
def _analysis(folder: Path) -> list[dict[str, Any]]:
    """The findings mlprof reports for a run folder (mlprof.analyze, counters included)."""
    return truth_table.findings(folder)


def _gpu_entry(name: str) -> dict[str, Any]:
    if not (GPU_RECORDED / "manifest.json").exists():
        pytest.skip(
            "no GPU recordings yet: sample_traces/scenarios/gpu/recorded/ is made by running "
            "sample_traces/scenarios/gpu/run_all.sh on a GPU machine (see sample_traces/README.md)"
        )
    manifest = _gpu_manifest()
    entry = manifest["scenarios"].get(name)
    if entry is None or any(entry[v]["status"] != "ok" for v in ("bad", "fixed")):
        why = {v: (entry or {}).get(v, {}).get("why") for v in ("bad", "fixed")}
        pytest.skip(f"{name} was not recorded both ways on the GPU: {why}")
    return entry


_matching = truth_table.matching


def test_gpu_recording_machine_is_described() -> None:
    _gpu_entry("sync_item")
    manifest = _gpu_manifest()
    machine = manifest["machine"]
    assert manifest["device"] == "cuda" and not manifest["cpu_mode"]
    assert machine["gpu"] and machine["driver"] and machine["torch"] and machine["cuda"]
    assert manifest["overhead"]["status"] == "ok"
    assert manifest["nvml_tests"]["status"] == "ok" and "passed" in manifest["nvml_tests"]["summary"]


@pytest.mark.parametrize("name", [s.name for s in run_all.SCENARIOS])
def test_gpu_recording_is_sane(name: str) -> None:
    entry = _gpu_entry(name)
    for variant in ("bad", "fixed"):
        sanity = entry[variant]["sanity"]
        assert sanity["steps"]["ok"] and sanity["kernels"]["ok"] and sanity["ranges"]["ok"], sanity
        assert sanity["counters"]["ok"], sanity["counters"]
        assert entry[variant]["host_step_ns"]["n"] >= 10


@pytest.mark.parametrize("name", [s.name for s in run_all.SCENARIOS])
def test_gpu_recording_rule_fires_on_bad_only_and_predicts_the_speedup(name: str) -> None:
    entry = _gpu_entry(name)
    bad = _analysis(GPU_RECORDED / entry["bad"]["dir"])
    fixed = _analysis(GPU_RECORDED / entry["fixed"]["dir"])
    found = _matching(bad, entry)
    assert found, f"{entry['rule'] or entry['category']} did not fire on {name}/bad"
    left = _matching(fixed, entry)
    assert not left or left[0]["time_lost_ms_per_step"] < found[0]["time_lost_ms_per_step"] / 4, left
    if entry["judged_on"] == "memory":  # a leak costs memory, not step time
        return
    measured = entry["speedup"]["host_median"]
    predicted = found[0]["expected_speedup"]
    assert predicted == pytest.approx(measured, rel=TOLERANCE), (predicted, measured)


def test_pack_keeps_scenarios_whole_and_archives_under_the_limit(tmp_path: Path) -> None:
    """The device tool brings back at most 8 files of 16 MiB: scenarios are packed whole, in order."""
    for name, size in [("a", 600_000), ("b", 500_000), ("c", 900_000), ("d", 3_000_000)]:
        (tmp_path / name / "bad").mkdir(parents=True)
        (tmp_path / name / "bad" / "trace.rank0.json.gz").write_bytes(os.urandom(size))
    groups, left = run_all.pack(tmp_path, ["a", "b", "c", "d", "missing"], 1_300_000)
    assert groups == [["a", "b"], ["c"]]  # a+b = 1,231,072 bytes with the 64 KiB allowance each
    assert list(left) == ["d"] and "over the 1 MiB archive limit" in left["d"]
    many = [f"s{i}" for i in range(run_all.MAX_ARCHIVES + 1)]
    for name in many:
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_bytes(os.urandom(1_000_000))
    groups, left = run_all.pack(tmp_path, many, 1_100_000)
    assert groups == [[n] for n in many[: run_all.MAX_ARCHIVES]]
    assert list(left) == [many[-1]] and left[many[-1]].startswith("no room")


def test_a_run_past_its_timeout_is_ended_with_what_it_started(tmp_path: Path) -> None:
    """comm_no_overlap spawns two ranks; at its timeout the whole process group goes, the manifest says so."""
    out = tmp_path / "out"
    args = ["--cpu", "--out", str(out), "--only", "comm_no_overlap", "--steps", "10", "--wall-steps", "5000"]
    args += ["--timeout-scale", "0.1", "--overhead-repeats", "0"]  # 12 s instead of 120
    mark = f"{os.getpid()}-{time.time_ns()}"
    env = dict(_env(tmp_path), MLPROF_TEST_TIMEOUT_MARK=mark)  # inherited by every descendant
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(RUN_ALL), *args], env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Ending only the child left the ranks holding its output pipes, and run_all waited for them
    # (measured: 162 s with 500 wall steps, against 51 s); with 5000 they would run for minutes.
    assert elapsed < 120, elapsed
    entry = json.loads((out / "manifest.json").read_text())["scenarios"]["comm_no_overlap"]
    for variant in ("bad", "fixed"):
        assert entry[variant]["status"] == "timeout" and entry[variant]["why"] == "no result within 12 s"
    needle = f"MLPROF_TEST_TIMEOUT_MARK={mark}".encode()
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes():
                left.append(environ.parent.name)
        except OSError:
            pass
    assert not left, f"processes of the timed-out runs still alive: {left}"
