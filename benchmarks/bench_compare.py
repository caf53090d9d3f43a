"""Time mlprof compare and annotate against HTA's TraceDiff on the same real pair, in one run.

    python benchmarks/bench_compare.py [--repeat 3]

Input: HTA's own ``trace_diff`` pair (A100 control, 34.8 MB JSON; V100 test, 32.8 MB JSON) in
``../shared/external_traces``. mlprof: load + analyse both runs + compare (what ``mlprof
compare`` does, printing aside). HTA: ``TraceDiff.compare_traces(control_dir, test_dir)``
(parse both + per-name counts/durations of the first iteration). Annotate: analyse +
write the annotated copy of the control trace (gzipped). Best of ``--repeat`` wall times, each
in this process (imports already paid).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT.parent / "shared" / "external_traces" / "hta" / "tests" / "data" / "trace_diff"


def _best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from hta.trace_diff import TraceDiff

    from mlprof.analysis import analyze_job
    from mlprof.annotate.writer import annotate_file
    from mlprof.compare import compare_analyses
    from mlprof.trace.loader import load_job

    control, test = PAIR / "control", PAIR / "test"

    def ours() -> None:
        compare_analyses(analyze_job(load_job(control), "c"), analyze_job(load_job(test), "t"))

    def hta() -> None:
        warnings.filterwarnings("ignore")
        logging.disable(logging.CRITICAL)
        TraceDiff.compare_traces(str(control), str(test))

    out_dir = Path(tempfile.mkdtemp())

    def annotate() -> None:
        traces = load_job(control)
        analysis = analyze_job(traces, "c")
        annotate_file(Path(traces[0].meta.path), out_dir / "control.annotated.json.gz", analysis.findings, traces[0])

    t_ours, t_hta, t_ann = _best(ours, args.repeat), _best(hta, args.repeat), _best(annotate, args.repeat)
    print(f"| task | wall (best of {args.repeat}) |")
    print("|---|---:|")
    print(f"| mlprof compare (load + analyse both + diff) | {t_ours:.2f} s |")
    print(f"| HTA TraceDiff.compare_traces | {t_hta:.2f} s |")
    print(f"| ratio HTA / mlprof | {t_hta / t_ours:.2f}x |")
    print(f"| mlprof annotate control (analyse + write .json.gz) | {t_ann:.2f} s |")


if __name__ == "__main__":
    main()
