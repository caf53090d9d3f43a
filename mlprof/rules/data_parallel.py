"""DP001: nn.DataParallel (one process driving several GPUs) instead of DistributedDataParallel."""

from __future__ import annotations

import numpy as np

from mlprof.analyzers.data_parallel import DP_FORWARD, DP_PHASES
from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, ms, top_ranges
from mlprof.trace.vocabulary import name_mask


class DataParallelUsedOptions(RuleOptions, frozen=True):
    """DP001 has no thresholds."""


class DataParallelUsed(Rule[DataParallelUsedOptions]):
    id = "DP001"
    options_class = DataParallelUsedOptions
    name = "data-parallel"
    category = "data_parallel"
    summary = "nn.DataParallel (replicate/scatter/gather every step, one process for all GPUs) instead of DDP"
    claims = ()
    needs_device = False
    doc = RuleDoc(
        what="The model is wrapped in `torch.nn.DataParallel`: one Python process drives every GPU, "
        "and each forward pass broadcasts the parameters to all devices, splits the batch, runs the "
        "replicas in threads and gathers the outputs onto the first GPU.",
        why="Every step pays a parameter broadcast (`replicate`) and an output gather that "
        "DistributedDataParallel never does; the replicas' Python threads contend for one GIL, so "
        "the host cannot keep several GPUs fed; the first GPU holds the gathered outputs, the loss "
        "and the gradient reduction, so it runs out of memory first and the others wait for it. "
        "PyTorch's own documentation recommends DDP even on a single machine.",
        detection="The `DataParallel.forward` range that `nn.DataParallel` records around every "
        "call, or (with `with_stack=True`) Python frames in `torch/nn/parallel/replicate.py`, "
        "`scatter_gather.py`, `parallel_apply.py`; the evidence counts the GPUs the one process "
        "launched kernels on and the time in replicate/scatter/parallel_apply/gather. No time is "
        "claimed: the gain of DDP depends on the GPU count and is not measurable from this trace.",
        fix="One process per GPU with DistributedDataParallel, started by torchrun:\n\n"
        "    # torchrun --nproc_per_node=NUM_GPUS train.py\n"
        "    torch.distributed.init_process_group('nccl')\n"
        "    local_rank = int(os.environ['LOCAL_RANK']); torch.cuda.set_device(local_rank)\n"
        "    model = DDP(model.to(local_rank), device_ids=[local_rank])\n"
        "    loader = DataLoader(ds, sampler=DistributedSampler(ds), batch_size=per_gpu_batch)",
        false_alarms="`DataParallel` on a machine with one GPU (or none) does no replication and "
        "costs almost nothing; the finding then says it drives one device and is informational. "
        "Notebooks where multi-process launch is impractical may keep it on purpose.",
    )

    def check(self, ctx: RankContext, opts: DataParallelUsedOptions) -> list[Finding]:
        host = ctx.trace.host
        fwd = name_mask(host["name"], DP_FORWARD)
        phases = name_mask(host["name"], DP_PHASES)
        if not fwd.any() and not phases.any():
            return []
        ts = host["ts"].to_numpy(np.int64)
        end = host["end"].to_numpy(np.int64)
        fwd &= ctx.in_windows(ts)
        phases &= ctx.in_windows(ts)
        if not fwd.any() and not phases.any():
            return []
        n_steps = max(ctx.n_windows, 1)
        gpu = ctx.trace.gpu
        kernels = gpu[(gpu["kind"] == "kernel").to_numpy()] if len(gpu) else gpu
        devices = sorted({int(d) for d in kernels["device"].unique() if int(d) >= 0}) if len(kernels) else []
        names = host["name"].astype(str).to_numpy()
        phase_ms: dict[str, float] = {}
        for i in np.flatnonzero(phases):
            m = DP_PHASES.search(names[i])
            if m:
                phase_ms[m.group(2)] = phase_ms.get(m.group(2), 0.0) + float(end[i] - ts[i])
        fwd_ms = float((end[fwd] - ts[fwd]).sum()) / n_steps
        threads = int(host["tid"][phases | fwd].nunique()) if phases.any() else None
        several = len(devices) >= 2
        title = (
            f"nn.DataParallel drives {len(devices)} GPUs from one process "
            f"({fwd.sum() / n_steps:.0f} DataParallel.forward per step, {ms(fwd_ms)} ms): use DistributedDataParallel"
            if several
            else f"nn.DataParallel wraps the model ({fwd.sum() / n_steps:.0f} DataParallel.forward per step) "
            f"on {len(devices) or 'no'} GPU{'s' if len(devices) != 1 else ''}: no replication, but DDP is the "
            "way to use several"
        )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=0.0,
                confidence="high" if fwd.any() else "medium",
                confidence_reason="DataParallel's own DataParallel.forward range is in the trace"
                if fwd.any()
                else "read from Python frames of torch/nn/parallel",
                evidence={
                    "dp_forward_per_step": round(float(fwd.sum()) / n_steps, 1),
                    "dp_forward_ms_per_step": ms(fwd_ms),
                    "gpus_driven_by_this_process": devices,
                    "ms_per_step_by_phase": {k: ms(v / n_steps) for k, v in sorted(phase_ms.items())},
                    "host_threads_in_dp": threads,
                },
                fix="DistributedDataParallel, one process per GPU (torchrun --nproc_per_node=N)",
                steps=[s for s in ctx.windows["step"].tolist() if s >= 0],
                time_ranges_ns=top_ranges(ts[fwd], end[fwd]),
                severity_override="warning" if several else "info",
            )
        ]
