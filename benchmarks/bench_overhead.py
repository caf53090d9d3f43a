"""What mlprof costs a training job: step time with and without it.

::

    python benchmarks/bench_overhead.py                  # prints a markdown report
    python benchmarks/bench_overhead.py --append         # ... and appends it to benchmarks/RESULTS.md
    python benchmarks/bench_overhead.py --repeats 30     # more repeats, tighter spread
    python benchmarks/bench_overhead.py --json o.json    # ... and the medians as JSON (sample_traces/scenarios/gpu)

The same small model (an MLP, SGD) and the same step function, with three
``mlprof.range`` calls in it (forward, backward, optimizer), run in five ways:

* ``none``: the step without any instrumentation (plain ``record_function``-free code);
* ``inactive``: the step with the ``mlprof.range`` calls and no profiler;
* ``torch.profiler``: bare ``torch.profiler.profile`` with mlprof's default settings
  (CPU [+CUDA] activity, ``record_shapes``, ``profile_memory``, ``with_stack``,
  ``schedule(wait=5, warmup=2, active=5)``) writing ``trace.json.gz`` itself;
* ``mlprof.profile``: ``mlprof.profile(summary=False)`` with the same schedule (NVML
  sampling on when a GPU is present), writing its run folder;
* ``mlprof.profile+summary``: the same with the end-of-run summary, reported apart.

Modes run round-robin, ``--repeats`` times each, in one process (torch imported once).
For each repeat we take the mean step time over the measured steps; the report gives
the median over repeats and the spread (min-max). Overheads are ratios of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import mlprof  # noqa: E402

WAIT, WARMUP, ACTIVE = 5, 2, 5
PROFILED_STEPS = WAIT + WARMUP + ACTIVE
UNPROFILED_STEPS = 60


def make_step(device: str, ranges: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256, device=device), torch.randn(64, 1, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    if not ranges:

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            sync()

        return step

    fwd, bwd, optr = mlprof.range("forward"), mlprof.range("backward"), mlprof.range("optimizer")

    def step_with_ranges() -> None:
        opt.zero_grad(set_to_none=True)
        with fwd:
            loss = nn.functional.mse_loss(model(x), y)
        with bwd:
            loss.backward()
        with optr:
            opt.step()
        sync()

    return step_with_ranges


def time_unprofiled(step: Callable[[], None]) -> tuple[float, float]:
    for _ in range(5):
        step()
    t0 = time.perf_counter_ns()
    for _ in range(UNPROFILED_STEPS):
        step()
    return (time.perf_counter_ns() - t0) / UNPROFILED_STEPS, 0.0


def time_profiled(step: Callable[[], None], kind: str, device: str, out: Path) -> tuple[float, float]:
    """(mean ns of the recorded steps, wall ns of the whole profiled loop including export)."""
    durs: list[int] = []
    t_all = time.perf_counter_ns()
    if kind == "torch.profiler":
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1),
            record_shapes=True,
            profile_memory=True,
            with_stack=True,
            on_trace_ready=lambda p: p.export_chrome_trace(str(out / "trace.json.gz")),
        ) as prof:
            for _ in range(PROFILED_STEPS):
                t0 = time.perf_counter_ns()
                step()
                prof.step()
                durs.append(time.perf_counter_ns() - t0)
    else:
        summary = kind.endswith("+summary")
        with mlprof.profile(out_dir=out, summary=summary, wait=WAIT, warmup=WARMUP, active=ACTIVE) as run:
            for _ in range(PROFILED_STEPS):
                t0 = time.perf_counter_ns()
                step()
                run.step()
                durs.append(time.perf_counter_ns() - t0)
    total = time.perf_counter_ns() - t_all
    # The last active step's prof.step() runs on_trace_ready: the trace export (and, for
    # bare torch.profiler writing .json.gz, the gzip) happens inside that one step. It is
    # left out here so the row compares the cost of recording; export is in the loop table.
    recorded = durs[WAIT + WARMUP : PROFILED_STEPS - 1]
    return statistics.fmean(recorded), float(total)


def micro_costs() -> dict[str, float]:
    """ns per call of what the inactive path adds, timed in isolation."""
    r = mlprof.range("x")

    def enter_exit() -> None:
        with r:
            pass

    def bare_record_function() -> None:
        with torch.autograd.profiler.record_function("x"):
            pass

    n = 100_000
    out = {}
    for name, fn in (("mlprof.range, inactive", enter_exit), ("record_function, inactive", bare_record_function)):
        out[name] = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e9
    return out


def spread(values: list[float]) -> str:
    return f"{min(values) / 1e6:.3f}-{max(values) / 1e6:.3f}"


def pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.2f}%"


def environment(device: str) -> str:
    """One sentence on the machine: the GPU's name and driver when the run was on one."""
    cpu = platform.processor() or platform.machine()
    base = f"{os.cpu_count()}-core {cpu}"
    if device != "cuda":
        return f"{base} VM, no GPU ({device} run)"
    return f"{base}, GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}) ({device} run)"


