"""COMPILE001: torch.compile graph breaks and recompilation inside the analysed steps."""

from __future__ import annotations

import numpy as np

from mlprof.analyzers.compiled import compile_facts
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option, top_ranges


class CompileIssuesOptions(RuleOptions, frozen=True):
    """COMPILE001's thresholds (``[tool.mlprof.rules.COMPILE001]``, ``mlprof explain COMPILE001``)."""

    min_breaks_per_step: float = option(
        1.0,
        "graph breaks per step",
        0.0,
        1e6,
        "graph breaks per step from which the compiled region is reported as broken",
    )
    min_share: float = common("min_share", 0.01)


class CompileIssues(Rule[CompileIssuesOptions]):
    id = "COMPILE001"
    options_class = CompileIssuesOptions
    name = "compile-breaks"
    category = "compile"
    summary = "torch.compile graph breaks (eager code between compiled regions) and recompiles inside steps"
    claims = ("launch.compile",)
    needs_device = False
    doc = RuleDoc(
        what="A compiled model that does not run as one graph: Dynamo split a function at a graph "
        "break (each step runs a compiled region, eager Python, then a resume region), or a guard "
        "failed (a new shape, dtype or Python value) and the model was compiled again inside a step.",
        why="Between graphs the step runs eagerly (every op dispatched from Python, no fusion across "
        "the break, CUDA graphs cut into pieces), and a break on a tensor value (`if x.sum() > 0`, "
        "`.item()`) also synchronises with the GPU. A recompilation costs seconds of host time with "
        "the GPU idle, every time the guard fails.",
        detection="`Torch-Compiled Region: F/C` host ranges (F: frame, C: compile id). A region "
        "nested in another region on the same thread is a resume frame: a graph break; the host ops "
        "in the outer region before it are the eager code between the graphs (`aten::item` / "
        "`is_nonzero` there: data-dependent control flow). Compilation ranges (`dynamo`, "
        "`entire_frame_compile`, `... (dynamo_timed)`) inside analysed steps are recompilations; their "
        "host time with the GPU idle is the cause `launch.compile`, which this rule claims. "
        "A recompilation seen in one step only is reported but not claimed per step (it may be "
        "one-off). `cudaGraphLaunch` calls are reported as CUDA graphs in use.",
        fix="List the breaks and their reasons, then remove them or make them explicit; mark dynamic "
        "dimensions so a new size does not recompile:\n\n"
        "    explanation = torch._dynamo.explain(model)(x)   # graph_break_count, break_reasons\n"
        "    model = torch.compile(model, fullgraph=True)      # fail loudly on a break\n"
        "    torch._dynamo.mark_dynamic(x, 0)                  # batch size varies: no recompiles\n"
        "    # TORCH_LOGS=graph_breaks,recompiles python train.py\n"
        "    # data-dependent `if t > 0:` -> torch.where(t > 0, a, b) or torch.cond",
        false_alarms="Breaks placed on purpose (logging, a custom op Dynamo cannot trace) cost little "
        "when the eager part is small: check the eager ops listed. Compilation in the first steps of a "
        "run, or once per new input size in an evaluation loop, is expected: a single recompilation is "
        "reported with low confidence and no time claimed. Separately compiled functions called "
        "one after the other are not breaks (their regions do not nest).",
    )

    def check(self, ctx: RankContext, opts: CompileIssuesOptions) -> list[Finding]:
        facts = compile_facts(ctx.trace)
        n_steps = max(ctx.n_windows, 1)
        graph_launches = int(ctx.in_windows(facts.graph_launches).sum()) if len(facts.graph_launches) else 0
        if graph_launches:
            ctx.verdicts[self.id] = f"CUDA graphs in use: {graph_launches / n_steps:.0f} cudaGraphLaunch per step"
        if len(facts.regions) == 0 and len(facts.compiling[0]) == 0:
            return []
        breaks = facts.breaks
        breaks = breaks[ctx.in_windows(breaks["end"].to_numpy(np.int64))] if len(breaks) else breaks
        c_s, c_e = facts.compiling
        in_win = ctx.in_windows(c_s) if len(c_s) else np.zeros(0, bool)
        compile_windows = sorted({int(s) for s in _window_of(ctx, c_s[in_win])})
        compile_lost = ctx.per_step("launch.compile")
        breaks_per_step = len(breaks) / n_steps
        has_breaks = breaks_per_step >= opts.min_breaks_per_step
        has_compile = ctx.step_ns > 0 and compile_lost / ctx.step_ns >= opts.min_share
        if not has_breaks and not has_compile:
            return []
        data_dependent = bool(breaks["data_dependent"].any()) if len(breaks) else False
        reads = sorted({op for ops in breaks["eager_ops"] for op in ops if op.startswith("aten::") and _reads(op)})
        eager = sorted({op for ops in breaks["eager_ops"] for op in ops if op.startswith("aten::")})
        parts = []
        if has_breaks:
            parts.append(
                f"{breaks_per_step:.0f} graph break{'s' if breaks_per_step >= 1.5 else ''} per step"
                + (f" on a tensor value ({', '.join(reads[:2])})" if data_dependent and reads else "")
            )
        if has_compile:
            parts.append(
                f"recompiled inside {len(compile_windows)} of {ctx.n_windows} steps "
                f"({ms(float((c_e[in_win] - c_s[in_win]).sum()))} ms compiling)"
            )
        recurring = len(compile_windows) >= 2
        if has_compile and recurring:
            confidence, reason = "medium", "compilation ranges inside several analysed steps: it recurs"
        elif has_compile:
            confidence, reason = (
                "low",
                "one recompilation in the analysed steps: whether it recurs (each new shape) is not in the trace, "
                "so its time is reported, not claimed per step",
            )
        else:
            confidence, reason = "medium", "graph breaks read from nested compiled regions; their cost is not estimated"
        claimed = compile_lost if has_compile and recurring else 0.0
        regions = facts.regions
        regions = regions[ctx.in_windows(regions["ts"].to_numpy(np.int64))]
        return [
            self.finding(
                ctx,
                title="torch.compile: " + "; ".join(parts),
                time_lost_ns_per_step=claimed,
                confidence=confidence,
                confidence_reason=reason,
                evidence={
                    "compiled_regions_per_step": round(len(regions) / n_steps, 1),
                    "compile_ids": sorted(set(regions["compile_id"].astype(str))),
                    "graph_breaks_per_step": round(breaks_per_step, 1),
                    "break_on_tensor_value": data_dependent,
                    "value_reading_ops_at_breaks": reads,
                    "eager_ops_at_breaks": eager[:12],
                    "steps_with_compilation": compile_windows,
                    "compilation_ms_per_step": ms(compile_lost),
                    "compile_ids_compiled_in_trace": facts.compile_ids,
                    "cuda_graph_launches_per_step": round(graph_launches / n_steps, 1),
                },
                fix="torch._dynamo.explain(model)(x); torch.compile(model, fullgraph=True); "
                "torch._dynamo.mark_dynamic(x, 0) for varying sizes",
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                time_ranges_ns=top_ranges(
                    np.concatenate([c_s[in_win], breaks["ts"].to_numpy(np.int64)]) if len(breaks) else c_s[in_win],
                    np.concatenate([c_e[in_win], breaks["end"].to_numpy(np.int64)]) if len(breaks) else c_e[in_win],
                ),
                claimed={"launch.compile": claimed},
                severity_override=None if claimed else "warning",
            )
        ]


def _reads(op: str) -> bool:
    return op in ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::tolist")


def _window_of(ctx: RankContext, ts: np.ndarray) -> np.ndarray:
    w = ctx.windows
    pos = np.searchsorted(w["ts"].to_numpy(np.int64), ts, side="right") - 1
    return w["step"].to_numpy()[np.clip(pos, 0, len(w) - 1)]
