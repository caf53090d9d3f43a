"""Record every scenario both ways and write the ground-truth manifest.

::

    python sample_traces/scenarios/record_all.py                 # all scenarios -> recorded/
    python sample_traces/scenarios/record_all.py --only sync_item

Each scenario script runs ``--runs`` times each way (bad, then ``--fixed``, interleaved), each
in a fresh process under ``mlprof.profile``; the median run's traces and ``meta.json`` are copied to
``recorded/<scenario>/{bad,fixed}/`` and ``recorded/manifest.json`` gets, for each
variant, the step times read straight from the trace JSON (``ProfilerStep#N``
durations, parsed as exact decimals, not through mlprof), the wall-clock step times
the script measured on unprofiled steps, the scenario's own evidence (DataLoader share,
``aten::item`` count, ...) and the speedups bad/fixed. mlprof's rules can be checked
against these numbers without trusting mlprof's own reader.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RECORDED = HERE / "recorded"
MAX_FILE_BYTES = 300_000

SCENARIOS: dict[str, dict[str, Any]] = {
    "data_starvation": {
        "pathology": "DataLoader(num_workers=0) with a slow __getitem__: the batch is read on the training thread",
        "fix": "num_workers=2, persistent_workers=True (and the file_system sharing strategy)",
        "signal": "dataloader_share: DataLoader __next__ time / step time",
    },
    "sync_item": {
        "pathology": "73 .item() calls per step (loss + 6 statistics for each of 12 parameters)",
        "fix": "accumulate the loss as a tensor; compute and read statistics every 50 steps",
        "signal": "item_calls_per_step; on CPU .item() waits for no device, the cost is the per-step statistics",
    },
    "unfused_elementwise": {
        "pathology": "tanh-GELU written as 9 separate elementwise ops on a 256x2048 activation",
        "fix": "torch.nn.functional.gelu(approximate='tanh'): one fused op forward and one backward",
        "signal": "elementwise_ops_per_step (aten mul/add/tanh/pow/gelu and their backward ops)",
    },
    "memory_leak": {
        "pathology": "val_losses.append(val_loss) keeps each step's autograd graph (and activations) alive",
        "fix": "val_losses.append(val_loss.detach())",
        "signal": "allocated_growth_bytes_per_step from [memory] Total Allocated; step time is not the point",
    },
    "unfused_optimizer": {
        "pathology": "Adam(foreach=False): ~10 small ops per parameter, 24 parameters",
        "fix": "Adam(fused=True)",
        "signal": "optimizer_share and optimizer_ops_per_step inside Optimizer.step",
    },
    "attention": {
        "pathology": "self-attention (1 x 2 heads x 2048 tokens x 64) as q @ k^T * scale, softmax, @ v: "
        "the 32 MiB score matrix written out and read back (inference, no_grad)",
        "fix": "torch.nn.functional.scaled_dot_product_attention(q, k, v) (CPU flash kernel)",
        "signal": "softmax_calls_per_step, sdpa_calls_per_step and attention_share: union of the top-level "
        "aten::matmul/mul/softmax (bad) or aten::scaled_dot_product_attention (fixed) ops over step time",
    },
    "data_parallel": {
        "pathology": "nn.DataParallel: one process replicates, scatters, runs threads and gathers on every GPU",
        "fix": "the bare module, as each DistributedDataParallel process runs it (one process per GPU)",
        "signal": "dp_forward_calls_per_step (DataParallel.forward ranges); on CPU DataParallel has no devices "
        "and calls the module directly, so the time is the same both ways (detection case)",
    },
    "graph_break": {
        "pathology": "torch.compile(backend='aot_eager') forward with `if h.mean() > 0.1:` after two of its three "
        "layers: Dynamo splits it into compiled regions with the .item() read and resume frames between them",
        "fix": "torch.where(h.mean() > 0.1, h * 2, h) and torch.compile(..., fullgraph=True): one graph",
        "signal": "compiled_regions_per_step, nested_regions_per_step (a region starting inside another on the "
        "training thread: a resume frame or a frame called from a broken one) and item_calls_per_step",
    },
    "comm_no_overlap": {
        "pathology": "2 ranks (gloo): all_reduce of each of 16 gradients, one by one, after the backward pass",
        "fix": "DistributedDataParallel (bucketed all-reduce started from backward hooks)",
        "signal": "allreduce_calls_per_step (c10d::allreduce_ on the training thread) and allreduce_share: union of "
        "c10d::allreduce_ and gloo:all_reduce (gloo worker threads) over step time; the training thread's wait "
        "for the result is not a recorded op",
    },
}

_STEP = re.compile(r"^ProfilerStep#(\d+)$")
_ATTENTION_OPS = {"aten::matmul", "aten::mul", "aten::softmax", "aten::scaled_dot_product_attention"}
_ELEMENTWISE = re.compile(r"^aten::(mul|add|tanh|pow|gelu|gelu_backward|tanh_backward|rsub|sub|div)_?$")


def _ns(value: Any) -> int:
    """Kineto µs (an exact decimal here) -> int ns."""
    return int(Decimal(str(value)) * 1000)


def read_events(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh, parse_float=Decimal)
    events = [e for e in doc.get("traceEvents", []) if isinstance(e, dict)]
    return doc, events


def profiler_steps(events: Iterable[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(step number, start ns, end ns) of every ProfilerStep#N range, by start."""
    steps = []
    for e in events:
        m = _STEP.match(str(e.get("name", "")))
        if m and e.get("ph") == "X":
            start = _ns(e["ts"])
            steps.append((int(m.group(1)), start, start + _ns(e.get("dur", 0))))
    return sorted(steps, key=lambda s: s[1])


