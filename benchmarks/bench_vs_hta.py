"""Side by side, whole process: ``mlprof analyze`` against HTA on the same files, alternating.

On a shared machine absolute seconds drift with the neighbours' load; a ratio measured
with the two tools alternating run by run (mlprof, HTA, mlprof, HTA, ...) does not.

* ``mlprof analyze`` - ``python -m mlprof analyze PATH --format json > /dev/null``, whole process.
* ``HTA``            - ``TraceAnalysis(trace_files={0: PATH})`` + ``get_temporal_breakdown``,
  whole process (``bench_load.py --worker hta``).
* ``read MB/s``      - ``load_trace(PATH)`` inside one process (imports excluded), JSON bytes
  over seconds; with ``workers=1`` (one core) and the default (worker processes).
* CLI start-up       - ``mlprof --help``, ``mlprof rules``, ``mlprof explain ID``, whole process.

Best time of ``--repeat`` runs per tool, highest peak memory (``bench_load.measure``: the
child's ``ru_maxrss`` from GNU time and the PSS of its process tree).

Before timing, the imported mlprof package is byte-compiled (``compileall``, said in the
output): a pip-installed mlprof has its ``.pyc`` files, while a checkout run with
``PYTHONDONTWRITEBYTECODE=1`` (as in this sandbox) recompiled every module in every
process (~0.07 s of each ``mlprof analyze``), which HTA, installed from a wheel, never pays.

    python benchmarks/bench_vs_hta.py                    # resnet50 nw0 (35 MB) + df_index_resolver x4 (217 MB)
    python benchmarks/bench_vs_hta.py --large            # + the 1 GB tiled trace (HTA takes minutes)
    python benchmarks/bench_vs_hta.py --only resnet50 --repeat 3
    nice python benchmarks/bench_vs_hta.py --data /tmp/mlprof-bench   # tiled traces outside the repo
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_load import DATA, DEFAULT_ROOT, MB, RESULT_MARK, environment, json_bytes, measure  # noqa: E402

RESNET = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"
DFI = "hta/tests/data/df_index_resolver/df_index_resolver.json.gz"

_READ = """
import json, sys, time
import numpy, pandas  # the reader imports pandas only where it makes frames: excluded here, as the docstring says
import mlprof.trace.build, mlprof.trace.jsonstream, mlprof.trace.steps
from mlprof.trace.loader import load_trace
path, workers = sys.argv[1], int(sys.argv[2])
t, c = time.perf_counter(), time.process_time()
trace = load_trace(path, workers=workers or None)
s, cpu = time.perf_counter() - t, time.process_time() - c
print("%s" + json.dumps({"s": s, "cpu": cpu, "json": trace.meta.json_bytes}))
"""


def tiled(copies: int, name: str, data: Path = DATA) -> Path:
    out = data / name
    if not out.exists():
        data.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                str(HERE / "make_large_trace.py"),
                str(DEFAULT_ROOT / DFI),
                str(out),
                "--copies",
                str(copies),
            ],
            check=True,
        )
    return out


def analyze_cmd(path: Path) -> list[str]:
    return [sys.executable, "-m", "mlprof", "analyze", str(path), "--format", "json"]


def hta_cmd(path: Path) -> list[str]:
    return [sys.executable, str(HERE / "bench_load.py"), "--worker", "hta", str(path)]


def best(runs: list[dict]) -> tuple[float, float]:
    ok = [r for r in runs if r["rc"] == 0]
    if not ok:
        raise SystemExit(f"a run failed: {runs[-1].get('stderr', '')[-400:]}")
    return min(r["wall_s"] for r in ok), max(r["peak_bytes"] for r in ok) / MB


def read_speed(path: Path, workers: int, repeat: int, cpu: bool = False) -> float:
    """Best MB/s of JSON read by ``load_trace`` in one process (imports not counted), over wall time or,
    with ``cpu``, over the process's CPU time (all its threads; worker processes not counted): per core."""
    speeds = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", _READ % RESULT_MARK, str(path), str(workers)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        res = json.loads(next(ln for ln in out.splitlines() if ln.startswith(RESULT_MARK))[len(RESULT_MARK) :])
        speeds.append(res["json"] / MB / (res["cpu"] if cpu else res["s"]))
    return max(speeds)


