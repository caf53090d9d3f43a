"""Multi-rank benchmark: throughput and peak memory for 8, 64 and 1,024 ranks, and one large trace, against HTA.

Inputs:

* ``dlrm_8``     the real 8-rank DLRM job (``../shared/external_traces``);
* ``gen_64``     64 ranks generated from DLRM rank 0 by ``make_rank_job.py`` (full events,
                 one straggler, random clock offsets), gzipped;
* ``gen_1024``   the same with 1,024 ranks;
* ``large``      one trace tiled from a real one by ``make_large_trace.py`` (``--large-mb``).

Runs (each in a fresh subprocess, measured by ``bench_load.measure``: wall time and peak
memory of the whole process tree, PSS summed over processes so pages shared by forked
workers count once):

* ``mlprof --jobs N``       ``python -m mlprof analyze IN -f json -o OUT --jobs N``;
* ``mlprof dask``           the same with ``--engine dask --jobs 2`` (a LocalCluster of 2 worker processes);
* ``HTA``                   ``TraceAnalysis(trace_dir=IN)`` + ``get_comm_comp_overlap`` +
                            ``get_temporal_breakdown``, under an address-space limit
                            (``--hta-limit-gb``) so it cannot take the shared VM down.

Also checks that the mlprof runs give the same report (findings and cross-rank table) and that
the injected straggler is the one STRAG001 names.

    python benchmarks/bench_ranks.py [--only gen_64] [--skip-hta] [--large-mb 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench_load import DATA, HERE, MB, measure

ROOT = HERE.parent
EXTERNAL = ROOT.parent / "shared" / "external_traces"
DLRM = EXTERNAL / "facebookresearch__param" / "dlrm_kineto"
LARGE_SOURCE = EXTERNAL / "hta/tests/data/df_index_resolver/df_index_resolver.json.gz"

HTA_SCRIPT = """
import json, logging, sys, time, warnings
warnings.filterwarnings("ignore"); logging.disable(logging.CRITICAL)
t0 = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
path = sys.argv[1]
import os
if os.path.isdir(path):
    ta = TraceAnalysis(trace_dir=path, include_last_profiler_step=True)
else:
    ta = TraceAnalysis(trace_files={0: path}, trace_dir=os.path.dirname(path), include_last_profiler_step=True)
t1 = time.perf_counter()
ov = ta.get_comm_comp_overlap(visualize=False)
ta.get_temporal_breakdown(visualize=False)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "analysis_s": t2 - t1, "ranks": len(ta.t.traces),
                  "overlap": {str(int(r)): float(v) for r, v in zip(ov["rank"], ov["comp_comm_overlap_pctg"])}}))
"""


def gen_job(name: str, ranks: int) -> tuple[Path, dict[str, Any]]:
    out = DATA / name
    manifest = out / "manifest.json"
    if not manifest.exists():
        print(f"generating {out} ({ranks} ranks) ...", file=sys.stderr)
        sys.path.insert(0, str(HERE))
        from make_rank_job import make_job

        t0 = time.perf_counter()
        make_job(out, ranks, ranks * 3 // 5, gzip_files=True, seed=1)
        print(f"  {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out, json.loads(manifest.read_text())


def large_trace(target_mb: int) -> Path:
    out = DATA / f"tiled_{target_mb}mb.json"
    if not out.exists():
        import subprocess

        print(f"generating {out} ...", file=sys.stderr)
        cmd = [sys.executable, str(HERE / "make_large_trace.py"), str(LARGE_SOURCE), str(out)]
        subprocess.run([*cmd, "--target-mb", str(target_mb)], check=True)
    return out


def input_bytes(path: Path) -> tuple[int, int]:
    """(bytes on disk, files)."""
    files = [p for p in path.iterdir() if p.name != "manifest.json"] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files), len(files)


def run_mlprof(path: Path, args: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mlprof", "analyze", str(path), "-f", "json", "-o", str(out), *args]
    m = measure(cmd, timeout_s, stdout_to_null=True)
    m["report"] = json.loads(out.read_text()) if m["rc"] == 0 and out.exists() else None
    return m


def _limit_address_space(gb: float) -> None:
    """Lower the soft limit only, so it can be raised back afterwards."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = int(gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def run_hta(path: Path, timeout_s: float, limit_gb: float) -> dict[str, Any]:
    script = DATA / "hta_ranks_worker.py"
    script.write_text(HTA_SCRIPT)
    # The limit is set in this process and inherited by the child (prlimit-like), then restored.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    _limit_address_space(limit_gb)
    try:
        m = measure([sys.executable, str(script), str(path)], timeout_s)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    lines = [ln for ln in m["stdout"].splitlines() if ln.startswith("{")]
    m["result"] = json.loads(lines[-1]) if m["rc"] == 0 and lines else None
    if m["result"] is None:
        err = [ln for ln in m["stderr"].splitlines() if ln.strip()]
        m["error"] = err[-1][:160] if err else f"rc {m['rc']}"
    return m


