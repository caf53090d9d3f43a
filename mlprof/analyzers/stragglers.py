"""Cross-rank measurements for a job: who everyone waits for, step-time skew, imbalance vs bandwidth.

Built from two small inputs, so it scales to thousands of ranks: the matched
collectives (:class:`mlprof.analyzers.rank_skew.RankSkew`) and one row of per-step
figures per rank (:func:`rank_measures`). All per-step figures are ms per analysed
step; figures from the matched collectives (``caused_wait_ms``, ``critical_ms``,
``late_ms``) are totals over the trace's matched collectives divided by the number
of analysed steps.

* ``wait_ms`` communication time exposed on the GPU (nothing else running) that this
  rank spent waiting for a later rank: **imbalance**;
* ``transfer_ms`` the rest of its exposed communication: moving bytes,
  **bandwidth** (or latency) bound;
* ``caused_wait_ms`` the wait of all other ranks in the collectives where this rank
  arrived last;
* ``critical_ms`` in those collectives, how much later it arrived than the
  second-latest rank: the whole job runs at its slowest rank, so this is what every
  rank's step would gain if it had arrived with the others;
* ``late_ms`` its aligned arrival minus the collective's median arrival, summed;
* ``step_skew`` the slowest rank's mean step over the median rank's.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pandas as pd

from mlprof.analyzers.rank_skew import RankSkew

NS_PER_MS = 1_000_000
MEASURE_COLUMNS = ("rank", "steps", "step_ns", "compute_ns", "wait_ns", "transfer_ns")
"""Per rank, mean ns per analysed step (``steps`` = number of analysed steps)."""


class CrossRank(msgspec.Struct):
    """The job's cross-rank view: one row per rank, summaries by rank group, job totals."""

    per_rank: pd.DataFrame
    """rank, group, step_ms, compute_ms, wait_ms, transfer_ms, imbalance_share, arrived_last,
    caused_wait_ms, critical_ms, late_ms, clock_offset_us (see the module docstring)."""
    groups: pd.DataFrame
    """group, ranks ("0-7"), n, step_ms_median, step_ms_max, wait_ms_mean, critical_ms_sum, worst_rank."""
    group_size: int
    summary: dict[str, Any] = msgspec.field(default_factory=dict)
    """ranks, matched, unmatched, match_key, step_ms_median/max, step_skew, slowest_rank,
    imbalance_ms_per_step and bandwidth_ms_per_step (means over ranks), imbalance_share, stragglers."""


def cross_rank_report(measures: pd.DataFrame, skew: RankSkew | None, group_size: int) -> CrossRank:
    """Join the per-rank measures with the matched collectives and summarise by groups of ``group_size`` ranks."""
    m = measures.sort_values("rank").reset_index(drop=True)
    steps = np.maximum(m["steps"].to_numpy(np.float64), 1.0)
    out = pd.DataFrame({"rank": m["rank"].to_numpy(np.int64)})
    out["group"] = out["rank"] // max(group_size, 1)
    for col in ("step", "compute", "wait", "transfer"):
        out[f"{col}_ms"] = np.round(m[f"{col}_ns"].to_numpy(np.float64) / NS_PER_MS, 4)
    comm = m["wait_ns"].to_numpy(np.float64) + m["transfer_ns"].to_numpy(np.float64)
    out["imbalance_share"] = np.round(np.divide(m["wait_ns"], comm, out=np.zeros(len(m)), where=comm > 0), 4)
    if skew is not None:
        sk = skew.per_rank.set_index("rank").reindex(out["rank"])
        out["arrived_last"] = sk["last_arrivals"].fillna(0).astype(np.int64).to_numpy()
        for col in ("caused_wait", "critical", "late"):
            out[f"{col}_ms"] = np.round(sk[f"{col}_ns"].fillna(0).to_numpy(np.float64) / steps / NS_PER_MS, 4)
        out["clock_offset_us"] = np.round(sk["clock_offset_ns"].fillna(0).to_numpy(np.float64) / 1000, 3)
    else:
        out["arrived_last"] = 0
        for col in ("caused_wait_ms", "critical_ms", "late_ms", "clock_offset_us"):
            out[col] = 0.0
    groups = _groups(out)
    median_step = float(out["step_ms"].median()) if len(out) else 0.0
    slowest = out.loc[out["step_ms"].idxmax()] if len(out) else None
    stragglers = out[out["critical_ms"] > 0].sort_values(["critical_ms", "rank"], ascending=[False, True])
    wait_mean = float(out["wait_ms"].mean()) if len(out) else 0.0
    transfer_mean = float(out["transfer_ms"].mean()) if len(out) else 0.0
    summary: dict[str, Any] = {
        "ranks": len(out),
        "matched_collectives": skew.matched if skew else 0,
        "unmatched_kernels": skew.unmatched if skew else 0,
        "match_key": skew.match_key if skew else None,
        "step_ms_median": round(median_step, 4),
        "step_ms_max": round(float(out["step_ms"].max()), 4) if len(out) else 0.0,
        "step_skew": round(float(out["step_ms"].max()) / median_step, 4) if median_step > 0 else None,
        "slowest_rank": int(slowest["rank"]) if slowest is not None else None,
        "imbalance_ms_per_step": round(wait_mean, 4),
        "bandwidth_ms_per_step": round(transfer_mean, 4),
        "imbalance_share": round(wait_mean / (wait_mean + transfer_mean), 4) if wait_mean + transfer_mean else 0.0,
        "stragglers": [
            {"rank": int(r.rank), "critical_ms": float(r.critical_ms), "arrived_last": int(r.arrived_last)}
            for r in stragglers.head(10).itertuples(index=False)
        ],
    }
    return CrossRank(per_rank=out, groups=groups, group_size=group_size, summary=summary)


def _groups(per_rank: pd.DataFrame) -> pd.DataFrame:
    if len(per_rank) == 0:
        return pd.DataFrame()
    g = per_rank.groupby("group", sort=True)
    worst = per_rank.sort_values(["critical_ms", "step_ms", "rank"], ascending=[False, False, True])
    worst_rank = worst.groupby("group", sort=True)["rank"].first()
    lo, hi = g["rank"].min(), g["rank"].max()
    return pd.DataFrame(
        {
            "group": lo.index.to_numpy(np.int64),
            "ranks": [f"{a}-{b}" if a != b else str(a) for a, b in zip(lo, hi, strict=True)],
            "n": g.size().to_numpy(np.int64),
            "step_ms_median": g["step_ms"].median().round(4).to_numpy(),
            "step_ms_max": g["step_ms"].max().to_numpy(),
            "wait_ms_mean": g["wait_ms"].mean().round(4).to_numpy(),
            "critical_ms_sum": g["critical_ms"].sum().round(4).to_numpy(),
            "worst_rank": worst_rank.to_numpy(np.int64),
        }
    )
