"""Two stored runs compared: where the step time changed, what changed, and did the fix deliver.

Computed only from what the store holds (no trace is re-read):

* **step time**: mean step of the job's view (rank -1 rows), before (A) and after (B);
  *achieved speedup* = A / B.
* **by category**: mean ms per step of each attribution category in A and B; the
  deltas add up to the step-time change exactly, because each run's categories add up
  to its step time.
* **by kernel / op**: ms per step of each kernel name and each host op name inside
  the analysed steps (the ``ops`` table), largest absolute change first. Host op time
  is inclusive (children count), so op rows overlap and do not add up.
* **findings**: rules that fired in A and not in B are *resolved*, in B only *new*,
  in both *persisting* (with both speedups).
* **predicted speedup** of what was acted on: a finding of A was *acted on* when B
  no longer has it or loses less time to it. Rules own disjoint causes, so the plan
  savings of the acted-on findings add: ``A step / (A step - sum of their plan
  savings)``, shown next to the achieved speedup; per rule, the saving A predicted
  next to the time lost that actually went away (A's time lost - B's). A's whole
  plan's speedup is shown too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlprof.analyzers.attribution import CATEGORIES


@dataclass
class RunDiff:
    step_ms_a: float
    step_ms_b: float
    achieved_speedup: float
    categories: pd.DataFrame
    """category, a_ms, b_ms, delta_ms (per step)."""
    ops: pd.DataFrame
    """kind, name, a_ms, b_ms, delta_ms (per step), largest change first."""
    resolved: list[dict[str, Any]]
    new: list[dict[str, Any]]
    persisting: list[dict[str, Any]]
    predicted_speedup: float
    """What A's acted-on findings predicted together (1.0 when none was acted on)."""
    per_rule: pd.DataFrame
    """rule, status, a_lost_ms, b_lost_ms, predicted_saving_ms, removed_ms (per step), one row per rule of A or B."""
    predicted_plan_speedup: float


def _job_steps(run: dict[str, Any]) -> pd.DataFrame:
    steps: pd.DataFrame = run["steps"]
    return steps[steps["rank"] == -1]


def _category_means(run: dict[str, Any]) -> pd.Series:
    steps = _job_steps(run)
    if len(steps) == 0:
        return pd.Series(0.0, index=list(CATEGORIES))
    return pd.Series({c: float(steps[f"{c}_ns"].mean()) / 1e6 for c in CATEGORIES})


def _step_ms(run: dict[str, Any]) -> float:
    steps = _job_steps(run)
    if len(steps):
        return float(steps["dur_ns"].mean()) / 1e6
    value = run.get("step_ms_mean")
    return float(value) if value is not None else float("nan")


def _trace_findings(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["rule"]: f for f in run["findings"] if f["source"] == "trace"}


def diff_runs(a: dict[str, Any], b: dict[str, Any], top_ops: int = 15) -> RunDiff:
    """Compare run ``a`` (before) with run ``b`` (after); both as returned by ``read_run``."""
    step_a, step_b = _step_ms(a), _step_ms(b)
    cat_a, cat_b = _category_means(a), _category_means(b)
    categories = pd.DataFrame({"category": list(CATEGORIES), "a_ms": cat_a.to_numpy(), "b_ms": cat_b.to_numpy()})
    categories["delta_ms"] = categories["b_ms"] - categories["a_ms"]

    def per_step(run: dict[str, Any]) -> pd.DataFrame:
        ops: pd.DataFrame = run["ops"]
        return ops.assign(ms=ops["ns_per_step"] / 1e6)[["kind", "name", "ms"]]

    ops = (
        per_step(a)
        .merge(per_step(b), on=["kind", "name"], how="outer", suffixes=("_a", "_b"))
        .fillna({"ms_a": 0.0, "ms_b": 0.0})
    )
    ops = ops.rename(columns={"ms_a": "a_ms", "ms_b": "b_ms"})
    ops = ops[ops["name"] != "(other)"]
    ops["delta_ms"] = ops["b_ms"] - ops["a_ms"]
    ops = ops.reindex(ops["delta_ms"].abs().sort_values(ascending=False).index).head(top_ops).reset_index(drop=True)

    fa, fb = _trace_findings(a), _trace_findings(b)
    resolved = [fa[r] for r in fa if r not in fb]
    new = [fb[r] for r in fb if r not in fa]
    persisting = [{"rule": r, "a": fa[r], "b": fb[r]} for r in fa if r in fb]
    rows = []
    for rule in [*fa, *(r for r in fb if r not in fa)]:
        lost_a = float(fa[rule]["time_lost_ms_per_step"]) if rule in fa else 0.0
        lost_b = float(fb[rule]["time_lost_ms_per_step"]) if rule in fb else 0.0
        status = "persisting" if rule in fa and rule in fb else "resolved" if rule in fa else "new"
        saving = fa[rule]["saves_ms_per_step"] if rule in fa else None
        rows.append(
            {
                "rule": rule,
                "status": status,
                "a_lost_ms": lost_a,
                "b_lost_ms": lost_b,
                "predicted_saving_ms": None if saving is None else float(saving),
                "removed_ms": lost_a - lost_b,
                "acted_on": rule in fa and lost_b < lost_a,
            }
        )
    per_rule = pd.DataFrame(
        rows, columns=["rule", "status", "a_lost_ms", "b_lost_ms", "predicted_saving_ms", "removed_ms", "acted_on"]
    )
    acted = per_rule[per_rule["acted_on"].astype(bool).to_numpy()]
    saved = float(acted["predicted_saving_ms"].fillna(0.0).sum())
    a_plan_step = float(a.get("report", {}).get("checks", {}).get("step_ms") or step_a)
    predicted = a_plan_step / (a_plan_step - saved) if saved and a_plan_step > saved else 1.0
    return RunDiff(
        step_ms_a=step_a,
        step_ms_b=step_b,
        achieved_speedup=step_a / step_b if step_b > 0 else float("nan"),
        categories=categories,
        ops=ops,
        resolved=resolved,
        new=new,
        persisting=persisting,
        predicted_speedup=predicted,
        per_rule=per_rule,
        predicted_plan_speedup=float(a.get("plan_speedup") or 1.0),
    )
