"""mlprof.profile never takes the training job down: real training loops (CPU torch) in subprocesses.

Nested ``mlprof.profile`` contexts that both record, and ``mlprof.profile`` entered in
a worker thread, ended the process with a segmentation fault inside Kineto (exit 139);
a run name like ``../../escape`` made folders outside ``out_dir``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]

JOB = textwrap.dedent(
    """
    import sys, threading, torch, mlprof

    def train(n):
        torch.manual_seed(0)
        m = torch.nn.Linear(8, 8)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(n):
            loss = m(torch.randn(4, 8)).square().mean()
            loss.backward(); opt.step(); opt.zero_grad(); mlprof.step()
        return float(loss.detach())

    opts = dict(out_dir="runs", wait=0, warmup=0, active=3, nvml=False, summary=False)
    for mode in sys.argv[1:]:  # several cases per process (each process imports torch: seconds)
        if mode == "reference":  # the job unprofiled: what every profiled case must compute too
            loss = train(8)
        elif mode == "nested":
            with mlprof.profile(name="outer", **opts):
                with mlprof.profile(name="inner", **opts):
                    loss = train(8)
        elif mode == "thread":
            out = []
            def worker():
                with mlprof.profile(name="worker", **opts):
                    out.append(train(8))
            t = threading.Thread(target=worker)
            t.start(); t.join()
            loss = out[0]
        elif mode == "torch_profiler":
            with torch.profiler.profile():
                with mlprof.profile(name="inside", **opts):
                    loss = train(8)
        elif mode == "escape":
            with mlprof.profile(name="../../escape", **opts) as run:
                loss = train(8)
        elif mode == "raises":
            with mlprof.profile(name="boom", **opts):
                train(4)
                raise KeyError("the job's own error")
        print(f"{mode} DONE {loss:.6f}", flush=True)
    """
)


def _run_all(tmp_path: Path, groups: list[list[str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each group of cases in its own process and folder, all at once."""
    (tmp_path / "job.py").write_text(JOB)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}
    procs = {}
    for group in groups:
        mode = group[0]
        cwd = tmp_path / mode / "a" / "b"
        cwd.mkdir(parents=True)
        procs[mode] = subprocess.Popen(
            [sys.executable, str(tmp_path / "job.py"), *group],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    done = {}
    for mode, p in procs.items():
        out, err = p.communicate(timeout=240)
        done[mode] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def test_collector_faults_never_end_the_job(tmp_path: Path) -> None:
    results = _run_all(tmp_path, [["nested"], ["thread", "torch_profiler"], ["escape", "reference", "raises"]])
    nested, thread, escape = results["nested"], results["thread"], results["escape"]
    expected = escape.stdout.split("reference DONE ")[1].split()[0]  # the job's loss, unprofiled
    for r, mode in ((nested, "nested"), (thread, "thread"), (thread, "torch_profiler"), (escape, "escape")):
        assert f"{mode} DONE {expected}" in r.stdout, (mode, r.returncode, r.stderr[-2000:])
    for r in (nested, thread):
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]

    assert nested.stderr.count("only the outer one profiles") == 1  # warned once
    runs = tmp_path / "nested" / "a" / "b" / "runs"
    assert (runs / "outer" / "trace.rank0.json.gz").is_file() and not (runs / "inner").exists()

    assert "other than the main thread" in thread.stderr
    assert "a torch.profiler is already running" in thread.stderr
    assert not (tmp_path / "thread" / "a" / "b" / "runs").exists()

    inside = tmp_path / "escape" / "a" / "b" / "runs"
    assert sorted(p.name for p in inside.iterdir()) == ["___.._escape", "boom"]
    assert (inside / "___.._escape" / "trace.rank0.json.gz").is_file()
    assert sorted(p.name for p in (tmp_path / "escape").iterdir()) == ["a"]  # nothing made outside out_dir
    assert sorted(p.name for p in (tmp_path / "escape" / "a").iterdir()) == ["b"]

    # the last case raised: the job's own error propagates unchanged, with its one traceback
    assert escape.returncode == 1 and escape.stderr.count("Traceback") == 1
    assert escape.stderr.rstrip().endswith('KeyError: "the job\'s own error"')
    assert "raises DONE" not in escape.stdout
    assert (inside / "boom" / "meta.json").is_file()
