"""Cost and effect of the job replay (mlprof.whatif.job) against replaying each rank on its own.

The ranks are reduced once (the engine's per-rank tasks), then the client side (``combine``: matching,
cross-rank rules, the what-if predictions) runs alternately with the job replay and with it switched off
(every rank replayed on its own, as before), ``--repeat`` times each; the ratio of the medians is what the
job replay adds to the client. Also printed: the job model's error per rank, the passes it took, and every
replayed finding's expected speedup both ways.

    python benchmarks/bench_job_replay.py DIR [--repeat 3]
    python benchmarks/bench_job_replay.py --generate 64 [--tile 2]   # DLRM rank 0 x N (make_rank_job.py)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlprof.whatif.job as job_module
from mlprof.engine.job import combine
from mlprof.engine.rank_task import TaskOptions, reduce_rank
from mlprof.engine.sources import list_sources
from mlprof.results.schema import to_json_dict


def _generate(ranks: int, tile: int, out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_rank_job", Path(__file__).with_name("make_rank_job.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_rank_job"] = module
    spec.loader.exec_module(module)
    module.make_job(out, ranks, ranks // 2, tile=tile, seed=3)
    return out


def _combine(partials: list[Any], path: str, job: bool) -> tuple[float, dict[str, Any]]:
    real = job_module.build_job
    if not job:
        job_module.build_job = lambda *a, **k: "switched off (benchmark)"  # type: ignore[assignment]
    partials = copy.deepcopy(partials)  # combine() splits each rank's communication in place
    try:
        t = time.perf_counter()
        analysis = combine(partials, path, TaskOptions())
        elapsed = time.perf_counter() - t
    finally:
        job_module.build_job = real
    return elapsed, to_json_dict(analysis)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?")
    ap.add_argument("--generate", type=int, default=0, help="ranks of a generated job (DLRM rank 0 template)")
    ap.add_argument("--tile", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(_generate(args.generate, args.tile, Path(tmp))) if args.generate else args.path
        t = time.perf_counter()
        files = list_sources(path)
        partials = [reduce_rank(f, TaskOptions()) for f in files]
        reduce_s = time.perf_counter() - t
        times: dict[bool, list[float]] = {True: [], False: []}
        reports: dict[bool, dict[str, Any]] = {}
        for _ in range(args.repeat):
            for mode in (False, True):  # alternated: a busy machine slows both alike
                elapsed, reports[mode] = _combine(partials, path, mode)
                times[mode].append(elapsed)
    per_rank, together = statistics.median(times[False]), statistics.median(times[True])
    whatif = reports[True]["whatif"]
    print(f"{path}: {len(files)} ranks; per-rank tasks {reduce_s:.2f} s (once)")
    print(f"client (combine) median of {args.repeat}: per-rank replay {per_rank:.3f} s, job replay {together:.3f} s")
    print(f"job replay adds {together - per_rank:.3f} s = {100 * (together - per_rank) / (reduce_s + per_rank):.1f}% ")
    print(f"  of the whole analysis (tasks + client), {100 * (together / per_rank - 1):.0f}% of the client")
    print("whatif.job:", whatif.get("job"))
    print(f"{'rule':10} {'per-rank':>9} {'job':>9} {'attribution':>12}")
    one = {f["rule"]: f for f in reports[False]["findings"]}
    for f in reports[True]["findings"]:
        if f["rule"] in one:
            print(
                f"{f['rule']:10} {one[f['rule']]['expected_speedup']:9.4f} {f['expected_speedup']:9.4f} "
                f"{f['evidence'].get('attribution_speedup', f['expected_speedup']):12.4f}"
                f"  ({one[f['rule']]['speedup_source']} / {f['speedup_source']})"
            )
    for mode in (False, True):
        plan = reports[mode]["plan"]
        print(("job" if mode else "per-rank") + " plan:", [(p["rule"], p["cumulative_speedup"]) for p in plan])


if __name__ == "__main__":
    main()
