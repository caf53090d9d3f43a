"""COMM001: communication kernels run with nothing to hide under (exposed NCCL/RCCL time)."""

from __future__ import annotations

import numpy as np

from mlprof.analyzers.causes import CAUSES
from mlprof.rules._kernels import totals_by_name
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, top_ranges


class CommExposedOptions(RuleOptions, frozen=True):
    """COMM001's thresholds (``[tool.mlprof.rules.COMM001]``, ``mlprof explain COMM001``)."""

    min_share: float = common("min_share", 0.03)


class CommExposed(Rule[CommExposedOptions]):
    id = "COMM001"
    options_class = CommExposedOptions
    name = "comm-not-overlapped"
    category = "comm_not_overlapped"
    summary = "NCCL/RCCL kernels not hidden under compute on other streams"
    claims = ("comm.transfer",)
    needs_other_ranks = True
    doc = RuleDoc(
        what="Collective or point-to-point communication kernels run while no compute kernel runs "
        "on the device: the step waits for the network.",
        why="Data-parallel training must exchange gradients every step. DDP and FSDP hide that "
        "behind the backward pass by launching each bucket's all-reduce as soon as its gradients "
        "are ready, on a separate stream. When that overlap fails (one giant bucket, "
        "`find_unused_parameters=True`, a sync between backward and the all-reduce, all-to-all "
        "whose result is needed at once) the communication adds straight to the step.",
        detection="Attribution category `comm_exposed`: instants where a communication kernel "
        "(`nccl*`, `rccl*`) runs and no compute kernel does. The part spent waiting for a late "
        "rank is split off to COMM002 when several ranks are analysed together; the rest is "
        "transfer. Overlap can hide at most the step's compute time, so the time lost is the "
        "exposed transfer capped by the compute per step. On a job the replay of the fix runs all "
        "ranks together: an overlapped collective still ends no earlier than its last rank's arrival.",
        fix="Let communication start early and run beside compute:\n\n"
        "    model = DDP(model, bucket_cap_mb=25, gradient_as_bucket_view=True,\n"
        "                find_unused_parameters=False, static_graph=True)\n"
        "    # FSDP: FSDP(model, backward_prefetch=BackwardPrefetch.BACKWARD_PRE,\n"
        "    #             forward_prefetch=True, limit_all_gathers=True)\n\n"
        "For embedding all-to-all (TorchRec), pipeline the input distribution "
        "(`TrainPipelineSparseDist`) so the next batch's all-to-all overlaps this batch's compute.",
        false_alarms="With one step in the trace, warm-up effects (first all-reduce builds NCCL "
        "channels) inflate the time. When compute is tiny, no overlap can hide the communication: "
        "the fix is fewer bytes (compression, larger per-GPU batch, gradient accumulation).",
    )

    def check(self, ctx: RankContext, opts: CommExposedOptions) -> list[Finding]:
        exposed = ctx.per_step("comm.transfer")
        compute = ctx.per_step(*CAUSES["compute"])
        lost = min(exposed, compute)
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        gpu = ctx.tables.gpu
        comm = gpu[(gpu["kind"] == "kernel") & gpu["is_comm"].astype(bool)]
        comm = comm[ctx.in_windows(comm["ts"].to_numpy(np.int64))]
        n_steps = max(ctx.n_windows, 1)
        names, count, total, order = totals_by_name(comm["name"].astype(str).to_numpy(), comm["dur"].to_numpy(np.int64))
        colls = ctx.tables.collectives
        coll_summary = []
        if len(colls):
            c = colls[ctx.in_windows(colls["ts"].to_numpy(np.int64))]
            if len(c):
                g = c.groupby(c["collective"].astype(str)).agg(n=("ts", "size"), elems=("in_nelems", "sum"))
                coll_summary = [
                    {"collective": name, "per_step": round(r.n / n_steps, 1), "in_elements": int(r.elems)}
                    for name, r in g.iterrows()
                ]
        comm_total = float(comm["dur"].sum()) / n_steps
        title = (
            f"Communication exposed {ms(exposed)} ms per step "
            f"({exposed / max(comm_total, 1):.0%} of {ms(comm_total)} ms of NCCL kernels not overlapped)"
        )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=lost,
                confidence="high" if exposed <= compute else "medium",
                confidence_reason="exposed time is measured; it can be hidden only under compute"
                + ("" if exposed <= compute else f" ({ms(compute)} ms per step here)"),
                evidence={
                    "comm_kernel_ms_per_step": ms(comm_total),
                    "exposed_ms_per_step": ms(exposed),
                    "compute_ms_per_step": ms(compute),
                    "kernels": [
                        {
                            "kernel": str(names[i])[:120],
                            "per_step": round(count[i] / n_steps, 1),
                            "ms_per_step": ms(total[i] / n_steps),
                        }
                        for i in order[:5]
                    ],
                    "collectives": coll_summary,
                },
                fix="DDP(bucket_cap_mb=25, gradient_as_bucket_view=True, find_unused_parameters=False); FSDP prefetch",
                steps=ctx.steps_with("comm.transfer", min_share=opts.min_share),
                time_ranges_ns=top_ranges(comm["ts"].to_numpy(np.int64), comm["end"].to_numpy(np.int64)),
                claimed={"comm.transfer": lost},
            )
        ]
