"""HOST001: the GPU is idle while the host runs code the profiler did not see as an op."""

from __future__ import annotations

from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option


class HostGapsOptions(RuleOptions, frozen=True):
    """HOST001's thresholds (``[tool.mlprof.rules.HOST001]``, ``mlprof explain HOST001``)."""

    min_share: float = common("min_share", 0.05)
    removable_share: float = option(
        0.5,
        "share (0-1)",
        0.0,
        1.0,
        "the share of unrecorded host time a fix is assumed to remove (the trace cannot say what ran): "
        "the finding's upper bound, in the attribution estimate and in the replay",
    )


class HostGaps(Rule[HostGapsOptions]):
    id = "HOST001"
    options_class = HostGapsOptions
    name = "host-side-gaps"
    category = "host_overhead"
    summary = "GPU idle while the host is outside any recorded op (Python, logging, I/O)"
    claims = ("other.host",)
    doc = RuleDoc(
        what="Inside steps, the device has no work and the host is not in any PyTorch op, "
        "runtime call or DataLoader: it runs plain Python (metrics, logging, checkpoint "
        "bookkeeping, Python-side data handling) or sleeps.",
        why="All of that time is added to the step: the GPU waits for the host to come back and "
        "launch the next kernel.",
        detection="Attribution category `idle_other` (cause `other.host`) within analysed steps. "
        "The trace cannot say what the host did; with `with_stack=True` the Python frames in "
        "those gaps are recorded. The speedup is an upper bound, not a prediction: it counts "
        "`removable_share` (default 0.5) of that idle time as removable, so it is at most "
        "1 / (1 - removable_share) (2x by default), and the what-if replay with that share of the "
        "unrecorded host time removed caps it further. It stays low confidence, is written `≤N.NNx`, "
        "and is left out of the plan.",
        fix="Profile the host side to find the code, then move logging and metric computation off "
        "the hot path (every N steps, or in a background thread):\n\n"
        "    with mlprof.profile(with_stack=True):   # Python frames in the gaps\n"
        "        train()\n"
        "    # or: py-spy record -o host.svg --pid <training pid>\n\n"
        "Overlap host work with GPU work by launching the next step's kernels first.",
        false_alarms="Profiler overhead itself (especially with `with_stack=True` or "
        "`record_shapes=True`) and step-boundary bookkeeping of `prof.step()` show up here. "
        "Garbage-collector pauses also land here.",
    )

    def check(self, ctx: RankContext, opts: HostGapsOptions) -> list[Finding]:
        lost = ctx.per_step("other.host")
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        record_next = [] if ctx.has_stacks else ["with_stack=True to see which Python code runs in the gaps"]
        # Not a fix but a bound: only the share of the unrecorded host time a fix could remove counts, never
        # all of it (removing all host time is not a credible step: 131x on HTA's trace_compare).
        share = opts.removable_share
        bound = lost * share
        return [
            self.finding(
                ctx,
                title=f"GPU idle {ms(lost)} ms per step while the host is outside any recorded op "
                f"(bound: {ms(bound)} ms if {share:.0%} of it can go)",
                time_lost_ns_per_step=bound,
                confidence="low",
                confidence_reason="the trace shows the idle time but not what the host was doing: the speedup is "
                f"an upper bound that assumes removable_share={share:g} of it can be removed",
                evidence={
                    "gpu_idle_outside_ops_ms_per_step": ms(lost),
                    "share_of_step": round(lost / ctx.step_ns, 4),
                    "removable_share": share,
                },
                fix="find the host code in the gaps (with_stack=True / py-spy); log every N steps",
                steps=ctx.steps_with("other.host", min_share=opts.min_share),
                claimed={"other.host": lost},
                record_next=record_next,
            )
        ]
