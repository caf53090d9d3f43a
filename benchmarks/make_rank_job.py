"""Write an N-rank job generated from one real rank's trace, with one injected straggler.

Every rank is the template rank (default: rank 0 of the real 8-rank DLRM job in
``../shared/external_traces``), tiled ``--tile`` times along time (ProfilerStep#N,
N+1, ...) and perturbed:

* each rank's clock is offset by a random amount (``--clock-skew-us``, uniform +-),
  which the analysis must undo from the collectives alone;
* at each collective every rank arrives ``U(0, --jitter-us)`` after the template's
  start, the straggler ``--jitter-us + --delay-us`` after it; every rank leaves the
  collective at the same true instant (straggler's arrival + the template's
  duration), so the others' kernels are longer by their wait, as NCCL's would be.

Ground truth, written to ``manifest.json`` beside the traces (a name the trace loader skips): the straggler rank and the
delay. Its ``critical_ms`` per step is at least ``collectives per step x delay``.

    python benchmarks/make_rank_job.py OUT_DIR --ranks 64 --straggler 37 [--gzip]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import re
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE = (
    Path(__file__).resolve().parents[2]
    / "shared/external_traces/facebookresearch__param/dlrm_kineto/worker0_step_12.1694128201545.pt.trace.json"
)
_STEP = re.compile(r"^ProfilerStep#(\d+)$")
SLIM_DROP = {"cpu_op", "ac2g", "python_function", "cuda_runtime"}
"""Event categories ``--slim`` drops (host ops, runtime calls, flow arrows): small, fast ranks for tests."""


def _is_comm_kernel(ev: dict[str, Any]) -> bool:
    name = str(ev.get("name", ""))
    return ev.get("cat") == "kernel" and name.startswith(("ncclKernel", "ncclDevKernel"))


def load_template(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc: dict[str, Any] = json.loads(raw)
    return doc


def tile_events(events: list[dict[str, Any]], tile: int) -> list[dict[str, Any]]:
    """The template's events repeated ``tile`` times, each copy shifted past the previous one."""
    timed = [e for e in events if isinstance(e.get("ts"), (int, float))]
    lo = min(e["ts"] for e in timed)
    hi = max(e["ts"] + e.get("dur", 0) for e in timed)
    span = (hi - lo) + 100.0
    out = list(events)
    for i in range(1, tile):
        for ev in events:
            if not isinstance(ev.get("ts"), (int, float)):
                continue
            c = copy.deepcopy(ev)
            c["ts"] = ev["ts"] + i * span
            m = _STEP.match(str(c.get("name", "")))
            if m:
                c["name"] = f"ProfilerStep#{int(m.group(1)) + i}"
            args = c.get("args")
            if isinstance(args, dict):
                for key in ("correlation", "External id"):
                    if isinstance(args.get(key), int):
                        args[key] += i * 10_000_000
            if isinstance(c.get("id"), int):
                c["id"] += i * 10_000_000
            out.append(c)
    return out


def rank_events(
    events: list[dict[str, Any]],
    arrivals: list[float],
    leave: list[float],
    clock_offset: float,
) -> list[dict[str, Any]]:
    """One rank's events: the template on this rank's clock, its collectives from ``arrivals`` to ``leave``."""
    out = []
    k = 0
    for ev in events:
        c = dict(ev)
        if isinstance(ev.get("ts"), (int, float)):
            if _is_comm_kernel(ev):
                start = arrivals[k]
                c["ts"] = round(start + clock_offset, 3)
                c["dur"] = round(leave[k] - start, 3)
                k += 1
            else:
                c["ts"] = round(ev["ts"] + clock_offset, 3)
        out.append(c)
    return out


def make_job(
    out_dir: Path,
    ranks: int,
    straggler: int,
    *,
    template: Path = DEFAULT_TEMPLATE,
    delay_us: float = 500.0,
    jitter_us: float = 100.0,
    clock_skew_us: float = 2000.0,
    tile: int = 1,
    slim: bool = False,
    gzip_files: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``ranks`` rank files into ``out_dir``; returns the ground truth (also written to manifest.json)."""
    doc = load_template(template)
    events = [e for e in doc["traceEvents"] if not (slim and e.get("cat") in SLIM_DROP)]
    events = tile_events(events, tile)
    events.sort(key=lambda e: e.get("ts", 0) if isinstance(e.get("ts"), (int, float)) else 0)
    comm = [e for e in events if _is_comm_kernel(e)]
    rng = random.Random(seed)
    # Whole microseconds, like the template's own times (HTA rounds fractional ones).
    u = [[float(round(rng.uniform(0.0, jitter_us))) for _ in comm] for _ in range(ranks)]
    for k in range(len(comm)):
        u[straggler][k] = jitter_us + delay_us
    leave = [comm[k]["ts"] + jitter_us + delay_us + comm[k]["dur"] for k in range(len(comm))]
    offsets = [0.0] + [float(round(rng.uniform(-clock_skew_us, clock_skew_us))) for _ in range(ranks - 1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    header = {k: v for k, v in doc.items() if k != "traceEvents"}
    for r in range(ranks):
        arrivals = [comm[k]["ts"] + u[r][k] for k in range(len(comm))]
        body = {
            **header,
            "distributedInfo": {**header.get("distributedInfo", {}), "rank": r, "world_size": ranks},
            "traceEvents": rank_events(events, arrivals, leave, offsets[r]),
        }
        data = json.dumps(body).encode()  # `"rank": N` with a space, as Kineto writes it (HTA finds ranks so)
        name = f"rank-{r}.json"
        if gzip_files:
            (out_dir / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (out_dir / name).write_bytes(data)
    truth = {
        "ranks": ranks,
        "straggler": straggler,
        "delay_us": delay_us,
        "jitter_us": jitter_us,
        "collectives_per_rank": len(comm),
        "steps": tile,
        "template": str(template),
        "seed": seed,
        "clock_offsets_us": [round(o, 3) for o in offsets],
    }
    (out_dir / "manifest.json").write_text(json.dumps(truth, indent=1))
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--straggler", type=int, default=None, help="default: ranks * 3 // 5")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--delay-us", type=float, default=500.0)
    parser.add_argument("--jitter-us", type=float, default=100.0)
    parser.add_argument("--clock-skew-us", type=float, default=2000.0)
    parser.add_argument("--tile", type=int, default=1)
    parser.add_argument("--slim", action="store_true", help="drop host ops and flows (small test ranks)")
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    straggler = a.straggler if a.straggler is not None else a.ranks * 3 // 5
    truth = make_job(
        a.out_dir,
        a.ranks,
        straggler,
        template=a.template,
        delay_us=a.delay_us,
        jitter_us=a.jitter_us,
        clock_skew_us=a.clock_skew_us,
        tile=a.tile,
        slim=a.slim,
        gzip_files=a.gzip,
        seed=a.seed,
    )
    print(json.dumps(truth))


if __name__ == "__main__":
    main()
