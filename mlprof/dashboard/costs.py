"""The Run page's headline figures: MFU, GPU-hours, and what the ranked fixes would save.

Definitions (also in docs/dashboard.md):

* **MFU** = model FLOPs per step / (mean step s x GPUs x dense FP16/BF16 tensor peak of
  the GPU, from :mod:`mlprof.analyzers.gpu_specs`); needs ``--flops-per-step``.
* **GPU-hours** as stored at ingest (``--gpu-hours``, else recorded wall time x GPUs).
* **saved** = GPU-hours x (1 - 1 / the plan's cumulative speedup): the share of the
  time the plan removes.
* **per 1,000 steps** = mean step x 1,000 x GPUs / 3600, and what the plan saves of it,
  in GPU-hours and at ``price`` dollars per GPU-hour.
"""

from __future__ import annotations

import os
from typing import Any

from mlprof.analyzers.gpu_specs import lookup

DEFAULT_PRICE = 2.0
"""$ per GPU-hour when neither the sidebar nor ``MLPROF_GPU_PRICE`` says otherwise."""


def default_price() -> float:
    try:
        return max(float(os.environ.get("MLPROF_GPU_PRICE", DEFAULT_PRICE)), 0.0)
    except ValueError:
        return DEFAULT_PRICE


def headline(run: dict[str, Any], price: float) -> dict[str, float | None]:
    """The Run page's headline numbers (see docs/dashboard.md for each definition)."""
    step_ms = run["step_ms_mean"]
    plan = float(run["plan_speedup"] or 1.0)
    hours = run["gpu_hours"]
    saved = hours * (1.0 - 1.0 / plan) if hours is not None else None
    gpus = int(run["gpu_count"] or 0)
    # 1,000 steps of step_ms milliseconds last step_ms seconds
    per_k = step_ms * gpus / 3600.0 if step_ms is not None else None
    per_k_saved = per_k * (1.0 - 1.0 / plan) if per_k is not None else None
    mfu = None
    flops = run.get("model_flops_per_step")
    spec = lookup(str(run["gpu"]).split(",")[0])
    if flops and step_ms and gpus and spec is not None and spec.tensor_tflops:
        mfu = 100.0 * float(flops) / (step_ms / 1000.0 * gpus * spec.tensor_tflops * 1e12)
    return {
        "step_ms": step_ms,
        "gpu_busy_pct": run["gpu_busy_pct"],
        "mfu_pct": mfu,
        "gpu_hours": hours,
        "gpu_hours_saved": saved,
        "money_saved": saved * price if saved is not None else None,
        "per_1k_steps_gpu_hours": per_k,
        "per_1k_steps_saved": per_k_saved,
        "per_1k_steps_money_saved": per_k_saved * price if per_k_saved is not None else None,
        "plan_speedup": plan,
    }
