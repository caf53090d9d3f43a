"""Fixed cost of reading small traces: ``load_trace`` time for two source trees, and whether their tables are identical.

For each tree given with ``--tree`` (a baseline is any copy of the repository, e.g.
``git archive <rev> | tar -x -C /tmp/before``), a fresh process loads each input
``--repeat`` times (one process, ``workers=1``, after one warm-up load) and reports
the median; the trees run interleaved, input by input, so both see the same load on
a shared machine. Every table of every input is then compared between the trees
(``pandas.testing.assert_frame_equal``, exact, dtypes included).

    python benchmarks/bench_load_fixed.py --tree /tmp/before --tree . [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
EXTERNAL = HERE.parent.parent / "shared/external_traces"
INPUTS = {
    "DLRM rank 0 (0.9 MB)": "facebookresearch__param/dlrm_kineto/worker0_step_12.1694128201545.pt.trace.json",
    "resnet50 kineto (35 MB, gz)": "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz",
    "HTA df_index_resolver (gz)": "hta/tests/data/df_index_resolver/df_index_resolver.json.gz",
}

CHILD = r"""
import pickle, statistics, sys, time
from mlprof.trace.loader import load_trace
path, repeat, dump = sys.argv[1], int(sys.argv[2]), sys.argv[3]
trace = load_trace(path, workers=1)
times = []
for _ in range(repeat):
    t0 = time.perf_counter(); trace = load_trace(path, workers=1); times.append(time.perf_counter() - t0)
tables = {k: v for k, v in vars(trace).items() if hasattr(v, "columns")}
with open(dump, "wb") as fh:
    pickle.dump(tables, fh)
print(1e3 * statistics.median(times))
"""


def run(tree: Path, path: Path, repeat: int, dump: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(repeat), str(dump)],
        env={**os.environ, "PYTHONPATH": str(tree.resolve())},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append", required=True)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, relative in INPUTS.items():
            path = EXTERNAL / relative
            dumps = [Path(tmp) / f"{i}.pkl" for i in range(len(args.tree))]
            ms = [run(tree, path, args.repeat, dump) for tree, dump in zip(args.tree, dumps, strict=True)]
            tables = [pickle.loads(d.read_bytes()) for d in dumps]
            for other in tables[1:]:
                assert other.keys() == tables[0].keys()
                for name in tables[0]:
                    pd.testing.assert_frame_equal(other[name], tables[0][name], check_exact=True)
            rows.append({"input": label, "ms": ms, "identical": True})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
