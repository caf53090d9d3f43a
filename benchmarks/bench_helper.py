"""What the what-if helper process buys: ``analyze_job`` in one process, without and with the helper, alternating.

    python benchmarks/bench_helper.py /tmp/mlprof-bench/tiled_x4.json --repeat 5

The trace is read once; then ``analyze_job`` runs ``--repeat`` times with ``MLPROF_HELPER=0``
(everything in this process) and ``MLPROF_HELPER=1`` (a helper forked whatever the load and
size, :mod:`mlprof.whatif.helper`), alternating, so both see the same neighbours. Per run: wall
seconds, this process's CPU seconds, the helper's CPU seconds (reaped children), how many
replays the helper delivered, and the 1-minute load average. On a VM whose other core is busy
the helper only competes for it (``auto``, the default, then starts none): quote the runs with
load below ``cores - 0.5``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlprof.analysis import analyze_job  # noqa: E402
from mlprof.trace.loader import load_trace  # noqa: E402
from mlprof.whatif import helper  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    delivered: list[int] = []
    results = helper.SharedTasks.results

    def counted(self: helper.SharedTasks) -> list:
        out = results(self)
        delivered.append(len(self.by_helper))
        return out

    helper.SharedTasks.results = counted  # type: ignore[method-assign]
    trace = load_trace(args.trace)
    analyze_job([trace], args.trace)  # warm: lazy tables and caches are built once, as in one CLI run
    walls: dict[str, list[float]] = {"0": [], "1": []}
    print("| MLPROF_HELPER | wall s | this process CPU s | helper CPU s | replays by the helper | load |")
    print("|---|---:|---:|---:|---:|---:|")
    for _ in range(args.repeat):
        for setting in ("0", "1"):
            os.environ["MLPROF_HELPER"] = setting
            gc.collect()
            delivered.clear()
            load = os.getloadavg()[0]
            before = os.times()
            t0, c0 = time.perf_counter(), time.process_time()
            analyze_job([trace], args.trace)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            after = os.times()
            child = (after.children_user - before.children_user) + (after.children_system - before.children_system)
            walls[setting].append(wall)
            print(f"| {setting} | {wall:.3f} | {cpu:.3f} | {child:.3f} | {sum(delivered)} | {load:.2f} |", flush=True)
    for setting, values in walls.items():
        values.sort()
        print(f"MLPROF_HELPER={setting}: min {values[0]:.3f} s, median {values[len(values) // 2]:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
