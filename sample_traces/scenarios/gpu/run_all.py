"""Record every fix type both ways on one GPU machine: the ground truth mlprof's predictions are held to.

::

    python sample_traces/scenarios/gpu/run_all.py --out "$OUT"     # on a machine with an NVIDIA GPU
    python sample_traces/scenarios/gpu/run_all.py --cpu --out runs  # the same, end to end, on CPU

Each scenario script of ``sample_traces/scenarios`` runs twice, the pathology and then its
one-flag fix (``--fixed``), each in its own process with a timeout (one failure or hang
loses that run only), through ``mlprof.profile`` with GPU counters (NVML) on and every
step wrapped in ``mlprof.range("train_step")``. Each recording is checked (see
:func:`sanity`) by reading the raw files, not through mlprof. Written to ``--out``:

``manifest.json``
    per scenario and variant: status (``ok``, ``skipped``, ``failed``, ``timeout``,
    ``not run``) and why, the sanity checks, and the measured steady-state step times of
    the profiled steps (median, mean, min, max, quartiles, n): ``host_step_ns`` from the
    script's own clock (``time.perf_counter_ns``; the span ``ProfilerStep#N`` covers),
    ``device_step_ns`` between CUDA events recorded at every step end (GPU only), and
    ``trace_step_ns`` read from the trace JSON as exact decimals; the measured speedup
    bad/fixed; the machine (GPU name, driver, torch, CUDA) and the collector overhead
    benchmark repeated on this machine. Also inside the archive as ``recorded/manifest.json``.
``recorded.tar.gz`` (and ``recorded-2.tar.gz``... when one would pass ``--archive-mib``)
    ``recorded/<scenario>/{bad,fixed}/`` run folders (``trace.rank<N>.json.gz``,
    ``meta.json``, ``counters.rank<N>.csv``), the manifest in the first. The device tool
    brings back at most 8 files of 16 MiB each, so the scenarios are packed whole into at most
    :data:`MAX_ARCHIVES` archives of at most 15 MiB; a scenario that fits in none is listed in the
    manifest's ``left_out``. Unpack them all with
    ``for f in recorded*.tar.gz; do tar -xzf $f -C sample_traces/scenarios/gpu/; done``; tests
    read that folder.
``run_all.log``, ``overhead.md``
    every child's output; the overhead benchmark's report.

The whole run keeps to ``--budget-s`` (default 420 s: one H200 lease has 15 minutes,
of which starting the machine takes some): a scenario that would start after the budget
is marked ``not run``. Nothing here downloads anything; every model is built in code.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIOS_DIR = HERE.parent
REPO = HERE.parents[2]
sys.path.insert(0, str(SCENARIOS_DIR))
import _harness  # noqa: E402

EXIT_BAD_INPUT = 2
MAX_ARCHIVES = 4
"""With manifest.json, run_all.log and overhead.md: 7 files, under the device tool's 8."""
VARIANTS = ("bad", "fixed")


