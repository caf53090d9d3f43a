"""mlprof.profile in a real (tiny) CPU training loop: run folder, meta.json, steps, clock, faults.

Every test runs the real torch.profiler. Faults are produced for real where the file
system can produce them (a path that is a file, a directory where a file must go);
only a profiler that raises on start/step is simulated, by patching torch.profiler.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import mlprof  # noqa: E402
from mlprof.collectors import profile as profile_mod  # noqa: E402
from mlprof.trace.loader import load_trace  # noqa: E402

SCHEDULE = {"wait": 1, "warmup": 1, "active": 3}


def _train(steps: int, run: object | None = None, marks: list[int] | None = None) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        with mlprof.range("forward"):
            if marks is not None:
                marks.append(time.time_ns())
            loss = model(torch.randn(4, 8)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if run is not None:
            run.step()  # type: ignore[attr-defined]


def _mlprof_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if str(w.message).startswith("mlprof")]


def test_import_mlprof_does_not_import_torch() -> None:
    code = "import sys, mlprof; assert 'torch' not in sys.modules; mlprof.__version__; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_context_manager_writes_a_run_folder_mlprof_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(name="run1", out_dir=tmp_path, tags={"team": "perf"}, **SCHEDULE) as run:
            _train(7, run)
    assert _mlprof_warnings(record) == []
    folder = tmp_path / "run1"
    assert run.path == folder
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "trace.rank0.json.gz"]

    trace = load_trace(folder / "trace.rank0.json.gz")
    assert trace.meta.step_source == "ProfilerStep"
    assert trace.steps["step"].tolist() == [2, 3, 4]  # wait 1 + warmup 1, then 3 recorded
    assert (trace.host["name"] == "forward").sum() == 3  # mlprof.range is in the trace, once per step

    meta = json.loads((folder / "meta.json").read_text())
    assert meta["run"] == "run1" and meta["tags"] == {"team": "perf"}
    assert meta["rank"] == 0 and meta["world_size"] == 1 and meta["distributed"]["source"] == "default"
    assert meta["steps_taken"] == 7
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["command_line"][0] == sys.executable
    assert set(meta["git"]) == {"commit", "dirty"}
    assert meta["hostname"]
    assert meta["start_time_ns"] < meta["end_time_ns"]
    assert meta["profiler"]["schedule"] == {"wait": 1, "warmup": 1, "active": 3, "repeat": 1}
    assert meta["profiler"]["first_active_step"] == 2
    assert meta["outputs"]["this_rank_traces"] == ["trace.rank0.json.gz"]
    assert meta["errors"] == []
    if not torch.cuda.is_available():
        assert meta["gpus"]["count"] == 0 and meta["profiler"]["cuda_activity"] is False
        assert meta["notes"] == ["CPU only: no NVIDIA driver/NVML on this machine, so no GPU counters"]
        assert meta["counters"]["file"] is None and meta["counters"]["rows_written"] == 0

    out = capsys.readouterr().out
    assert "GPU busy" in out and "top:" in out
    # The three recorded steps: steady ones, plus any set aside (a first step slowed by warm-up, timing-dependent).
    counted = re.search(r"(\d+) steps \(ProfilerStep(?:; (\d+) more set aside)?", out)
    assert counted is not None and int(counted.group(1)) + int(counted.group(2) or 0) == 3


def test_trace_clock_is_the_counters_clock(tmp_path: Path) -> None:
    """Kineto ts + baseTimeNanoseconds is time.time_ns(): the clock NVML/DCGM samples are stamped with."""
    marks: list[int] = []
    with mlprof.profile(name="clock", out_dir=tmp_path, summary=False, **SCHEDULE) as run:
        _train(5, run, marks)
    trace = load_trace(tmp_path / "clock" / "trace.rank0.json.gz")
    assert trace.meta.base_time_ns is not None
    forward = trace.host[trace.host["name"] == "forward"].sort_values("ts")
    epoch_starts = forward["ts"].to_numpy() + trace.meta.base_time_ns
    offsets = [abs(int(ts) - mark) for ts, mark in zip(epoch_starts, marks[2:5], strict=True)]
    assert max(offsets) < 2_000_000, offsets  # within 2 ms (measured: a few µs)


def test_decorators_and_module_level_step(tmp_path: Path) -> None:
    @mlprof.step
    def train_step(model: torch.nn.Module) -> None:
        model(torch.randn(2, 4)).sum().backward()

    @mlprof.profile(name="deco", out_dir=tmp_path, summary=False, wait=0, warmup=1, active=2)
    def train() -> str:
        model = torch.nn.Linear(4, 4)
        for _ in range(4):
            train_step(model)
        return "done"

    assert train() == "done"
    trace = load_trace(tmp_path / "deco" / "trace.rank0.json.gz")
    assert trace.steps["step"].tolist() == [1, 2]
    mlprof.step()  # no active profile: nothing happens
    assert profile_mod._ACTIVE == []


def test_every_writes_one_job_per_cycle(tmp_path: Path) -> None:
    with mlprof.profile(name="cont", out_dir=tmp_path, summary=False, wait=1, warmup=1, active=2, every=4, repeat=2):
        _train(10, None)
        for _ in range(10):
            mlprof.step()
    first = load_trace(tmp_path / "cont" / "trace.rank0.json.gz")
    second = load_trace(tmp_path / "cont" / "cycles" / "2" / "trace.rank0.json.gz")
    assert first.steps["step"].tolist() == [2, 3]
    assert second.steps["step"].tolist() == [6, 7]


def test_run_shorter_than_the_schedule_says_so(tmp_path: Path) -> None:
    with mlprof.profile(name="short", out_dir=tmp_path, **SCHEDULE) as run:
        _train(1, run)
    meta = json.loads((tmp_path / "short" / "meta.json").read_text())
    assert any("no trace was written: the run ended after 1 steps" in n for n in meta["notes"])
    assert meta["errors"] == []


def test_timestamp_names_do_not_collide(tmp_path: Path) -> None:
    paths = []
    for _ in range(2):
        with mlprof.profile(out_dir=tmp_path, summary=False, nvml=False, **SCHEDULE) as run:
            pass
        paths.append(run.path)
    assert paths[0] != paths[1] and all(p is not None and p.is_dir() for p in paths)


def test_rank_from_env_names_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with mlprof.profile(name="r3", out_dir=tmp_path, **SCHEDULE) as run:
        _train(6, run)
    assert (run.rank, run.world_size) == (3, 4)
    folder = tmp_path / "r3"
    assert sorted(p.name for p in folder.iterdir()) == ["trace.rank3.json.gz"]  # meta.json is rank 0's
    assert load_trace(folder / "trace.rank3.json.gz").meta.rank == 3


def test_user_exception_propagates_and_meta_is_still_written(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), mlprof.profile(name="boom", out_dir=tmp_path, **SCHEDULE) as run:
        _train(3, run)
        raise ZeroDivisionError
    meta = json.loads((tmp_path / "boom" / "meta.json").read_text())
    assert meta["steps_taken"] == 3 and meta["end_time_ns"] is not None


# -- faults: the job goes on, one warning, what was collected is kept -------------------


def test_unusable_out_dir_one_warning_job_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(name="x", out_dir=blocker, **SCHEDULE) as run:
            _train(7, run)
    assert len(_mlprof_warnings(record)) == 1
    assert "creating the run folder" in _mlprof_warnings(record)[0]
    assert run.path is None and run.step_num == 7


def test_silent_export_failure_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kineto logs a failed write (disk full, rename onto a directory) and returns normally: mlprof checks the file."""
    monkeypatch.setattr(torch.profiler.profile, "export_chrome_trace", lambda self, path: None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(name="exp", out_dir=tmp_path, **SCHEDULE) as run:
            _train(7, run)
    msgs = _mlprof_warnings(record)
    assert len(msgs) == 1 and "exporting trace cycle 1" in msgs[0] and "wrote no trace" in msgs[0]
    meta = json.loads((tmp_path / "exp" / "meta.json").read_text())
    assert len(meta["errors"]) == 1 and meta["outputs"]["this_rank_traces"] == []
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["meta.json"]


def test_truncated_export_is_caught(tmp_path: Path) -> None:
    from mlprof.collectors.profile import check_exported

    path = tmp_path / "t.json"
    path.write_text('{"traceEvents": [{"ph": "X"')
    with pytest.raises(OSError, match="incomplete"):
        check_exported(path)
    path.write_text('{"traceEvents": []}\n')
    check_exported(path)


def test_gzip_failure_keeps_the_uncompressed_trace(tmp_path: Path) -> None:
    folder = tmp_path / "gz"
    (folder / "trace.rank0.json.gz").mkdir(parents=True)  # a real obstacle: the rename onto it fails
    (folder / "trace.rank0.json.gz" / "keep").write_text("")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(name="gz", out_dir=tmp_path, summary=False, **SCHEDULE) as run:
            _train(7, run)
    assert len(_mlprof_warnings(record)) == 1
    assert run.trace_paths == [folder / "trace.rank0.json"]
    assert load_trace(folder / "trace.rank0.json").steps["step"].tolist() == [2, 3, 4]


def test_meta_write_failure_is_one_warning(tmp_path: Path) -> None:
    (tmp_path / "m" / "meta.json").mkdir(parents=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(name="m", out_dir=tmp_path, summary=False, **SCHEDULE) as run:
            _train(7, run)
    assert len(_mlprof_warnings(record)) == 1
    assert len(run.errors) == 2  # start and end writes both failed; one warning
    assert load_trace(tmp_path / "m" / "trace.rank0.json.gz").steps["step"].tolist() == [2, 3, 4]


@pytest.mark.parametrize("method", ["start", "step"])
def test_profiler_raising_never_stops_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    def boom(self: object) -> None:
        raise RuntimeError(f"injected {method} failure")

    monkeypatch.setattr(torch.profiler.profile, method, boom)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with mlprof.profile(name=method, out_dir=tmp_path, **SCHEDULE) as run:
            _train(7, run)
    msgs = _mlprof_warnings(record)
    assert len(msgs) == 1 and f"injected {method} failure" in msgs[0]
    assert run.step_num == 7
    meta = json.loads((tmp_path / method / "meta.json").read_text())
    assert meta["errors"] and meta["steps_taken"] == 7


def test_options_are_validated_up_front() -> None:
    with pytest.raises(ValueError, match="every=3"):
        mlprof.profile(warmup=1, active=3, every=3)
    with pytest.raises(ValueError):
        mlprof.profile(active=0)