def run(repeats: int, json_path: Path | None = None) -> str:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)
    modes = ["none", "inactive", "torch.profiler", "mlprof.profile", "mlprof.profile+summary"]
    steps = {m: make_step(device, ranges=m != "none") for m in modes}
    step_ns: dict[str, list[float]] = {m: [] for m in modes}
    loop_ns: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for m in modes:
                if m in ("none", "inactive"):
                    s, total = time_unprofiled(steps[m])
                else:
                    out = Path(tmp) / f"{m}-{i}"
                    out.mkdir()
                    if m.endswith("+summary"):
                        devnull = open(os.devnull, "w")  # noqa: SIM115 - the summary's print goes nowhere
                        saved, sys.stdout = sys.stdout, devnull
                        try:
                            s, total = time_profiled(steps[m], m, device, out)
                        finally:
                            sys.stdout = saved
                            devnull.close()
                    else:
                        s, total = time_profiled(steps[m], m, device, out)
                step_ns[m].append(s)
                loop_ns[m].append(total)
    med = {m: statistics.median(step_ns[m]) for m in modes}
    loop = {m: statistics.median(loop_ns[m]) for m in modes if loop_ns[m][0] > 0}
    micro = micro_costs()
    nvml_note = (
        "NVML sampling on (mlprof.profile's default 100 ms)."
        if device == "cuda"
        else "NVML sampling was not exercised (no GPU)."
    )
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "device": device,
                    "environment": environment(device),
                    "repeats": repeats,
                    "median_step_ns": med,
                    "step_ns": step_ns,
                    "median_loop_ns": loop,
                    "overhead_pct": {
                        "mlprof.profile_vs_torch.profiler": (med["mlprof.profile"] / med["torch.profiler"] - 1) * 100,
                        "torch.profiler_vs_none": (med["torch.profiler"] / med["none"] - 1) * 100,
                        "inactive_vs_none": (med["inactive"] / med["none"] - 1) * 100,
                    },
                },
                indent=2,
            )
            + "\n"
        )
    lines = [
        f"## Collector overhead (`benchmarks/bench_overhead.py`), {time.strftime('%Y-%m-%d')}",
        "",
        f"Environment: {environment(device)}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, mlprof {mlprof.__version__}; {repeats} repeats per mode, round-robin; "
        f"MLP 256-512-512-1, batch 64, SGD, one thread. {nvml_note}",
        "",
        "| mode | median step ms | spread over repeats (ms) | overhead | compared with |",
        "|---|---:|---:|---:|---|",
        f"| none | {med['none'] / 1e6:.3f} | {spread(step_ns['none'])} | - | - |",
        f"| inactive (3 `mlprof.range` per step, no profiler) | {med['inactive'] / 1e6:.3f} | "
        f"{spread(step_ns['inactive'])} | {pct(med['inactive'], med['none'])} | none |",
        f"| torch.profiler (recorded steps, export step excluded) | {med['torch.profiler'] / 1e6:.3f} | "
        f"{spread(step_ns['torch.profiler'])} | {pct(med['torch.profiler'], med['none'])} | none |",
        f"| mlprof.profile (recorded steps, export step excluded) | {med['mlprof.profile'] / 1e6:.3f} | "
        f"{spread(step_ns['mlprof.profile'])} | {pct(med['mlprof.profile'], med['torch.profiler'])} | torch.profiler |",
        "",
        "Whole profiled loop (12 steps, profiler start/stop, trace export and gzip, meta.json; "
        "mlprof exports the JSON in the step and gzips it on a background thread, bare torch.profiler "
        "writing `.json.gz` gzips inside the step):",
        "",
        "| mode | median loop ms | spread (ms) | vs torch.profiler |",
        "|---|---:|---:|---:|",
    ]
    for m in ("torch.profiler", "mlprof.profile", "mlprof.profile+summary"):
        lines.append(
            f"| {m} | {loop[m] / 1e6:.1f} | {spread(loop_ns[m])} | "
            + ("-" if m == "torch.profiler" else pct(loop[m], loop["torch.profiler"]))
            + " |"
        )
    per_step_ranges = 3 * micro["mlprof.range, inactive"]
    lines += [
        "",
        "Inactive cost in isolation (best of 5 x 100,000 calls):",
        "",
        "| call | ns per enter+exit |",
        "|---|---:|",
        *(f"| {k} | {v:.0f} |" for k, v in micro.items()),
        "",
        f"Three inactive ranges cost {per_step_ranges:.0f} ns per step = "
        f"{per_step_ranges / med['none'] * 100:.3f}% of the {med['none'] / 1e6:.3f} ms step; the end-to-end "
        f"`inactive` row ({pct(med['inactive'], med['none'])}) is within the run-to-run spread.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--append", action="store_true", help="append the report to benchmarks/RESULTS.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the medians to this JSON file")
    args = parser.parse_args(argv)
    report = run(args.repeats, args.json)
    print(report)
    if args.append:
        with (HERE / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write("\n" + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__: list[Any] = []