@dataclass(frozen=True)
class Scenario:
    """One fix type: the script, what it shows, and the rule that should find it."""

    name: str
    fix_type: str
    pathology: str
    fix: str
    rule: str | None
    """The rule id expected to fire on the bad run and not on the fixed one (None: match by ``category``)."""
    category: str
    judged_on: str = "speedup"
    """``speedup``: the prediction is held to the measured speedup; ``memory``: the fix saves memory, not time."""
    gpus: int = 1
    timeout_s: int = 90
    note: str = ""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "data_starvation",
        "dataloader_workers",
        "DataLoader(num_workers=0): every batch read and collated on the training thread",
        "num_workers (8 on GPU) + persistent_workers + pin_memory, copies non_blocking",
        "DATA001",
        "data_starvation",
    ),
    Scenario(
        "sync_item",
        "item_every_n",
        "73 .item() calls per step (loss + 6 statistics of each of 12 parameters)",
        "loss accumulated on the device; statistics read every 50 steps",
        "SYNC001",
        "sync_point",
    ),
    Scenario(
        "unfused_optimizer",
        "fused_optimizer",
        "Adam(foreach=False): ~10 small ops per parameter, 24 parameters",
        "Adam(fused=True)",
        "FUSE002",
        "unfused_kernels",
    ),
    Scenario(
        "precision",
        "bf16_autocast",
        "4 x 4096-wide MLP in FP32 (TF32 off)",
        "forward under torch.autocast(dtype=torch.bfloat16)",
        "AMP001",
        "precision",
    ),
    Scenario(
        "attention",
        "sdpa",
        "attention written as matmul -> softmax -> matmul (S x S scores materialised)",
        "torch.nn.functional.scaled_dot_product_attention",
        "ATTN001",
        "attention",
    ),
    Scenario(
        "pinned_h2d",
        "pinned_h2d",
        "64 MB batches copied from pageable memory with a blocking .to('cuda')",
        "the same batches pinned, copied with non_blocking=True",
        "DATA002",
        "data_starvation",
    ),
    Scenario(
        "memory_leak",
        "detach_metric",
        "val_losses.append(val_loss) keeps each step's autograd graph alive",
        "val_losses.append(val_loss.detach())",
        "MEM001",
        "memory",
        judged_on="memory",
    ),
    Scenario(
        "compile_fusion",
        "torch_compile",
        "RMS norm + bias + tanh-GELU + residual written op by op on a 4096 x 4096 activation",
        "torch.compile(block) (Inductor fuses the chain)",
        "FUSE001",
        "unfused_kernels",
        timeout_s=240,
    ),
    Scenario(
        "launch_bound",
        "cuda_graphs",
        "16-layer 64-wide MLP, batch 32, eager: kernels shorter than their launches",
        'torch.compile(model, mode="reduce-overhead") (CUDA graphs)',
        "LAUNCH001",
        "unfused_kernels",
        timeout_s=240,
    ),
    Scenario(
        "unfused_elementwise",
        "fused_op",
        "tanh-GELU written as 9 elementwise ops",
        "F.gelu(approximate='tanh')",
        "FUSE001",
        "unfused_kernels",
    ),
    Scenario(
        "comm_no_overlap",
        "ddp_overlap",
        "2 ranks: all_reduce of each gradient, one by one, after the backward pass",
        "DistributedDataParallel (bucketed all-reduce from backward hooks)",
        "COMM001",
        "communication",
        gpus=2,
        timeout_s=120,
    ),
    Scenario(
        "graph_break",
        "fullgraph",
        "torch.compile(backend='aot_eager') forward with two `if h.mean() > 0.1:` graph breaks",
        "torch.where(...) and torch.compile(..., fullgraph=True): one graph",
        "COMPILE001",
        "compile",
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}

_STEP = re.compile(r"^ProfilerStep#(\d+)$")


# -- reading the raw recording (independent of mlprof) -------------------------------------


def _ns(value: Any) -> int:
    """Kineto µs (exact decimal) -> int ns."""
    return int(Decimal(str(value)) * 1000)


def read_trace(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh, parse_float=Decimal)
    return [e for e in doc.get("traceEvents", []) if isinstance(e, dict)]


def trace_steps(events: list[dict[str, Any]]) -> dict[int, int]:
    """ProfilerStep number -> duration ns."""
    out = {}
    for e in events:
        m = _STEP.match(str(e.get("name", "")))
        if m and e.get("ph") == "X":
            out[int(m.group(1))] = _ns(e.get("dur", 0))
    return dict(sorted(out.items()))


