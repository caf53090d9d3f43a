"""Fixed cost per rank: analysis time of small traces, and ``mlprof analyze`` wall time, for one or more source trees.

Measures, for each tree given with ``--tree`` (default: this checkout), in the same run and
interleaved so both see the same load on a shared machine:

* **analysis per rank** (in process): ``reduce_trace`` (attribution, causes, the rank's own
  rules, the compact result) on a freshly loaded trace, i.e. everything a rank task does
  after reading its file; and the read (``load_trace``, one process) for scale. Median over
  the ranks (DLRM rank 0: over ``--repeat`` fresh loads);
* **CLI wall time**: ``python -m mlprof analyze IN -f json`` in a fresh process, median of
  ``--repeat`` runs, on DLRM rank 0, the real 8-rank DLRM job and a generated 64-rank job
  (``--jobs 2``), optionally the 1,024-rank job (``--with-1024``, one run each).

A baseline tree is any copy of the repository, e.g. ``git archive <rev> | tar -x -C /tmp/before``.

    python benchmarks/bench_rank_cost.py --tree /tmp/before --tree . [--with-1024]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
DLRM = HERE.parent.parent / "shared/external_traces/facebookresearch__param/dlrm_kineto"

IN_PROCESS = r"""
import glob, json, statistics, sys, time
from mlprof.engine.rank_task import TaskOptions, reduce_trace
from mlprof.trace.loader import load_trace
files, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
opts = TaskOptions()
reduce_trace(load_trace(files[0], workers=1), opts)  # imports, regex caches
load, analyse = [], []
for _ in range(repeat):
    for f in files:
        t0 = time.perf_counter(); trace = load_trace(f, workers=1); t1 = time.perf_counter()
        reduce_trace(trace, opts); t2 = time.perf_counter()
        load.append(t1 - t0); analyse.append(t2 - t1)
print(json.dumps({"load_ms": 1e3 * statistics.median(load), "analysis_ms": 1e3 * statistics.median(analyse)}))
"""


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree.resolve())}


def in_process(tree: Path, files: list[str], repeat: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, json.dumps(files), str(repeat)],
        env=_env(tree),
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def cli_seconds(tree: Path, path: Path, args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlprof", "analyze", str(path), "-f", "json", "-o", os.devnull, *args],
        env=_env(tree),
        cwd="/",
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", type=Path, help="source tree to measure (repeatable)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--with-1024", action="store_true")
    a = ap.parse_args()
    trees: list[Path] = a.tree or [HERE.parent]
    dlrm = sorted(str(p) for p in DLRM.glob("*.json"))
    gen64 = DATA / "gen_64"
    if not (gen64 / "manifest.json").exists():
        sys.path.insert(0, str(HERE))
        from make_rank_job import make_job

        make_job(gen64, 64, 64 * 3 // 5, gzip_files=True, seed=1)
    gen64_files = sorted(str(p) for p in gen64.glob("rank-*.json.gz"))

    per_rank: dict[str, dict[str, dict[str, float]]] = {}
    for label, files, repeat in (
        ("dlrm rank 0", dlrm[:1], 5),
        ("dlrm 8 ranks", dlrm, 1),
        ("generated 64 ranks", gen64_files, 1),
    ):
        per_rank[label] = {str(t): in_process(t, files, repeat) for t in trees}

    cli_inputs: list[tuple[str, Path, list[str], int]] = [
        ("dlrm rank 0", Path(dlrm[0]), [], a.repeat),
        ("dlrm 8 ranks --jobs 2", DLRM, ["--jobs", "2"], a.repeat),
        ("generated 64 ranks --jobs 2", gen64, ["--jobs", "2"], a.repeat),
    ]
    if a.with_1024:
        cli_inputs.append(("generated 1,024 ranks --jobs 2", DATA / "gen_1024", ["--jobs", "2"], 1))
    cli: dict[str, dict[str, float]] = {}
    for label, path, args, repeat in cli_inputs:
        times: dict[str, list[float]] = {str(t): [] for t in trees}
        for _ in range(repeat):
            for t in trees:  # interleaved
                times[str(t)].append(cli_seconds(t, path, args))
        cli[label] = {t: statistics.median(v) for t, v in times.items()}

    print("analysis per rank (ms, median; load = reading the file, one process)")
    for label, by_tree in per_rank.items():
        cells = "  ".join(f"{t}: load {r['load_ms']:.1f} analysis {r['analysis_ms']:.1f}" for t, r in by_tree.items())
        print(f"  {label:22s} {cells}")
    print("mlprof analyze wall time (s, median)")
    for label, by_tree in cli.items():
        print(f"  {label:32s} " + "  ".join(f"{t}: {s:.2f}" for t, s in by_tree.items()))
    print(json.dumps({"per_rank": per_rank, "cli": cli}))


if __name__ == "__main__":
    main()