def startup(args: list[str], repeat: int) -> tuple[float, float]:
    """Best wall and best CPU seconds (user + system, from the child's rusage) of ``mlprof ARGS``."""
    times, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mlprof", *args], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(times), min(cpus)


def compile_mlprof() -> str:
    """Byte-compile the mlprof package the child processes import (as pip does on install); its path."""
    out = subprocess.run(
        [sys.executable, "-c", "import mlprof, os; print(os.path.dirname(mlprof.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([sys.executable, "-m", "compileall", "-q", out], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", action="store_true", help="also the 1 GB tiled trace")
    p.add_argument("--only", action="append", help="resnet50 | tiled_x4 | tiled_1gb | startup (repeatable)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--skip-hta", action="store_true")
    p.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help=f"where the tiled traces are written (default {DATA}; they are 0.2-1 GB: /tmp keeps them out of the repo)",
    )
    args = p.parse_args(argv)
    inputs = {"resnet50": lambda: DEFAULT_ROOT / RESNET, "tiled_x4": lambda: tiled(4, "tiled_x4.json", args.data)}
    if args.large:
        inputs["tiled_1gb"] = lambda: tiled(19, "tiled_1gb.json", args.data)
    wanted = set(args.only or [*inputs, "startup"])
    print(f"Machine: {environment()}; `nproc` {os.cpu_count()}; load average {os.getloadavg()[0]:.1f} at start")
    print(f"mlprof byte-compiled before timing (`python -m compileall -q {compile_mlprof()}`), as a pip install is\n")
    print("| input | JSON MB | mlprof analyze s | HTA s | ratio | mlprof peak MB | x JSON | HTA peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    speeds = []
    for name, make in inputs.items():
        if name not in wanted:
            continue
        path = make()
        mb = json_bytes(path) / MB
        ml_runs, hta_runs = [], []
        for _ in range(args.repeat):  # alternate so both tools see the same neighbours
            ml_runs.append(measure(analyze_cmd(path), 1800, stdout_to_null=True))
            if not args.skip_hta:
                hta_runs.append(measure(hta_cmd(path), 3600, stdout_to_null=True))
        ml_s, ml_mb = best(ml_runs)
        hta_s, hta_mb = best(hta_runs) if hta_runs else (float("nan"), float("nan"))
        print(
            f"| {name} | {mb:.0f} | {ml_s:.2f} | {hta_s:.2f} | {hta_s / ml_s:.1f}x | {ml_mb:.0f} | "
            f"{ml_mb / mb:.2f} | {hta_mb:.0f} |",
            flush=True,
        )
        if mb >= 50:
            one = read_speed(path, 1, args.repeat)
            one_cpu = read_speed(path, 1, args.repeat, cpu=True)
            speeds.append((name, mb, one, one_cpu, read_speed(path, 0, args.repeat)))
    if speeds:
        print("\n| input | JSON MB | read MB/s, 1 process (wall) | per CPU second | default workers (wall) |")
        print("|---|---:|---:|---:|---:|")
        for name, mb, one, one_cpu, many in speeds:
            print(f"| {name} | {mb:.0f} | {one:.0f} | {one_cpu:.0f} | {many:.0f} |")
    if "startup" in wanted:
        print("\n| command | best of 5, wall s | best of 5, CPU s |")
        print("|---|---:|---:|")
        for cmd in (["--version"], ["--help"], ["rules"], ["explain", "DATA001"]):
            wall, cpu = startup(cmd, 5)
            print(f"| `mlprof {' '.join(cmd)}` | {wall:.2f} | {cpu:.2f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