def stats(values: Sequence[int]) -> dict[str, Any] | None:
    """Median and spread of step times (int ns)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    q = statistics.quantiles(vals, n=4) if len(vals) >= 2 else [vals[0]] * 3
    return {
        "median": round(statistics.median(vals)),
        "mean": round(statistics.fmean(vals)),
        "min": vals[0],
        "max": vals[-1],
        "p25": round(q[0]),
        "p75": round(q[2]),
        "n": len(vals),
    }


def counter_check(path: Path, interval_s: float) -> dict[str, Any]:
    """Were GPU counters sampled at the configured rate? (gpu_util_pct rows of device 0)"""
    if not path.exists():
        return {"ok": False, "why": f"no {path.name}"}
    ts = []
    metrics = set()
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
        col = {name: i for i, name in enumerate(header)}
        for line in fh:
            parts = line.rstrip("\n").split(",")
            metrics.add(parts[col["metric"]])
            if parts[col["metric"]] == "gpu_util_pct" and parts[col["device"]] == "0":
                ts.append(int(parts[col["ts"]]))
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    median_gap_s = statistics.median(gaps) / 1e9 if gaps else None
    ok = median_gap_s is not None and 0.5 * interval_s <= median_gap_s <= 2.0 * interval_s
    return {
        "ok": ok,
        "samples": len(ts),
        "configured_interval_s": interval_s,
        "median_interval_s": round(median_gap_s, 4) if median_gap_s is not None else None,
        "metrics": sorted(metrics),
    }


def sanity(folder: Path, cuda: bool, steps: int, interval_s: float) -> dict[str, Any]:
    """Check one recorded run folder from its raw files; ``ok`` is the conjunction of the checks that apply."""
    meta = json.loads((folder / "meta.json").read_text())
    user = meta.get("user", {}).get("scenario", {})
    first = int(user["first_profiled_step"])
    traces = sorted(folder.glob("trace.rank*.json.gz"))
    checks: dict[str, Any] = {"meta_errors": meta.get("errors", []), "traces": [p.name for p in traces]}
    events = read_trace(traces[0]) if traces else []
    durs = trace_steps(events)
    wanted = list(range(first, first + steps))
    checks["steps"] = {"ok": list(durs) == wanted, "found": list(durs), "expected": wanted}
    x = [e for e in events if e.get("ph") == "X"]
    kernels = sum(1 for e in x if e.get("cat") == "kernel")
    checks["kernels"] = (
        {"ok": kernels >= steps, "count": kernels}
        if cuda
        else {"ok": None, "count": kernels, "why": "CPU run: no device activity to record"}
    )
    ranges = sum(1 for e in x if e.get("cat") == "user_annotation" and e.get("name") == _harness.RANGE_NAME)
    gpu_ranges = sum(1 for e in x if e.get("cat") == "gpu_user_annotation" and e.get("name") == _harness.RANGE_NAME)
    checks["ranges"] = {"ok": ranges == steps, "host": ranges, "gpu": gpu_ranges, "name": _harness.RANGE_NAME}
    if cuda:
        checks["counters"] = counter_check(folder / "counters.rank0.csv", interval_s)
    else:
        checks["counters"] = {"ok": None, "why": "CPU run: no GPU counters", "notes": meta.get("notes", [])}
    host = user.get("host_step_ns", [])[first : first + steps]
    host_med = statistics.median(host) if host else 0
    pairs = [(h, durs[k]) for k, h in zip(wanted, host, strict=False) if durs.get(k)]
    rel = [abs(h - d) / d for h, d in pairs]
    typical = statistics.median(rel) if rel else None
    checks["host_vs_trace"] = {
        "ok": typical is not None and typical <= 0.05 and len(pairs) == steps,
        "median_relative_difference_per_step": round(typical, 4) if typical is not None else None,
        "steps_within_10pct": sum(r <= 0.10 for r in rel),
    }
    if cuda:
        device = [d for d in user.get("device_step_ns", [])[first : first + steps] if d is not None]
        dev_med = statistics.median(device) if device else 0
        diff = abs(dev_med - host_med) / host_med if host_med else None
        checks["steady_state"] = {
            "ok": diff is not None and diff <= 0.15,
            "relative_difference_host_vs_device_medians": round(diff, 4) if diff is not None else None,
        }
    applicable = [v["ok"] for v in checks.values() if isinstance(v, dict) and "ok" in v and v["ok"] is not None]
    checks["ok"] = all(applicable) and not checks["meta_errors"]
    return checks


# -- running ------------------------------------------------------------------------------


def machine_info(cuda: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu_count"] = torch.cuda.device_count()
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_capability"] = list(torch.cuda.get_device_capability(0))
            info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
            info["cudnn"] = torch.backends.cudnn.version()
        else:
            info["gpu_count"] = 0
            info["gpu"] = None
    except Exception as exc:
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    info["driver"] = None
    if cuda:
        try:
            import pynvml

            pynvml.nvmlInit()
            version = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = version.decode() if isinstance(version, bytes) else str(version)
            pynvml.nvmlShutdown()
        except Exception:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=False,
            )
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    return info


class Runner:
    def __init__(self, args: argparse.Namespace, out: Path, stage: Path) -> None:
        self.args = args
        self.out = out
        self.stage = stage
        self.device = "cpu" if args.cpu else "cuda"
        self.t0 = time.monotonic()
        self.log = (out / "run_all.log").open("w", encoding="utf-8")

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def child(self, cmd: list[str], timeout_s: float, env: dict[str, str]) -> tuple[str, int | None, str, str]:
        """Run one child; ('ok'|'skipped'|'failed'|'timeout', returncode, last stderr line, stdout)."""
        self.log.write("$ " + " ".join(cmd) + "\n")
        self.log.flush()
        # Its own process group, so that a timeout also ends what it started (DataLoader workers,
        # mp.spawn ranks): left running they would hold the GPU during the next scenario.
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            self.log.write(stdout + stderr)
            return "timeout", None, f"no result within {timeout_s:.0f} s", ""
        self.log.write(stdout + stderr)
        self.log.flush()
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        if proc.returncode == 0:
            return "ok", 0, "", stdout
        if proc.returncode == _harness.EXIT_SKIPPED:
            skipped = [ln for ln in lines if ln.startswith("skipped: ")]
            reason = (skipped[-1] if skipped else last).removeprefix("skipped: ")
            return "skipped", proc.returncode, reason, stdout
        return "failed", proc.returncode, last[-300:], stdout

    def record(self, sc: Scenario, variant: str, gpus: int) -> dict[str, Any]:
        script = SCENARIOS_DIR / f"{sc.name}.py"
        entry: dict[str, Any] = {}
        if not script.exists():
            return {"status": "not run", "why": f"{script.relative_to(REPO)} does not exist (yet)"}
        if self.device == "cuda" and gpus < sc.gpus:
            return {"status": "skipped", "why": f"needs {sc.gpus} GPUs, this machine has {gpus}"}
        left = self.left_s()
        if left < self.args.min_run_s:
            return {"status": "not run", "why": f"time budget ({self.args.budget_s:.0f} s) spent"}
        runs = self.stage / "runs" / sc.name
        cmd = [
            sys.executable,
            str(script),
            "--out",
            str(runs),
            "--name",
            variant,
            "--no-summary",
            "--steps",
            str(self.args.steps),
            "--wall-steps",
            str(self.args.wall_steps),
            "--device",
            self.device,
            "--ranges",
            "--counter-interval",
            str(self.args.counter_interval),
        ] + (["--fixed"] if variant == "fixed" else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        timeout = min(sc.timeout_s * self.args.timeout_scale, left)
        started = time.monotonic()
        status, rc, why, _ = self.child(cmd, timeout, env)
        entry["status"], entry["seconds"] = status, round(time.monotonic() - started, 1)
        if rc not in (0, None):
            entry["returncode"] = rc
        if why:
            entry["why"] = why
        src = runs / variant
        if status != "ok":
            return entry
        dst = self.stage / "recorded" / sc.name / variant
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, dst / f.name)
        entry["dir"] = f"{sc.name}/{variant}"
        entry["files"] = {f.name: f.stat().st_size for f in sorted(dst.iterdir())}
        entry["sanity"] = sanity(dst, self.device == "cuda", self.args.steps, self.args.counter_interval)
        user = json.loads((dst / "meta.json").read_text())["user"]["scenario"]
        first = user["first_profiled_step"]
        window = slice(first, first + self.args.steps)
        entry["profiled_steps"] = [first, first + self.args.steps - 1]
        entry["host_step_ns"] = stats(user["host_step_ns"][window])
        entry["device_step_ns"] = stats(user["device_step_ns"][window]) if "device_step_ns" in user else None
        traces = sorted(dst.glob("trace.rank*.json.gz"))
        entry["trace_step_ns"] = stats(list(trace_steps(read_trace(traces[0])).values())) if traces else None
        return entry

    def nvml_tests(self) -> dict[str, Any]:
        """tests/test_collectors_nvml.py against the real NVML library (it skips where there is none).

        ``--noconftest``: the shared conftest imports mlprof's trace reader, whose dependencies
        the GPU image lacks; the NVML tests need none of it.
        """
        if self.device == "cpu":
            return {"status": "not run", "why": "CPU run: no NVIDIA driver, the real-library tests skip here"}
        cmd = [sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", "-rs"]
        cmd += [str(REPO / "tests" / "test_collectors_nvml.py")]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        status, rc, why, stdout = self.child(cmd, 90.0, env)
        tail = [ln for ln in stdout.splitlines() if ln.strip()][-1:] or [why]
        return {"status": "ok" if status == "ok" else status, "returncode": rc, "summary": tail[0][-300:]}

    def overhead(self) -> dict[str, Any]:
        repeats = self.args.overhead_repeats
        if repeats <= 0:
            return {"status": "not run", "why": "--overhead-repeats 0"}
        json_path = self.stage / "overhead.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / "bench_overhead.py"), "--repeats", str(repeats)]
        cmd += ["--json", str(json_path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        started = time.monotonic()
        status, _, why, stdout = self.child(cmd, self.args.overhead_timeout_s, env)
        result: dict[str, Any] = {"status": status, "seconds": round(time.monotonic() - started, 1)}
        if why:
            result["why"] = why
        if status == "ok" and json_path.exists():
            data = json.loads(json_path.read_text())
            pct = data["overhead_pct"]["mlprof.profile_vs_torch.profiler"]
            result.update(
                device=data["device"],
                environment=data["environment"],
                repeats=data["repeats"],
                median_step_ns={k: round(v) for k, v in data["median_step_ns"].items()},
                overhead_pct={k: round(v, 2) for k, v in data["overhead_pct"].items()},
                target_pct=2.0,
                target_met=pct <= 2.0,
            )
            report = stdout[stdout.find("## Collector overhead") :]  # the markdown report the benchmark printed
            (self.out / "overhead.md").write_text(report, encoding="utf-8")
        return result


def measured_speedup(entry: dict[str, Any], key: str) -> float | None:
    try:
        return round(entry["bad"][key]["median"] / entry["fixed"][key]["median"], 4)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else runs-gpu)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU (GPU-only fixes are skipped, and said so)")
    parser.add_argument("--only", action="append", choices=[s.name for s in SCENARIOS], help="just this scenario")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps per run (default 10, at least 10)")
    parser.add_argument("--wall-steps", type=int, default=10, help="unprofiled steps before them (default 10)")
    parser.add_argument("--counter-interval", type=float, default=0.1, help="NVML interval, s (default 0.1)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting runs after this (default 420)")
    parser.add_argument("--min-run-s", type=float, default=20.0, help="do not start a run with less left (default 20)")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every run's timeout (default 1)")
    parser.add_argument("--overhead-repeats", type=int, default=8, help="overhead benchmark repeats (0: skip)")
    parser.add_argument("--overhead-timeout-s", type=float, default=120.0, help="overhead benchmark timeout")
    parser.add_argument("--archive-mib", type=float, default=15.0, help="largest archive, MiB (default 15)")
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error("--steps must be at least 10 (the manifest's medians and spreads need them)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or "runs-gpu")
    if not args.cpu:
        try:
            import torch

            has_gpu = bool(torch.cuda.is_available())
        except Exception:
            has_gpu = False
        if not has_gpu:
            print("run_all: no CUDA GPU here (torch.cuda.is_available() is False); use --cpu", file=sys.stderr)
            return EXIT_BAD_INPUT
    out.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", *archive_names()):
        if (out / name).exists():
            print(f"run_all: {out / name} exists; give an empty --out folder", file=sys.stderr)
            return EXIT_BAD_INPUT
    with tempfile.TemporaryDirectory(prefix="mlprof-gpu-") as tmp:
        stage = Path(tmp)
        runner = Runner(args, out, stage)
        machine = machine_info(not args.cpu)
        gpus = int(machine.get("gpu_count") or 0)
        runner.say(f"device {runner.device}: {machine.get('gpu') or 'no GPU'}, torch {machine.get('torch')}")
        overhead = runner.overhead()
        runner.say(f"overhead benchmark: {overhead['status']} {overhead.get('overhead_pct', '')}")
        nvml = runner.nvml_tests()
        runner.say(f"NVML tests: {nvml['status']} {nvml.get('summary', nvml.get('why', ''))}")
        chosen = [BY_NAME[n] for n in args.only] if args.only else list(SCENARIOS)
        scenarios: dict[str, Any] = {}
        for sc in chosen:
            entry: dict[str, Any] = {k: v for k, v in asdict(sc).items() if k not in ("name", "timeout_s")}
            for variant in VARIANTS:
                entry[variant] = runner.record(sc, variant, gpus)
                v = entry[variant]
                med = (v.get("host_step_ns") or {}).get("median")
                sane = v.get("sanity", {}).get("ok")
                runner.say(
                    f"{sc.name}/{variant}: {v['status']}"
                    + (f", median step {med / 1e6:.3f} ms, sane={sane}" if med else "")
                    + (f" ({v['why']})" if v.get("why") else "")
                )
            entry["speedup"] = {
                "host_median": measured_speedup(entry, "host_step_ns"),
                "device_median": measured_speedup(entry, "device_step_ns"),
                "trace_median": measured_speedup(entry, "trace_step_ns"),
            }
            scenarios[sc.name] = entry
        manifest = {
            "schema_version": "1.0",
            "generated_by": "sample_traces/scenarios/gpu/run_all.py",
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": runner.device,
            "cpu_mode": args.cpu,
            "cpu_mode_note": (
                "CPU run: timings are CPU timings; GPU-only parts were skipped (kernels, NVML counters, "
                "device step times, fixes that need CUDA: each says so where it applies)"
                if args.cpu
                else None
            ),
            "machine": machine,
            "settings": {
                "steps": args.steps,
                "wall_steps": args.wall_steps,
                "counter_interval_s": args.counter_interval,
                "max_ahead_steps": _harness.MAX_AHEAD,
                "range": _harness.RANGE_NAME,
                "budget_s": args.budget_s,
            },
            "definitions": {
                "host_step_ns": "per profiled step, the script's time.perf_counter_ns() from the return of the "
                "previous run.step() to the call of this one (the span ProfilerStep#N covers); stats over "
                "the profiled steps",
                "device_step_ns": "GPU-side time between CUDA events recorded at consecutive step ends",
                "trace_step_ns": "ProfilerStep#N durations read from the trace JSON as exact decimals",
                "speedup": "median bad step / median fixed step, for each of the three measurements",
                "status": "ok | skipped (the fix cannot run here, why says) | failed | timeout | not run",
            },
            "overhead": overhead,
            "nvml_tests": nvml,
            "total_seconds": round(time.monotonic() - runner.t0, 1),
            "scenarios": scenarios,
        }
        recorded = stage / "recorded"
        recorded.mkdir(exist_ok=True)
        groups, left_out = pack(recorded, list(scenarios), int(args.archive_mib * 2**20))
        manifest["archives"] = {name: names for name, names in zip(archive_names(), groups, strict=False)}
        manifest["left_out"] = left_out
        text = json.dumps(manifest, indent=2) + "\n"
        (recorded / "manifest.json").write_text(text)
        for name, names in manifest["archives"].items():
            with tarfile.open(out / name, "w:gz") as tar:
                if name == "recorded.tar.gz":
                    tar.add(recorded / "manifest.json", arcname="recorded/manifest.json")
                for scenario in names:
                    tar.add(recorded / scenario, arcname=f"recorded/{scenario}")
        (out / "manifest.json").write_text(text)
        runner.say(f"wrote {out / 'manifest.json'} and {', '.join(manifest['archives'])}")
        if left_out:
            runner.say(f"left out (too large for the archives): {left_out}")
        runner.log.close()
    return 0


def archive_names() -> list[str]:
    return ["recorded.tar.gz"] + [f"recorded-{i}.tar.gz" for i in range(2, MAX_ARCHIVES + 1)]


def pack(recorded: Path, scenarios: list[str], limit: int) -> tuple[list[list[str]], dict[str, str]]:
    """Scenarios (whole) into at most MAX_ARCHIVES groups of at most ``limit`` bytes, in order.

    The run folders hold gzipped traces, so their size on disk is about what they add to an archive.
    """
    groups: list[list[str]] = [[]]
    sizes = [0]
    left_out: dict[str, str] = {}
    for name in scenarios:
        folder = recorded / name
        if not folder.exists():
            continue
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) + 64 * 1024
        if size > limit:
            left_out[name] = f"{size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB archive limit"
            continue
        if sizes[-1] + size > limit:
            if len(groups) == MAX_ARCHIVES:
                left_out[name] = f"no room in {MAX_ARCHIVES} archives of {limit / 2**20:.0f} MiB"
                continue
            groups.append([])
            sizes.append(0)
        groups[-1].append(name)
        sizes[-1] += size
    return groups, left_out


if __name__ == "__main__":
    sys.exit(main())
