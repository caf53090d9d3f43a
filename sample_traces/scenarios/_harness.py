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
The per-step wall times go into ``meta.json`` under ``user.scenario``.
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


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    parser.add_argument("--steps", type=int, default=5, help="recorded (profiled) steps (default: 5)")
    parser.add_argument("--wall-steps", type=int, default=20, help="unprofiled steps timed by wall clock (default: 20)")
    parser.add_argument("--fixed", action="store_true", help="remove the pathology")
    parser.add_argument("--name", default=None, help="run folder name (default: <scenario>-bad|fixed)")
    parser.add_argument("--no-summary", action="store_true", help="do not print mlprof's summary")
    return parser.parse_args(argv)


def total_steps(args: argparse.Namespace) -> int:
    return STARTUP_STEPS + args.wall_steps + WARMUP + args.steps


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
    wall: list[int] = []
    with mlprof.profile(
        name=args.name or f"{scenario}-{variant}",
        out_dir=args.out,
        tags={"scenario": scenario, "variant": variant},
        wait=STARTUP_STEPS + args.wall_steps,
        warmup=WARMUP,
        active=args.steps,
        summary=not args.no_summary and rank == 0,
    ) as run:
        for i in range(total_steps(args)):
            t0 = time.perf_counter_ns()
            train_step(i)
            run.step()
            wall.append(time.perf_counter_ns() - t0)
        timed = wall[STARTUP_STEPS : STARTUP_STEPS + args.wall_steps]
        run.add_meta(
            "scenario",
            {
                "name": scenario,
                "variant": variant,
                "wall_step_ns": wall,
                "wall_timed_steps": [STARTUP_STEPS, STARTUP_STEPS + args.wall_steps - 1],
                "wall_mean_step_ns": round(statistics.fmean(timed)) if timed else None,
                "first_profiled_step": STARTUP_STEPS + args.wall_steps + WARMUP,
                "profiled_steps": args.steps,
                **(extra or {}),
            },
        )
    if rank == 0:
        mean = statistics.fmean(timed) / 1e6 if timed else float("nan")
        print(f"{scenario} ({variant}): wall-clock mean step {mean:.2f} ms over {len(timed)} unprofiled steps")
    return run.path
