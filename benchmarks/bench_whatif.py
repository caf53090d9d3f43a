"""What the replay costs and how well it reproduces recorded traces (issue 13).

    python benchmarks/bench_whatif.py --table            # replay error of every real and bundled trace
    python benchmarks/bench_whatif.py --large TRACE      # share of `mlprof analyze` spent in the replay

``--table`` prints one markdown row per trace: device streams, host calls, device ops, the
recorded mean step (measured as replays are) and the edge model's replay of it, the signed
error and how many simulation rounds it took. ``--large`` runs the analysis of one trace
(load included, as ``mlprof analyze`` does) once, timing the replay (graph build, checks,
predictions, plan) and the rules inside the same run, and prints the replay's share against
the rest and the replay's and rules' share of the whole (issue 15: under 30% on the 1 GB trace).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlprof.analysis import analyze_trace  # noqa: E402
from mlprof.trace.loader import load_trace  # noqa: E402

EXTERNAL = ROOT.parent / "shared" / "external_traces"


def traces() -> list[Path]:
    found = sorted(p for p in EXTERNAL.rglob("*.json*") if p.is_file() and not p.name.endswith("_et.json.gz"))
    return (
        found
        + sorted((ROOT / "sample_traces" / "synthetic").glob("*.json.gz"))
        + sorted((ROOT / "sample_traces").glob("*.json.gz"))
    )


def table() -> None:
    print("| trace | streams | host calls | device ops | recorded step ms | replayed ms | error % | rounds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in traces():
        try:
            ra = analyze_trace(load_trace(path))
        except Exception as exc:
            print(f"| {path.name} | not a trace: {str(exc)[:60]} |")
            continue
        rr = ra.diagnosis.whatif.ranks[0]  # type: ignore[union-attr]
        g = rr.graph
        name = str(path.relative_to(EXTERNAL)) if EXTERNAL in path.parents else str(path.relative_to(ROOT))
        print(
            f"| {name} | {len(np.unique(g.g_stream))} | {g.n_host} | {g.n_gpu} | {rr.recorded_ns / 1e6:.3f} | "
            f"{rr.replayed_ns / 1e6:.3f} | {rr.error_pct:+.3f} | {rr.rounds} |"
        )


def large(path: Path) -> None:
    import mlprof.analysis as analysis
    import mlprof.whatif as whatif
    import mlprof.whatif.job as job

    spent = {"replay": 0.0, "rules": 0.0}

    def timed(fn, part):  # type: ignore[no-untyped-def]
        def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - t0

        return run

    # What analysis._diagnose imports when it runs: replay_rank from the package, predict_job from its module
    # (which imports predict from mlprof.whatif.predict itself, so patching the package's predict missed it),
    # and the rules engine's diagnose (every rule on every rank, and the job rules), imported by mlprof.analysis.
    whatif.replay_rank = timed(whatif.replay_rank, "replay")
    job.predict_job = timed(job.predict_job, "replay")
    analysis.diagnose = timed(analysis.diagnose, "rules")
    t0 = time.perf_counter()
    trace = load_trace(path)
    t1 = time.perf_counter()
    ra = analysis.analyze_trace(trace)
    t2 = time.perf_counter()
    total = t2 - t0
    rest = total - spent["replay"]
    both = spent["replay"] + spent["rules"]
    w = ra.diagnosis.whatif  # type: ignore[union-attr]
    g = w.ranks[0].graph
    print(f"trace {path} ({path.stat().st_size / 1e6:,.1f} MB): {g.n_host:,} host calls, {g.n_gpu:,} device ops")
    print(
        f"load {t1 - t0:.2f} s, analysis {t2 - t1:.2f} s, of which replay {spent['replay']:.2f} s "
        f"and rules {spent['rules']:.2f} s"
    )
    print(f"replay adds {100 * spent['replay'] / rest:.1f}% to the rest of analyze ({rest:.2f} s)")
    print(
        f"replay + rules: {100 * both / total:.1f}% of analyze with the load ({total:.2f} s), "
        f"{100 * both / (t2 - t1):.1f}% of the analysis after the load"
    )
    print(f"replay error {w.replay_error_pct:+.3f}%, rounds {w.ranks[0].rounds}, findings:")
    for f in ra.findings:
        print(f"  {f.rule} {f.expected_speedup:.3f}x ({f.speedup_source})")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--large", type=Path)
    args = parser.parse_args()
    if args.table:
        table()
    if args.large:
        large(args.large)


if __name__ == "__main__":
    main()
