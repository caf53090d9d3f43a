"""DATA001: the GPU waits while the host fetches the next batch."""

from __future__ import annotations

import numpy as np

from mlprof.rules.base import Finding, RankContext, Rule, RuleDoc, RuleOptions, common, ms, option, top_ranges
from mlprof.trace.vocabulary import DATALOADER, name_mask


class DataLoaderWaitOptions(RuleOptions, frozen=True):
    """DATA001's thresholds (``[tool.mlprof.rules.DATA001]``, ``mlprof explain DATA001``)."""

    min_share: float = common("min_share", 0.03)
    ready_batch_ms: float = option(
        0.3, "ms", 0.0, 100000, "what-if replay: what taking an already prepared batch costs the host"
    )


class DataLoaderWait(Rule[DataLoaderWaitOptions]):
    id = "DATA001"
    options_class = DataLoaderWaitOptions
    name = "dataloader-wait"
    category = "data_starvation"
    summary = "GPU idle while the host is inside DataLoader __next__"
    claims = ("data.loader",)
    needs_device = False
    doc = RuleDoc(
        what="The device has nothing to run while the training loop is inside the DataLoader's "
        "`__next__`: input preparation is on the step's critical path.",
        why="Every nanosecond the loop spends waiting for a batch is a nanosecond the GPU is idle; "
        "with `num_workers=0` the batch is decoded, augmented and collated in the training process "
        "itself, one sample at a time, between steps.",
        detection="Step time attribution (`idle_data`): instants where no kernel, copy or "
        "communication runs on the device and the host is inside a `DataLoader ... __next__` or "
        "`enumerate(DataLoader)` range. The time lost per step is that attributed time; "
        "`_SingleProcessDataLoaderIter` in the range name proves `num_workers=0`. On a CPU-only "
        "trace the same time is the host's wait for data.",
        fix="Load batches in worker processes, keep them alive across epochs, pin the memory and "
        "prefetch so the next batch is ready when the step ends:\n\n"
        "    loader = DataLoader(ds, batch_size=64, num_workers=8, pin_memory=True,\n"
        "                        persistent_workers=True, prefetch_factor=4)\n\n"
        "Size `num_workers` to the CPU cores per GPU (2-4 per GPU is typical). If workers do not "
        "help, the per-sample work itself is too slow: move decoding/augmentation to the GPU "
        "(e.g. DALI), pre-process offline, or use a faster format (WebDataset, FFCV).",
        false_alarms="The first step after the profiler starts or an epoch boundary may wait for "
        "workers to start (use `--steps` to skip it). A user `record_function` named like a "
        "DataLoader that does other work would be counted. Worker processes need CPU cores: "
        "on a machine with few cores the gain is smaller than the time shown.",
    )

    def check(self, ctx: RankContext, opts: DataLoaderWaitOptions) -> list[Finding]:
        lost = ctx.per_step("data.loader")
        if ctx.step_ns <= 0 or lost / ctx.step_ns < opts.min_share:
            return []
        host = ctx.trace.host
        keep = name_mask(host["name"], DATALOADER)
        keep[keep] = ctx.in_windows(host["ts"].to_numpy(np.int64)[keep])
        loader = host[keep]
        names = loader["name"].astype(str)
        distinct = sorted(set(names.tolist()))  # a few DataLoader range names
        single = any("_SingleProcessDataLoaderIter" in n for n in distinct)
        multi = any("_MultiProcessingDataLoaderIter" in n for n in distinct)
        calls = len(loader)
        mean_call = float(loader["dur"].mean()) if calls else 0.0
        share = lost / ctx.step_ns
        who = "GPU waits" if ctx.has_device else "training loop waits"
        if single:
            title = f"DataLoader runs in the training process (num_workers=0): {who} {ms(lost)} ms per step"
        else:
            title = f"{who.capitalize()} {ms(lost)} ms per step for the next batch ({share:.0%} of the step)"
        evidence = {
            "idle_waiting_for_data_ms_per_step": ms(lost),
            "share_of_step": round(share, 4),
            "dataloader_calls": calls,
            "dataloader_call_mean_ms": ms(mean_call),
            "iterator": "single-process (num_workers=0)" if single else "multi-process" if multi else "unknown",
            "dataloader_ranges": distinct[:3],
        }
        confidence = "high" if ctx.has_device else "medium"
        reason = (
            "the device is idle exactly while the host is inside the DataLoader"
            if ctx.has_device
            else "CPU-only trace: the host waits for data, but worker processes compete for the same cores"
        )
        fix = (
            "DataLoader(..., num_workers=8, pin_memory=True, persistent_workers=True, prefetch_factor=4)"
            if single or not multi
            else "more workers or a larger prefetch_factor; if that does not help, make __getitem__ cheaper"
        )
        return [
            self.finding(
                ctx,
                title=title,
                time_lost_ns_per_step=lost,
                confidence=confidence,
                confidence_reason=reason,
                evidence=evidence,
                fix=fix,
                steps=ctx.steps_with("data.loader", min_share=opts.min_share),
                time_ranges_ns=top_ranges(loader["ts"].to_numpy(np.int64), loader["end"].to_numpy(np.int64)),
                claimed={"data.loader": lost},
            )
        ]
