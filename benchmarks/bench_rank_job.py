"""A many-rank job, whole process: wall time and the coordinator's and workers' peak RSS, trees alternating.

For each job directory (``--job``, e.g. one written by ``make_rank_job.py``) and each source tree
(``--tree``, default this checkout), runs ``python -m mlprof analyze JOB -f json -o OUT --jobs N`` in a
fresh process, the trees alternating run by run so they see the same load on a shared machine. The
process tree is sampled every ``--every`` seconds with psutil:

* **coordinator RSS**: the ``mlprof`` process itself, which holds every rank's reduced result and
  runs the cross-rank reduction (what must stay flat in the number of ranks), and its CPU seconds
  (user + system, last sample): on a machine with as many cores as workers they add to the wall time;
* **worker RSS**: the largest single worker process;
* **tree PSS**: the whole tree, pages shared by the forked workers counted once
  (what ``bench_load.measure`` reports as peak memory).

The load average is printed with each run. ``--same`` also checks that every tree wrote the same
report (byte for byte) for each job.

    python benchmarks/bench_rank_job.py --tree /tmp/ref --tree . --job /tmp/mlprof-bench/gen_256 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024


def _pss(p: psutil.Process) -> int:
    try:
        return int(p.memory_full_info().pss)
    except (psutil.Error, AttributeError):
        try:
            return int(p.memory_info().rss)
        except psutil.Error:
            return 0


def run_once(tree: Path, job: Path, jobs: int, out: Path, every: float) -> dict[str, Any]:
    """One ``mlprof analyze`` of ``job`` with ``tree`` on PYTHONPATH: wall s and peak MB."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    cmd = [sys.executable, "-m", "mlprof", "analyze", str(job), "-f", "json", "-o", str(out), "--jobs", str(jobs)]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    coord = worker = tree_pss = 0
    cpu = 0.0
    while proc.poll() is None:
        try:
            coord = max(coord, ps.memory_info().rss)
            times = ps.cpu_times()
            cpu = times.user + times.system
            children = ps.children(recursive=True)
        except psutil.Error:
            break
        rss = []
        for c in children:
            try:
                rss.append(c.memory_info().rss)
            except psutil.Error:
                pass
        worker = max([worker, *rss])
        tree_pss = max(tree_pss, _pss(ps) + sum(_pss(c) for c in children))
        time.sleep(every)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    wall = time.perf_counter() - t0
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return {
        "wall_s": wall,
        "coordinator_mb": coord / MB,
        "coordinator_cpu_s": cpu,
        "worker_mb": worker / MB,
        "tree_pss_mb": tree_pss / MB,
        "load": (load0, os.getloadavg()[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", type=Path, help="source tree (repeatable; default: this checkout)")
    ap.add_argument("--job", action="append", type=Path, required=True, help="job directory (repeatable)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--every", type=float, default=0.25, help="sampling period, s")
    ap.add_argument("--same", action="store_true", help="check the trees' reports are byte-identical")
    a = ap.parse_args()
    trees: list[Path] = a.tree or [HERE.parent]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in a.job:
            for rep in range(a.repeat):
                for i, tree in enumerate(trees):  # alternating
                    out = Path(tmp) / f"{job.name}-{rep}-{i}.json"
                    r = {"job": str(job), "tree": str(tree), "repeat": rep, **run_once(tree, job, a.jobs, out, a.every)}
                    rows.append(r)
                    print(
                        f"{job.name:12s} {tree!s:28s} wall {r['wall_s']:7.1f} s"
                        f"  coordinator {r['coordinator_mb']:6.0f} MB {r['coordinator_cpu_s']:5.1f} CPU s"
                        f"  worker {r['worker_mb']:6.0f} MB  tree PSS {r['tree_pss_mb']:6.0f} MB"
                        f"  load {r['load'][0]:.1f} -> {r['load'][1]:.1f}",
                        flush=True,
                    )
                if a.same and len(trees) > 1:
                    first = (Path(tmp) / f"{job.name}-{rep}-0.json").read_bytes()
                    same = all(
                        (Path(tmp) / f"{job.name}-{rep}-{i}.json").read_bytes() == first for i in range(1, len(trees))
                    )
                    print(f"{job.name}: reports {'byte-identical' if same else 'DIFFER'}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
