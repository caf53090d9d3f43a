"""Load / analyze benchmark: mlprof against HTA (Holistic Trace Analysis) on real traces.

Every measurement runs in its own fresh subprocess, so wall time includes nothing
from other runs and peak memory is per tool:

* ``mlprof load``    - ``mlprof.trace.load_trace(path)`` (``load_job`` for a directory).
* ``mlprof analyze`` - the CLI end to end: ``python -m mlprof analyze PATH --format json > /dev/null``.
* ``HTA``            - ``TraceAnalysis(trace_files={0: path}, trace_dir=dirname(path))``
  (``TraceAnalysis(trace_dir=dir)`` for a directory), then
  ``get_temporal_breakdown(visualize=False)``.

Peak memory is the larger of the child's ``ru_maxrss`` (from ``wait4``, the number
``/usr/bin/time -v`` prints) and the largest sum of PSS over the child's process
tree, sampled every 50 ms with psutil (HTA parses a multi-rank directory in a fork
pool; PSS does not double-count pages the workers share with the parent).

    python benchmarks/bench_load.py                 # real traces
    python benchmarks/bench_load.py --large         # + tiled 500 MB and 1 GB traces
    python benchmarks/bench_load.py --only dlrm_8rank --skip-hta
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("MLPROF_BENCH_DATA") or HERE / "data")
"""Generated inputs (tiled traces, rank jobs: up to a few GB); ``MLPROF_BENCH_DATA=/tmp/x`` puts them outside."""
MB = 1_000_000
RESULT_MARK = "BENCH_RESULT "
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
DEFAULT_ROOT = Path(os.environ.get("MLPROF_EXTERNAL_TRACES", "/work/shared/external_traces"))

#: name -> path under the external-traces root
REAL_INPUTS: dict[str, str] = {
    "df_index_resolver": "hta/tests/data/df_index_resolver/df_index_resolver.json.gz",
    "trace_diff_control": "hta/tests/data/trace_diff/control/control.json.gz",
    "negative_queue_rank0": "hta/tests/data/negative_queue_length_values_check/rank0.json.gz",
    "ns_resolution": "hta/tests/data/ns_resolution_trace/rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz",
    "kineto_resnet50_nw0": "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz",
    "dlrm_8rank": "facebookresearch__param/dlrm_kineto",
}
#: name -> target size in MB of a trace tiled from df_index_resolver (``--large``)
LARGE_INPUTS: dict[str, int] = {"tiled_500mb": 500, "tiled_1gb": 1000}


# --------------------------------------------------------------------------- workers
# ``bench_load.py --worker KIND PATH`` runs inside the measured subprocess and prints
# one ``BENCH_RESULT {json}`` line.


def _worker_mlprof(path: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    from mlprof.trace import load_trace

    try:
        from mlprof.trace.loader import load_job
    except ImportError:  # older tree: files only
        load_job = None
    t1 = time.perf_counter()
    if path.is_dir():
        if load_job is None:
            raise RuntimeError("this mlprof has no load_job for directories")
        traces = load_job(path)
    else:
        traces = [load_trace(path)]
    t2 = time.perf_counter()
    events = steps = 0
    for tr in traces:
        meta = getattr(tr, "meta", None)
        events += int(getattr(meta, "num_events", 0) or getattr(meta, "events", 0) or 0)
        try:
            steps += len(tr.steps)
        except (AttributeError, TypeError):
            pass
    return {"import_s": t1 - t0, "load_s": t2 - t1, "ranks": len(traces), "events": events, "steps": steps}


def _worker_hta(path: Path, backend: str | None) -> dict[str, Any]:
    import logging

    logging.disable(logging.WARNING)  # HTA logs every parsed file; keep stderr for real errors
    t0 = time.perf_counter()
    from hta.trace_analysis import TraceAnalysis

    if backend:
        from hta.common.trace_parser import set_default_trace_parsing_backend
        from hta.configs.parser_config import ParserBackend

        set_default_trace_parsing_backend(ParserBackend(backend))
    t1 = time.perf_counter()
    if path.is_dir():
        ta = TraceAnalysis(trace_dir=str(path))
    else:
        ta = TraceAnalysis(trace_files={0: str(path)}, trace_dir=str(path.parent))
    t2 = time.perf_counter()
    ranks = len(ta.t.traces)
    events = sum(len(df) for df in ta.t.traces.values())
    if ranks == 0:
        raise RuntimeError("HTA loaded no ranks")
    ta.get_temporal_breakdown(visualize=False)
    t3 = time.perf_counter()
    return {"import_s": t1 - t0, "load_s": t2 - t1, "analysis_s": t3 - t2, "ranks": ranks, "events": events}


def _worker_import(kind: str) -> dict[str, Any]:
    """Import-only run: the memory floor of a tool (interpreter + its libraries)."""
    t0 = time.perf_counter()
    if kind == "mlprof-import":
        import importlib

        import mlprof.trace  # noqa: F401

        for mod in ("mlprof.trace.loader", "mlprof.analysis", "mlprof.cli"):
            try:
                importlib.import_module(mod)
            except ImportError:
                pass
    else:
        import hta.trace_analysis  # noqa: F401
    return {"import_s": time.perf_counter() - t0}


def worker_main(kind: str, path: Path | None, backend: str | None) -> int:
    if kind.endswith("-import"):
        res = _worker_import(kind)
    elif path is None:
        raise SystemExit("--worker needs a path")
    elif kind == "mlprof":
        res = _worker_mlprof(path)
    else:
        res = _worker_hta(path, backend)
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(res), flush=True)
    return 0


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    input: str
    json_mb: float
    tool: str
    status: str = "ok"  # ok | timeout | error | n/a
    wall_s: float | None = None
    load_s: float | None = None
    analysis_s: float | None = None
    peak_rss_mb: float | None = None
    ranks: int | None = None
    events: int | None = None
    baseline_mb: float | None = None  # peak memory of the same tool importing only
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _tree_pss(root: Any) -> int:
    import psutil

    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            try:
                total += p.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], timeout_s: float, stdout_to_null: bool = False) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak memory, exit status and its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        res = _measure(cmd, timeout_s, subprocess.DEVNULL if stdout_to_null else out, err)
        out.seek(0)
        err.seek(0)
        res["stdout"] = out.read().decode(errors="replace")
        res["stderr"] = err.read().decode(errors="replace")
    return res


def _measure(cmd: list[str], timeout_s: float, out: Any, err: Any) -> dict[str, Any]:
    try:
        import psutil
    except ImportError:  # only ru_maxrss then
        psutil = None  # type: ignore[assignment]
    # Linux carries the parent's RSS high-water mark into a forked child's ru_maxrss,
    # so the child's own number comes from GNU time (a tiny parent) when it is there.
    time_out = None
    if GNU_TIME:
        fd, time_out = tempfile.mkstemp(prefix="bench_time_")
        os.close(fd)
        cmd = [GNU_TIME, "-f", "%M", "-o", time_out, *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    ps = None
    if psutil is not None:
        try:
            ps = psutil.Process(proc.pid)
        except psutil.Error:
            ps = None
    peak_pss = 0
    next_sample = 0.0
    timed_out = False
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        now = time.perf_counter()
        if now - t0 > timeout_s and not timed_out:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if ps is not None and now >= next_sample:
            peak_pss = max(peak_pss, _tree_pss(ps))
            next_sample = now + 0.05
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if not timed_out:
        try:  # leftover pool workers of a crashed run
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    maxrss = ru.ru_maxrss * 1024
    if time_out is not None:
        maxrss = 0
        try:
            for line in Path(time_out).read_text().splitlines():
                if line.strip().isdigit():
                    maxrss = int(line.strip()) * 1024
        finally:
            os.unlink(time_out)
    return {"wall_s": wall, "rc": proc.returncode, "timed_out": timed_out, "peak_bytes": max(maxrss, peak_pss)}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def _finish(run: Run, m: dict[str, Any], timeout_s: float) -> Run:
    run.wall_s = m["wall_s"]
    run.peak_rss_mb = m["peak_bytes"] / MB
    if m["timed_out"]:
        run.status = "timeout"
        run.detail = f"killed after {timeout_s:.0f} s"
    elif m["rc"] != 0:
        run.status = "error"
        why = f"signal {-m['rc']}" if m["rc"] < 0 else f"exit {m['rc']}"
        run.detail = f"{why}: {_last_line(m['stderr'])}"
    return run


def run_worker(kind: str, name: str, path: Path, json_mb: float, timeout_s: float, backend: str | None) -> Run:
    tool = "mlprof load" if kind == "mlprof" else "HTA"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(path)]
    if backend:
        cmd += ["--hta-backend", backend]
    m = measure(cmd, timeout_s)
    run = _finish(Run(name, json_mb, tool), m, timeout_s)
    if run.status == "ok":
        lines = [ln for ln in m["stdout"].splitlines() if ln.startswith(RESULT_MARK)]
        if not lines:
            run.status = "error"
            run.detail = "no result line: " + _last_line(m["stderr"] or m["stdout"])
            return run
        res = json.loads(lines[-1][len(RESULT_MARK) :])
        run.load_s = res.get("load_s")
        run.analysis_s = res.get("analysis_s")
        run.ranks = res.get("ranks")
        run.events = res.get("events")
        run.extra = {k: v for k, v in res.items() if k not in ("load_s", "analysis_s", "ranks", "events")}
    return run


def import_baseline(kind: str) -> float | None:
    """Peak MB of a subprocess that only imports the tool."""
    m = measure([sys.executable, str(Path(__file__).resolve()), "--worker", kind], 120.0)
    return m["peak_bytes"] / MB if m["rc"] == 0 else None


def mlprof_cli_available() -> bool:
    r = subprocess.run(
        [sys.executable, "-m", "mlprof", "analyze", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.returncode == 0 and "--format" in r.stdout


def run_cli(name: str, path: Path, json_mb: float, timeout_s: float) -> Run:
    cmd = [sys.executable, "-m", "mlprof", "analyze", str(path), "--format", "json"]
    m = measure(cmd, timeout_s, stdout_to_null=True)
    return _finish(Run(name, json_mb, "mlprof analyze"), m, timeout_s)


# --------------------------------------------------------------------------- inputs


def _trace_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.name.endswith((".json", ".json.gz")))
    return [path]


def json_bytes(path: Path) -> int:
    """Uncompressed JSON size of a file or of all trace files of a directory."""
    total = 0
    for f in _trace_files(path):
        with f.open("rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        if not gz:
            total += f.stat().st_size
            continue
        with gzip.open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    return total


def large_input(name: str, target_mb: int, source: Path) -> Path:
    out = DATA / f"{name}.json"
    if not out.exists():
        # in a subprocess: this process must stay small (see _measure)
        print(f"generating {out} ({target_mb} MB from {source.name}) ...", file=sys.stderr)
        cmd = [sys.executable, str(HERE / "make_large_trace.py"), str(source), str(out), "--target-mb", str(target_mb)]
        subprocess.run(cmd, check=True)
    return out


def select_inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    root: Path = args.traces_root
    items: list[tuple[str, Path]] = [(n, root / p) for n, p in REAL_INPUTS.items()]
    for extra in args.input or []:
        p = Path(extra)
        items.append((p.name.removesuffix(".gz").removesuffix(".json"), p))
    if args.large:
        src = root / REAL_INPUTS["df_index_resolver"]
        for n, mb in LARGE_INPUTS.items():
            if args.only and n not in args.only:
                continue
            items.append((n, large_input(n, mb, src)))
    if args.only:
        known = {n for n, _ in items} | set(LARGE_INPUTS)
        unknown = [n for n in args.only if n not in known]
        if unknown:
            raise SystemExit(f"--only: unknown input(s) {unknown}; known: {sorted(known)}")
        items = [(n, p) for n, p in items if n in args.only]
    missing = [str(p) for _, p in items if not p.exists()]
    if missing:
        raise SystemExit(f"missing input(s): {missing}")
    return items


# --------------------------------------------------------------------------- report


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def _time_cell(r: Run, v: float | None, nd: int = 2) -> str:
    return _f(v, nd) if r.status == "ok" else r.status


def render(runs: list[Run]) -> str:
    lines = [
        "| input | JSON MB | tool | load s | analysis s | wall s | load MB/s | peak RSS MB | RSS / JSON"
        " | RSS above import MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        mbps = r.json_mb / r.load_s if r.status == "ok" and r.load_s else None
        wall = r.wall_s if r.status == "ok" else None
        rss_ratio = r.peak_rss_mb / r.json_mb if r.peak_rss_mb and r.json_mb else None
        above = r.peak_rss_mb - r.baseline_mb if r.peak_rss_mb and r.baseline_mb else None
        lines.append(
            f"| {r.input} | {r.json_mb:,.1f} | {r.tool} | {_time_cell(r, r.load_s)} | "
            f"{_time_cell(r, r.analysis_s)} | {_time_cell(r, wall)} | {_f(mbps, 1)} | "
            f"{'>= ' if r.status == 'timeout' else ''}{_f(r.peak_rss_mb, 0)} | {_f(rss_ratio, 2)} | {_f(above, 0)} |"
        )
    lines += [
        "",
        "Ratios (HTA / mlprof for time: higher = mlprof faster; mlprof / HTA for memory: lower = mlprof leaner):",
        "",
        "| input | JSON MB | load speedup | end-to-end speedup | RSS ratio (load) | RSS ratio (analyze) |"
        " mlprof analyze RSS / JSON |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_input: dict[str, dict[str, Run]] = {}
    for r in runs:
        by_input.setdefault(r.input, {})[r.tool] = r
    for name, d in by_input.items():
        ml, cli, hta = d.get("mlprof load"), d.get("mlprof analyze"), d.get("HTA")
        ok = [x for x in (ml, cli, hta) if x is not None]
        json_mb = ok[0].json_mb if ok else 0.0

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:,.1f}x" if a and b else "-"

        def good(x: Run | None) -> bool:
            return x is not None and x.status == "ok"

        hta_load = hta.load_s if good(hta) else None
        hta_wall = hta.wall_s if good(hta) else None
        if hta is not None and hta.status == "timeout" and hta.wall_s:
            hta_load = hta_wall = None
        load_sp = ratio(hta_load, ml.load_s if good(ml) else None)
        e2e_sp = ratio(hta_wall, cli.wall_s if good(cli) else None)
        if hta is not None and hta.status != "ok":
            load_sp = e2e_sp = f"HTA {hta.status}"
        hta_rss = hta.peak_rss_mb if good(hta) else None
        rss_l = f"{ml.peak_rss_mb / hta_rss:.2f}" if good(ml) and hta_rss and ml.peak_rss_mb else "-"
        rss_a = f"{cli.peak_rss_mb / hta_rss:.2f}" if good(cli) and hta_rss and cli.peak_rss_mb else "-"
        own = f"{cli.peak_rss_mb / json_mb:.2f}" if good(cli) and cli.peak_rss_mb and json_mb else "-"
        lines.append(f"| {name} | {json_mb:,.1f} | {load_sp} | {e2e_sp} | {rss_l} | {rss_a} | {own} |")
    lines += ["", "Targets:", "", *check_targets(by_input)]
    notes = [f"- {r.input} / {r.tool}: {r.status} ({r.detail})" for r in runs if r.status != "ok" and r.detail]
    if notes:
        lines += ["", "Failures:", "", *notes]
    return "\n".join(lines)


#: README targets
TARGET_LOAD_SPEEDUP = 10.0
TARGET_1GB_ANALYZE_S = 30.0
TARGET_RSS_PER_JSON = 1.5
RSS_TARGET_MIN_MB = 100.0  # below this the interpreter + libraries dominate peak RSS
BIG_INPUT_MB = 900.0


def check_targets(by_input: dict[str, dict[str, Run]]) -> list[str]:
    """One line per target per input it applies to: PASS / FAIL / n/a."""
    out: list[str] = []
    for name, d in by_input.items():
        ml, cli, hta = d.get("mlprof load"), d.get("mlprof analyze"), d.get("HTA")
        if ml is not None and hta is not None:
            if ml.status == "ok" and ml.load_s and hta.status == "timeout":
                out.append(f"- {name}: load speedup >= {TARGET_LOAD_SPEEDUP:g}x: PASS (HTA timed out)")
            elif ml.status == "ok" and hta.status == "ok" and ml.load_s and hta.load_s:
                sp = hta.load_s / ml.load_s
                verdict = "PASS" if sp >= TARGET_LOAD_SPEEDUP else "FAIL"
                out.append(f"- {name}: load speedup >= {TARGET_LOAD_SPEEDUP:g}x: {verdict} ({sp:.1f}x)")
        if cli is None:
            continue
        if cli.json_mb >= BIG_INPUT_MB:
            ok = cli.status == "ok" and cli.wall_s is not None and cli.wall_s < TARGET_1GB_ANALYZE_S
            out.append(
                f"- {name}: `mlprof analyze` < {TARGET_1GB_ANALYZE_S:g} s: {'PASS' if ok else 'FAIL'} "
                f"({_f(cli.wall_s, 1) if cli.status == 'ok' else cli.status})"
            )
        if cli.json_mb >= RSS_TARGET_MIN_MB and cli.peak_rss_mb:
            worst = max(cli.peak_rss_mb, ml.peak_rss_mb or 0.0) if ml is not None else cli.peak_rss_mb
            ratio = worst / cli.json_mb
            verdict = "PASS" if ratio <= TARGET_RSS_PER_JSON and cli.status == "ok" else "FAIL"
            out.append(f"- {name}: mlprof peak RSS <= {TARGET_RSS_PER_JSON:g}x JSON: {verdict} ({ratio:.2f}x)")
    return out or ["- (no input large enough or with both tools)"]


def environment() -> str:
    import platform

    bits = [f"Python {platform.python_version()}", f"{os.cpu_count()} CPUs"]
    try:
        import psutil

        bits.append(f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM")
    except ImportError:
        pass
    for mod, label in (("mlprof", "mlprof"), ("hta", "HTA")):
        try:
            from importlib.metadata import version

            dist = {"hta": "traceinsight"}.get(mod, mod)
            bits.append(f"{label} {version(dist)}")
        except Exception:
            pass
    return ", ".join(bits)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", action="store_true", help="also run tiled 500 MB and 1 GB traces (made if missing)")
    p.add_argument("--skip-hta", action="store_true", help="mlprof only")
    p.add_argument("--skip-analyze", action="store_true", help="skip the `mlprof analyze` CLI run")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this input (repeatable)")
    p.add_argument("--input", action="append", metavar="PATH", help="an extra trace file or directory")
    p.add_argument("--traces-root", type=Path, default=DEFAULT_ROOT, help=f"external traces (default {DEFAULT_ROOT})")
    p.add_argument("--hta-timeout", type=float, default=900.0, help="seconds before an HTA run is killed")
    p.add_argument("--mlprof-timeout", type=float, default=900.0, help="seconds before an mlprof run is killed")
    p.add_argument(
        "--hta-backend",
        choices=["json", "ijson", "ijson_batched", "ijson_batch_and_compress"],
        default=None,
        help="HTA parser backend (default: HTA's own default)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per tool and input; best of each time, worst memory kept (default 3 below 200 MB, else 1)",
    )
    p.add_argument(
        "--json-out", type=Path, default=DATA / "bench_load_last.json", help="where to save raw results as JSON"
    )
    p.add_argument("--worker", choices=["mlprof", "hta", "mlprof-import", "hta-import"], help=argparse.SUPPRESS)
    p.add_argument("worker_path", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        return worker_main(args.worker, args.worker_path, args.hta_backend)

    inputs = select_inputs(args)
    have_cli = not args.skip_analyze and mlprof_cli_available()
    if not args.skip_analyze and not have_cli:
        print("note: `mlprof analyze` not available; measuring load_trace only", file=sys.stderr)
    base_ml = import_baseline("mlprof-import")
    base_hta = None if args.skip_hta else import_baseline("hta-import")
    print(f"import-only peak: mlprof {_f(base_ml, 0)} MB, HTA {_f(base_hta, 0)} MB", file=sys.stderr)
    runs: list[Run] = []
    for name, path in inputs:
        jmb = json_bytes(path) / MB  # also warms the page cache
        plan: list[tuple[str, Any]] = [
            ("mlprof", lambda n=name, q=path, j=jmb: run_worker("mlprof", n, q, j, args.mlprof_timeout, None))
        ]
        if have_cli:
            plan.append(("cli", lambda n=name, q=path, j=jmb: run_cli(n, q, j, args.mlprof_timeout)))
        if not args.skip_hta:
            plan.append(
                ("hta", lambda n=name, q=path, j=jmb: run_worker("hta", n, q, j, args.hta_timeout, args.hta_backend))
            )
        for _, fn in plan:
            tries: list[Run] = []
            repeat = args.repeat if args.repeat is not None else (3 if jmb < 200 else 1)
            for _ in range(max(1, repeat)):
                tries.append(fn())
                if tries[-1].status != "ok":
                    break
            best = min(tries, key=lambda r: (r.status != "ok", r.wall_s or 0.0))
            good = [r for r in tries if r.status == "ok"]
            if good:  # best of N, metric by metric
                best.load_s = min((r.load_s for r in good if r.load_s is not None), default=None)
                best.analysis_s = min((r.analysis_s for r in good if r.analysis_s is not None), default=None)
            best.peak_rss_mb = max((r.peak_rss_mb or 0.0) for r in tries) or None
            best.baseline_mb = base_hta if best.tool == "HTA" else base_ml
            runs.append(best)
            print(
                f"{name:>22} {best.tool:<15} {best.status:<7} wall {_f(best.wall_s)} s  load {_f(best.load_s)} s  "
                f"peak {_f(best.peak_rss_mb, 0)} MB  events {best.events or '-'} {best.detail}",
                file=sys.stderr,
                flush=True,
            )

    report = (
        f"Environment: {environment()}\n"
        f"Import-only peak RSS: mlprof {_f(base_ml, 0)} MB, HTA {_f(base_hta, 0)} MB\n\n" + render(runs)
    )
    print(report)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"environment": environment(), "runs": [asdict(r) for r in runs]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