def _in_steps(events: list[dict[str, Any]], steps: list[tuple[int, int, int]], pred: Callable[[dict], bool]) -> list:
    """Per step: the ``X`` events matching ``pred`` that start inside the step."""
    chosen = [e for e in events if e.get("ph") == "X" and pred(e)]
    return [[e for e in chosen if start <= _ns(e["ts"]) < end] for _, start, end in steps]


def _union_ns(events: list[dict[str, Any]]) -> int:
    spans = sorted((_ns(e["ts"]), _ns(e["ts"]) + _ns(e.get("dur", 0))) for e in events)
    total, cur_s, cur_e = 0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None and cur_s is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None and cur_s is not None:
        total += cur_e - cur_s
    return total


def evidence(scenario: str, events: list[dict[str, Any]], steps: list[tuple[int, int, int]]) -> dict[str, Any]:
    """The scenario's own measurement, per step, read from the raw events."""
    durs = [end - start for _, start, end in steps]
    total = sum(durs) or 1

    def per_step_count(pred: Callable[[dict], bool]) -> float:
        return statistics.fmean(len(x) for x in _in_steps(events, steps, pred))

    def share(pred: Callable[[dict], bool]) -> float:
        return round(sum(_union_ns(x) for x in _in_steps(events, steps, pred)) / total, 4)

    if scenario == "data_starvation":
        is_next = lambda e: "DataLoader" in e["name"] and "__next__" in e["name"]  # noqa: E731
        return {"dataloader_share": share(is_next), "dataloader_next_calls_per_step": per_step_count(is_next)}
    if scenario == "sync_item":
        return {"item_calls_per_step": per_step_count(lambda e: e["name"] == "aten::item")}
    if scenario == "unfused_elementwise":
        return {"elementwise_ops_per_step": per_step_count(lambda e: bool(_ELEMENTWISE.match(e["name"])))}
    if scenario == "unfused_optimizer":
        is_opt = lambda e: str(e["name"]).startswith("Optimizer.step#")  # noqa: E731
        opt_ranges = [r for step in _in_steps(events, steps, is_opt) for r in step]
        ops = [
            e
            for e in events
            if e.get("cat") == "cpu_op"
            and any(_ns(r["ts"]) <= _ns(e["ts"]) < _ns(r["ts"]) + _ns(r["dur"]) for r in opt_ranges)
        ]
        return {"optimizer_share": share(is_opt), "optimizer_ops_per_step": len(ops) / max(1, len(steps))}
    if scenario == "attention":
        is_attn = lambda e: e.get("cat") == "cpu_op" and e["name"] in _ATTENTION_OPS  # noqa: E731
        return {
            "softmax_calls_per_step": per_step_count(lambda e: e["name"] == "aten::softmax"),
            "sdpa_calls_per_step": per_step_count(lambda e: e["name"] == "aten::scaled_dot_product_attention"),
            "attention_share": share(is_attn),
        }
    if scenario == "data_parallel":
        return {"dp_forward_calls_per_step": per_step_count(lambda e: e["name"] == "DataParallel.forward")}
    if scenario == "graph_break":
        is_region = lambda e: str(e["name"]).startswith("Torch-Compiled Region")  # noqa: E731
        per_step = _in_steps(events, steps, is_region)
        nested = [
            sum(
                1
                for a in regions
                for b in regions
                if a is not b and _ns(a["ts"]) < _ns(b["ts"]) < _ns(a["ts"]) + _ns(a["dur"])
            )
            for regions in per_step
        ]
        return {
            "compiled_regions_per_step": statistics.fmean(len(x) for x in per_step),
            "nested_regions_per_step": statistics.fmean(nested),
            "item_calls_per_step": per_step_count(lambda e: e["name"] == "aten::item"),
        }
    if scenario == "comm_no_overlap":
        is_ar = lambda e: e["name"] in ("gloo:all_reduce", "c10d::allreduce_")  # noqa: E731
        top = lambda e: e["name"] == "c10d::allreduce_"  # noqa: E731
        return {"allreduce_calls_per_step": per_step_count(top), "allreduce_share": share(is_ar)}
    if scenario == "memory_leak":
        mem = sorted(
            (_ns(e["ts"]), int(e["args"]["Total Allocated"]))
            for e in events
            if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})
        )
        ends = []
        for _, _start, end in steps:
            before = [v for t, v in mem if t < end]
            if before:
                ends.append(before[-1])
        growth = [b - a for a, b in itertools.pairwise(ends)]
        return {
            "allocated_at_step_end_bytes": ends,
            "allocated_growth_bytes_per_step": round(statistics.fmean(growth)) if growth else None,
        }
    return {}