def same_report(a: dict[str, Any], b: dict[str, Any], job: bool) -> bool:
    """Jobs: the whole analysis; one trace in memory vs --low-memory: the per-step attribution."""
    keys = ("findings", "plan", "cross_rank", "steps", "breakdown") if job else ("steps",)
    return all(a.get(k) == b.get(k) for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="dlrm_8, gen_64, gen_1024, large (repeatable)")
    ap.add_argument("--skip-hta", action="store_true")
    ap.add_argument("--large-mb", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--hta-timeout", type=float, default=900)
    ap.add_argument("--hta-limit-gb", type=float, default=6.0)
    ap.add_argument(
        "--jobs-only", type=int, default=None, help="only `mlprof --jobs N` on a job (no dask, no --jobs 1)"
    )
    a = ap.parse_args()
    DATA.mkdir(exist_ok=True)
    wanted = a.only or ["dlrm_8", "gen_64", "gen_1024", "large"]
    rows: list[dict[str, Any]] = []
    for name in wanted:
        truth: dict[str, Any] = {}
        if name == "dlrm_8":
            path = DLRM
        elif name.startswith("gen_"):
            path, truth = gen_job(name, int(name.split("_")[1]))
        elif name == "large":
            path = large_trace(a.large_mb)
        else:
            raise SystemExit(f"unknown input {name}")
        disk, files = input_bytes(path)
        runs: list[tuple[str, list[str]]] = [("mlprof --jobs 1", ["--jobs", "1"]), ("mlprof --jobs 2", ["--jobs", "2"])]
        if path.is_dir() and a.jobs_only is not None:
            runs = [(f"mlprof --jobs {a.jobs_only}", ["--jobs", str(a.jobs_only)])]
        elif path.is_dir():
            runs.append(("mlprof --engine dask (2 workers)", ["--engine", "dask", "--jobs", "2"]))
        else:
            runs = [
                ("mlprof (in memory, parallel reader)", []),
                ("mlprof --low-memory --jobs 2", ["--low-memory", "--jobs", "2"]),
            ]
        reports = []
        for label, args in runs:
            out = DATA / f"ranks_{name}_{len(reports)}.json"
            m = run_mlprof(path, args, out, a.timeout)
            rep = m["report"]
            row: dict[str, Any] = {
                "input": name,
                "files": files,
                "disk_mb": disk / MB,
                "tool": label,
                "wall_s": m["wall_s"],
                "peak_mb": m["peak_bytes"] / MB,
                "ok": m["rc"] == 0,
            }
            if rep is not None:
                reports.append(rep)
                row["json_mb"] = rep["trace"]["json_bytes"] / MB
                cr = rep.get("cross_rank")
                strag = next((f for f in rep["findings"] if f["rule"] == "STRAG001"), None)
                row["straggler"] = strag["ranks"][0] if strag else None
                row["critical_ms"] = strag["time_lost_ms_per_step"] if strag else None
                row["ranks"] = len(rep["ranks"])
                if cr is not None:
                    row["imbalance_share"] = cr["summary"]["imbalance_share"]
            else:
                row["error"] = m["stderr"].strip().splitlines()[-1:] if m["stderr"] else m["rc"]
            rows.append(row)
            print(json.dumps(row), flush=True)
        if len(reports) > 1:
            agree = all(same_report(reports[0], r, path.is_dir()) for r in reports[1:])
            print(json.dumps({"input": name, "identical_reports": agree, "truth": truth.get("straggler")}), flush=True)
            rows.append({"input": name, "identical_reports": agree, "truth_straggler": truth.get("straggler")})
        if not a.skip_hta:
            m = run_hta(path, a.hta_timeout, a.hta_limit_gb)
            row = {
                "input": name,
                "files": files,
                "disk_mb": disk / MB,
                "tool": f"HTA (address space <= {a.hta_limit_gb:g} GB)",
                "wall_s": m["wall_s"],
                "peak_mb": m["peak_bytes"] / MB,
                "ok": m["result"] is not None,
                "timed_out": m["timed_out"],
            }
            if m["result"] is not None and reports and reports[0].get("cross_rank") is not None:
                ours = {
                    str(r["rank"]): r["breakdown"]["trace_level"]["comm_comp_overlap_pct"] for r in reports[0]["ranks"]
                }
                theirs = m["result"]["overlap"]
                row["overlap_max_diff_pp"] = max(abs((ours[k] or 0.0) - v) for k, v in theirs.items())
            if m["result"] is None:
                row["error"] = m.get("error")
            rows.append(row)
            print(json.dumps(row), flush=True)
    (DATA / "bench_ranks.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
