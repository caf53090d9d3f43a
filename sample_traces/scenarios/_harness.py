"""What every scenario script shares: its command line, the step loop under mlprof.profile, step timing.

Each scenario is one training loop with one pathology, and ``--fixed`` removes it and
changes nothing else. The loop is laid out so that one run gives both a profile and a
clean wall-clock figure::

    steps 0..1                 start-up (first-call costs, DataLoader workers starting): not measured
    steps 2..2+M-1             wall-clock measured by the script, profiler idle (M = --wall-steps)
    step  2+M                  profiler warm-up
    steps 3+M..3+M+N-1         recorded: ProfilerStep#<3+M>.. in the trace (N = --steps)

The wall-clock steps come before the recorded ones on purpose: after them the trace is
gzipped on a background thread, which would compete for the machine's two cores.
The per-step wall times go into ``meta.json`` under ``user.scenario``: ``wall_step_ns``
(each whole iteration, ``run.step()`` included) and ``host_step_ns`` (from the return of
the previous ``run.step()`` to the call of this one: the span ``ProfilerStep#N`` covers in
the trace, measured by the script's own clock, not by the profiler).

``--device cuda`` runs the model on the GPU. Two things are then added, the same for the
bad and the fixed run:

* a CUDA event is recorded at the end of every step; ``device_step_ns`` are the GPU-side
  times between consecutive events (what the GPU's stream sees as one step);
* the host is kept at most ``MAX_AHEAD`` steps ahead of the GPU by polling the event of
  step ``i - MAX_AHEAD`` (``cudaEventQuery``, which is not a sync call and never drains the
  GPU's queue). Without it a GPU-bound loop without syncs runs ahead until the driver's
  launch queue is full, and the host step times would measure dispatch only for however
  many steps that takes; with it they measure the steady state from the first step.

A scenario that cannot apply its fix on this device raises :class:`Skip`; the script then
exits with :data:`EXIT_SKIPPED` and one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    import mlprof
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import mlprof

STARTUP_STEPS = 2
WARMUP = 1
MAX_AHEAD = 2
"""Steps the host may run ahead of the GPU (``--device cuda``)."""
POLL_S = 0.0002
"""Sleep between two polls of a step's CUDA event while the host waits for the GPU."""
EXIT_SKIPPED = 3
"""Exit code of a scenario whose fix cannot run here (no GPU, no compiler)."""
RANGE_NAME = "train_step"
"""The ``mlprof.range`` wrapped around every step with ``--ranges``."""


class Skip(Exception):
    """This variant cannot run on this machine; the message says why."""


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    parser.add_argument("--steps", type=int, default=5, help="recorded (profiled) steps (default: 5)")
    parser.add_argument("--wall-steps", type=int, default=20, help="unprofiled steps timed by wall clock (default: 20)")
    parser.add_argument("--fixed", action="store_true", help="remove the pathology")
    parser.add_argument("--name", default=None, help="run folder name (default: <scenario>-bad|fixed)")
    parser.add_argument("--no-summary", action="store_true", help="do not print mlprof's summary")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    parser.add_argument("--ranges", action="store_true", help=f"wrap every step in mlprof.range({RANGE_NAME!r})")
    parser.add_argument(
        "--counter-interval", type=float, default=0.1, help="NVML sampling interval in s (default: 0.1)"
    )
    return parser.parse_args(argv)


def total_steps(args: argparse.Namespace) -> int:
    return STARTUP_STEPS + args.wall_steps + WARMUP + args.steps


def device(args: argparse.Namespace) -> str:
    """The torch device the scenario runs on (``cpu`` for scripts called without ``--device``)."""
    return str(getattr(args, "device", "cpu"))


def pick(args: argparse.Namespace, cpu: Any, cuda: Any) -> Any:
    """A size for this device: the CPU sizes are those of the committed CPU recordings."""
    return cuda if device(args) == "cuda" else cpu


def skip_unless_cuda(args: argparse.Namespace, what: str) -> None:
    if args.fixed and device(args) != "cuda":
        raise Skip(f"the fix ({what}) needs a CUDA GPU; run with --device cuda")


def main_guard(main: Callable[[], None]) -> None:
    """Run ``main``; a :class:`Skip` becomes one line on stderr and exit code :data:`EXIT_SKIPPED`."""
    try:
        main()
    except Skip as why:
        print(f"skipped: {why}", file=sys.stderr)
        sys.exit(EXIT_SKIPPED)


def run_loop(
    args: argparse.Namespace,
    scenario: str,
    train_step: Callable[[int], None],
    *,
    rank: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path | None:
    """Run ``train_step(i)`` for every step under ``mlprof.profile``; returns the run folder."""
    variant = "fixed" if args.fixed else "bad"
    cuda = device(args) == "cuda"
    torch: Any = None
    if cuda:
        import torch
    n = total_steps(args)
    wall: list[int] = []
    before_step: list[int] = []  # perf_counter_ns just before run.step() of step i
    after_step: list[int] = []  # ... and just after it returned
    events: list[Any] = []
    step_range = mlprof.range(RANGE_NAME) if getattr(args, "ranges", False) else None
    with mlprof.profile(
        name=args.name or f"{scenario}-{variant}",
        out_dir=args.out,
        tags={"scenario": scenario, "variant": variant},
        wait=STARTUP_STEPS + args.wall_steps,
        warmup=WARMUP,
        active=args.steps,
        summary=not args.no_summary and rank == 0,
        nvml_interval_s=getattr(args, "counter_interval", 0.1),
    ) as run:
        entered = time.perf_counter_ns()
        for i in range(n):
            t0 = time.perf_counter_ns()
            if step_range is not None:
                with step_range:
                    train_step(i)
            else:
                train_step(i)
            if cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                events.append(event)
                if i >= MAX_AHEAD:
                    waiting = events[i - MAX_AHEAD]
                    while not waiting.query():
                        time.sleep(POLL_S)
            before_step.append(time.perf_counter_ns())
            run.step()
            after_step.append(time.perf_counter_ns())
            wall.append(after_step[-1] - t0)
        timed = wall[STARTUP_STEPS : STARTUP_STEPS + args.wall_steps]
        first = STARTUP_STEPS + args.wall_steps + WARMUP
        starts = [entered, *after_step[:-1]]
        host = [before_step[i] - starts[i] for i in range(n)]
        info: dict[str, Any] = {
            "name": scenario,
            "variant": variant,
            "device": device(args),
            "wall_step_ns": wall,
            "wall_timed_steps": [STARTUP_STEPS, STARTUP_STEPS + args.wall_steps - 1],
            "wall_mean_step_ns": round(statistics.fmean(timed)) if timed else None,
            "host_step_ns": host,
            "first_profiled_step": first,
            "profiled_steps": args.steps,
            "ranges": RANGE_NAME if step_range is not None else None,
        }
        if cuda:
            torch.cuda.synchronize()
            info["device_step_ns"] = [None] + [round(events[i - 1].elapsed_time(events[i]) * 1e6) for i in range(1, n)]
            info["max_ahead_steps"] = MAX_AHEAD
        info.update(extra or {})
        run.add_meta("scenario", info)
    if rank == 0:
        mean = statistics.fmean(timed) / 1e6 if timed else float("nan")
        print(f"{scenario} ({variant}): wall-clock mean step {mean:.2f} ms over {len(timed)} unprofiled steps")
    return run.path