def _stats(values: list[int]) -> dict[str, Any]:
    return {
        "mean": round(statistics.fmean(values)),
        "median": round(statistics.median(values)),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize_variant(scenario: str, folder: Path, rel: str) -> dict[str, Any]:
    traces = sorted(folder.glob("trace.rank*.json.gz"))
    meta = json.loads((folder / "meta.json").read_text())
    per_rank = []
    for path in traces:
        _, events = read_events(path)
        steps = profiler_steps(events)
        per_rank.append(
            {
                "file": path.name,
                "bytes": path.stat().st_size,
                "profiler_steps": [s[0] for s in steps],
                "step_ns": [end - start for _, start, end in steps],
                "evidence": evidence(scenario, events, steps),
            }
        )
    all_steps = [d for r in per_rank for d in r["step_ns"]]
    user = meta.get("user", {}).get("scenario", {})
    lo, hi = user.get("wall_timed_steps", [0, -1])
    wall = user.get("wall_step_ns", [])[lo : hi + 1]
    return {
        "dir": rel,
        "files": [r["file"] for r in per_rank] + ["meta.json"],
        "ranks": per_rank,
        "trace_step_ns": _stats(all_steps),
        "wall_step_ns": _stats(wall) if wall else None,
        "evidence": per_rank[0]["evidence"] if per_rank else {},
    }


def record(scenario: str, variant: str, tmp: Path) -> Path:
    args = [sys.executable, str(HERE / f"{scenario}.py"), "--out", str(tmp), "--name", variant, "--no-summary"]
    if variant == "fixed":
        args.append("--fixed")
    subprocess.run(args, check=True, cwd=HERE.parents[1])
    return tmp / variant


def record_scenario(scenario: str, runs: int, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    """Run bad and fixed ``runs`` times, interleaved; keep the run whose trace mean is the median."""
    entry: dict[str, Any] = dict(SCENARIOS[scenario])
    too_big: list[str] = []
    done: dict[str, list[tuple[Path, dict[str, Any]]]] = {"bad": [], "fixed": []}
    for i in range(runs):
        for variant in ("bad", "fixed"):
            src = record(scenario, variant, tmp / f"{scenario}-{i}")
            done[variant].append((src, summarize_variant(scenario, src, "")))
    for variant, results in done.items():
        results.sort(key=lambda r: r[1]["trace_step_ns"]["mean"])
        src, _ = results[len(results) // 2]
        dst = RECORDED / scenario / variant
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for f in [*src.glob("trace.rank*.json.gz"), src / "meta.json"]:
            shutil.copy2(f, dst / f.name)
            if f.stat().st_size > MAX_FILE_BYTES:
                too_big.append(f"{scenario}/{variant}/{f.name}: {f.stat().st_size:,} bytes")
        summary = summarize_variant(scenario, dst, f"{scenario}/{variant}")
        summary["runs"] = [
            {"trace_mean_ns": r["trace_step_ns"]["mean"], "wall_mean_ns": (r["wall_step_ns"] or {}).get("mean")}
            for _, r in results
        ]
        entry[variant] = summary
        entry["world_size"] = len(summary["ranks"])

    def median_of(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in entry[variant]["runs"])

    entry["speedup"] = {
        "trace_mean": round(median_of("bad", "trace_mean_ns") / median_of("fixed", "trace_mean_ns"), 3),
        "wall_mean": round(median_of("bad", "wall_mean_ns") / median_of("fixed", "wall_mean_ns"), 3),
        "recorded_trace_mean": round(
            entry["bad"]["trace_step_ns"]["mean"] / entry["fixed"]["trace_step_ns"]["mean"], 3
        ),
    }
    return entry, too_big


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="record just this scenario")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant; the median run is kept (default 3)")
    args = parser.parse_args(argv)
    manifest_path = RECORDED / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"scenarios": {}}
    too_big: list[str] = []
    for scenario in args.only or list(SCENARIOS):
        with tempfile.TemporaryDirectory() as tmp:
            entry, big = record_scenario(scenario, args.runs, Path(tmp))
        too_big += big
        manifest["scenarios"][scenario] = entry
        print(f"{scenario}: speedup trace {entry['speedup']['trace_mean']}x, wall {entry['speedup']['wall_mean']}x")
    import torch

    manifest.update(
        schema_version="1.0",
        generated_by="sample_traces/scenarios/record_all.py",
        recorded_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        machine={"cpu_count": __import__("os").cpu_count(), "platform": platform.platform(), "gpu": None},
        versions={"python": platform.python_version(), "torch": torch.__version__},
        units="*_ns: int nanoseconds; *_share: fraction of the summed ProfilerStep time; *_bytes: bytes",
        definitions={
            "trace_step_ns": "ProfilerStep#N durations read from the trace JSON (exact decimal µs -> ns), "
            "all recorded steps of all ranks",
            "wall_step_ns": "time.perf_counter_ns() around each unprofiled step (rank 0), measured by the script "
            "before profiling starts (meta.json user.scenario)",
            "runs": "every run of the variant (interleaved bad, fixed, bad, ...), sorted by trace mean; the median "
            "run's files are the ones kept",
            "speedup": "trace_mean / wall_mean: median over runs of bad means / median over runs of fixed means; "
            "recorded_trace_mean: the same ratio for the two kept traces",
        },
    )
    manifest["scenarios"] = dict(sorted(manifest["scenarios"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    if too_big:
        print("files over the 300 KB limit:\n  " + "\n  ".join(too_big), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
