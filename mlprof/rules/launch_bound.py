"""LAUNCH001: kernels are shorter than the host needs to launch them; the GPU waits on Python."""

from __future__ import annotations

import numpy as np

from mlprof.analyzers.compiled import compile_facts
from mlprof.analyzers.framework import is_pytorch
from mlprof.rules._kernels import kernel_facts
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option
from mlprof.trace.vocabulary import LAUNCH_RUNTIME, names_matching

SHORT_KERNEL_NS = 10_000


class LaunchBoundOptions(RuleOptions, frozen=True):
    """LAUNCH001's thresholds (``[tool.mlprof.rules.LAUNCH001]``, ``mlprof explain LAUNCH001``)."""

    min_share: float = common("min_share", 0.05)
    graph_node_us: float = option(
        2.0, "us", 0.0, 1000.0, "what-if replay: host and device cost of each captured kernel in a CUDA graph"
    )
    max_dispatch_gap_us: float = option(
        1000.0,
        "us",
        1.0,
        1e6,
        "what-if replay: longest host stretch between two launches counted as dispatch a CUDA graph "
        "removes; longer stretches are other host work and are kept",
    )


class LaunchBound(Rule[LaunchBoundOptions]):
    id = "LAUNCH001"
    options_class = LaunchBoundOptions
    name = "launch-bound"
    category = "unfused_kernels"
    summary = "GPU idle while the host dispatches ops: kernels shorter than their launch gaps"
    claims = ("launch.dispatch",)
    doc = RuleDoc(
        what="The device runs out of work while the host is still inside PyTorch ops or kernel "
        "launches: the step is bound by Python and dispatch overhead, not by the GPU.",
        why="Each eager op costs the host several microseconds (Python, dispatcher, "
        "`cudaLaunchKernel`). When kernels finish faster than that, the GPU drains its queue and "
        "waits for every launch. Small batches and many small ops make it worse.",
        detection="Attribution cause `launch.dispatch`: the device is idle while the host is "
        "inside a launch call or a `cpu_op` (outside the optimizer, DataLoader and syncs). The "
        "evidence compares the median kernel time with the host time per launch. Confidence is "
        "`medium` at most: the replayed CUDA-graph collapse has not been checked against a recorded "
        "eager/captured pair yet.",
        fix="Remove the per-op host cost: compile the model, capture the step in a CUDA graph, or "
        "give each op more work:\n\n"
        "    model = torch.compile(model, mode='reduce-overhead')   # CUDA graphs\n"
        "    # or: g = torch.cuda.CUDAGraph(); with torch.cuda.graph(g): out = model(static_x)\n"
        "    # or a larger batch (with the learning rate scaled accordingly)",
        false_alarms="Where the trace shows `cudaGraphLaunch`, CUDA graphs are already used: the "
        "finding then names the host work left between replays and does not advise CUDA graphs. "
        "A CPU that is slowed by other processes (data workers on the same cores, "
        "profiler overhead with `with_stack=True`) inflates dispatch time. CPU-side work that is "
        "not GPU dispatch but lives inside an op (custom CPU ops) is also counted.",
    )

    def check(self, ctx: RankContext, opts: LaunchBoundOptions) -> list[Finding]:
        lost = ctx.per_step("launch.dispatch")
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        k = kernel_facts(ctx).kernels
        n_steps = max(ctx.n_windows, 1)
        runtime = ctx.trace.runtime
        launches = runtime[names_matching(runtime["name"], LAUNCH_RUNTIME)]
        launches = launches[ctx.in_windows(launches["ts"].to_numpy(np.int64))]
        median_kernel = float(k["dur"].median()) if len(k) else 0.0
        median_launch = float(launches["dur"].median()) if len(launches) else 0.0
        short = float((k["dur"] < SHORT_KERNEL_NS).mean()) if len(k) else 0.0
        busy_causes = [c for c in ctx.causes.columns if c.startswith(("compute.", "comm.", "copy."))]
        busy = ctx.per_step(*busy_causes) / ctx.step_ns
        graphs = compile_facts(ctx.trace).graph_launches
        graph_launches = int(ctx.in_windows(graphs).sum()) if len(graphs) else 0
        title = (
            f"Launch-bound: GPU idle {ms(lost)} ms per step while the host dispatches "
            f"{len(k) / n_steps:.0f} kernels (median kernel {median_kernel / 1000:.1f} us)"
        )
        fix = "torch.compile(model, mode='reduce-overhead') (CUDA graphs), fewer/larger ops, larger batch"
        if not is_pytorch(ctx.trace):
            fix = (
                "capture the repeated launch sequence in a CUDA graph (cudaStreamBeginCapture / cudaGraphLaunch), "
                "fuse small kernels, give each kernel more work"
            )
        if graph_launches:
            # CUDA graphs are already replayed: the idle time is the host work left outside them.
            title += f"; CUDA graphs already in use ({graph_launches / n_steps:.0f} replays per step)"
            fix = (
                "capture more of the step in the existing CUDA graphs (fewer graph breaks, static shapes), "
                "move Python work between replays out of the step, fewer/larger ops, larger batch"
            )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=lost,
                # Medium at most: the CUDA-graph collapse the replay applies has not been checked against a
                # measured before/after pair (no recording of an eager step and its captured twin yet).
                confidence="medium",
                confidence_reason=(
                    "kernels are about as short as their launch cost"
                    if median_kernel < 2 * max(median_launch, 1.0)
                    else "kernels are longer than launches; part of the dispatch time may be other host work"
                )
                + "; the CUDA-graph fix is a model (dispatch collapsed to graph_node_us per kernel) that no "
                "recorded before/after pair has checked yet",
                evidence={
                    "kernels_per_step": round(len(k) / n_steps, 1),
                    "median_kernel_us": round(median_kernel / 1000, 2),
                    "median_launch_call_us": round(median_launch / 1000, 2),
                    "kernels_under_10us_share": round(short, 3),
                    "gpu_busy_share": round(busy, 3),
                    "gpu_idle_dispatching_ms_per_step": ms(lost),
                    "cuda_graph_launches_per_step": round(graph_launches / n_steps, 1),
                },
                fix=fix,
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                claimed={"launch.dispatch": lost},
            )
        ]
