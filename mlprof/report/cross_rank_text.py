"""The cross-rank part of the text report: readable at 8 ranks and at 1,024.

Up to :data:`RANKS_TABLE_MAX` ranks the report keeps one row per rank; beyond it
prints one row per rank group (a host's ranks by default), the worst ranks by name,
and says where the full per-rank table is (JSON ``cross_rank.per_rank``). Formats
the ``cross_rank`` object of the JSON report; computes nothing.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

RANKS_TABLE_MAX = 16
GROUPS_SHOWN = 12
WORST_SHOWN = 8


def print_cross_rank(data: dict[str, Any], console: Console) -> None:
    cr = data.get("cross_rank")
    if not cr:
        return
    s = cr["summary"]
    console.print()
    console.print("[bold]Across ranks[/bold]")
    skew = s.get("step_skew")
    console.print(
        f"  {s['ranks']} ranks, {s['matched_collectives']} collectives matched by {s['match_key']}"
        f"{', ' + str(s['unmatched_kernels']) + ' kernels unmatched' if s['unmatched_kernels'] else ''}; "
        f"median rank's mean step {s['step_ms_median']:.2f} ms, slowest rank {s['slowest_rank']} "
        f"{s['step_ms_max']:.2f} ms{f' (skew {skew:.2f}x)' if skew else ''}",
        highlight=False,
    )
    console.print(
        f"  exposed communication per step (mean over ranks): {s['imbalance_ms_per_step']:.2f} ms waiting for "
        f"other ranks (imbalance), {s['bandwidth_ms_per_step']:.2f} ms moving data (bandwidth): "
        f"{100 * s['imbalance_share']:.0f}% imbalance",
        highlight=False,
    )
    per_rank = cr["per_rank"]
    worst = sorted(per_rank, key=lambda r: (-r["critical_ms"], -r["caused_wait_ms"], r["rank"]))
    worst = [r for r in worst if r["arrived_last"] > 0][:WORST_SHOWN]
    if worst:
        table = Table(title="Ranks the others wait for (ms per step)", title_justify="left")
        for col in ("rank", "arrived last", "others waited", "job waits", "step", "compute", "own wait"):
            table.add_column(col, justify="right")
        for r in worst:
            table.add_row(
                str(r["rank"]),
                str(r["arrived_last"]),
                f"{r['caused_wait_ms']:.2f}",
                f"{r['critical_ms']:.2f}",
                f"{r['step_ms']:.2f}",
                f"{r['compute_ms']:.2f}",
                f"{r['wait_ms']:.2f}",
            )
        console.print(table)
    if len(per_rank) > RANKS_TABLE_MAX:
        groups = sorted(cr["groups"], key=lambda g: (-g["critical_ms_sum"], -g["step_ms_max"], g["group"]))
        table = Table(
            title=f"Rank groups of {cr['group_size']} (worst {min(GROUPS_SHOWN, len(groups))} of {len(groups)}; "
            "all ranks: --format json, cross_rank.per_rank)",
            title_justify="left",
        )
        for col in ("ranks", "step median", "step max", "wait mean", "job waits", "worst rank"):
            table.add_column(col, justify="right")
        for g in groups[:GROUPS_SHOWN]:
            table.add_row(
                g["ranks"],
                f"{g['step_ms_median']:.2f}",
                f"{g['step_ms_max']:.2f}",
                f"{g['wait_ms_mean']:.2f}",
                f"{g['critical_ms_sum']:.2f}",
                str(g["worst_rank"]),
            )
        console.print(table)
    for o in cr.get("rule_outliers", []):
        names = ", ".join(f"rank {w['rank']} {w['ms_per_step']:.2f} ms" for w in o["worst"][:3])
        console.print(
            f"  {o['rule']} outliers: {o['outlier_ranks']} rank(s) lose at least twice the median rank's "
            f"{o['median_ms_per_step']:.2f} ms per step: {names}",
            highlight=False,
        )
