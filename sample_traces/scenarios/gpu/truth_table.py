"""Predicted against measured, per fix type, from a ``run_all.py`` recording: the table for benchmarks/RESULTS.md.

::

    python sample_traces/scenarios/gpu/truth_table.py sample_traces/scenarios/gpu/recorded

For every scenario recorded both ways, mlprof analyses the bad and the fixed run folder
(``mlprof.analyze``, counters included) and the finding of the scenario's rule (or, for
a scenario named by category, the first finding of that category) is set against the
manifest: its ``expected_speedup`` against the measured speedup (median bad step /
median fixed step, the script's clock), and whether it still fires on the fixed run.
The measurement never comes from mlprof; the prediction always does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import mlprof
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    import mlprof

VARIANTS = ("bad", "fixed")


def findings(folder: Path) -> list[dict[str, Any]]:
    """mlprof's findings for one run folder, as plain dicts (ranked)."""
    table = mlprof.analyze(folder, jobs=1).findings
    return table.to_dict("records") if len(table) else []


def matching(found: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings of the scenario's rule (by id, or by category when the manifest names no id)."""
    rule, category = entry.get("rule"), entry.get("category")
    return [f for f in found if (f["rule"] == rule if rule else f["category"] == category)]


def rows(recorded: Path) -> list[dict[str, Any]]:
    """One row per scenario of the manifest in ``recorded``."""
    manifest = json.loads((recorded / "manifest.json").read_text())
    out = []
    for name, entry in manifest["scenarios"].items():
        row: dict[str, Any] = {
            "scenario": name,
            "fix_type": entry["fix_type"],
            "judged_on": entry.get("judged_on", "speedup"),
            "rule": entry.get("rule") or f"category {entry.get('category')}",
            "status": {v: entry[v]["status"] for v in VARIANTS},
            "why": {v: entry[v].get("why") for v in VARIANTS if entry[v].get("why")},
            "measured": entry["speedup"]["host_median"],
            "measured_device": entry["speedup"].get("device_median"),
            "predicted": None,
            "error": None,
            "fires_on_bad": None,
            "fixed_time_lost_ratio": None,
        }
        if entry["bad"]["status"] == "ok":
            bad = matching(findings(recorded / entry["bad"]["dir"]), entry)
            row["fires_on_bad"] = bool(bad)
            if bad:
                row["predicted"] = float(bad[0]["expected_speedup"])
                if row["measured"] and entry.get("judged_on", "speedup") == "speedup":
                    row["error"] = round(row["predicted"] / row["measured"] - 1, 4)
            if bad and entry["fixed"]["status"] == "ok":
                left = matching(findings(recorded / entry["fixed"]["dir"]), entry)
                lost = float(bad[0]["time_lost_ms_per_step"])
                row["fixed_time_lost_ratio"] = (
                    round(float(left[0]["time_lost_ms_per_step"]) / lost, 4) if left and lost else 0.0
                )
        out.append(row)
    return out


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def markdown(recorded: Path) -> str:
    manifest = json.loads((recorded / "manifest.json").read_text())
    machine = manifest["machine"]
    lines = [
        f"Recorded {manifest['recorded_at']} by `{manifest['generated_by']}` on "
        f"{machine.get('gpu') or 'CPU only'} (driver {machine.get('driver')}, torch {machine.get('torch')}, "
        f"CUDA {machine.get('cuda')}); {manifest['settings']['steps']} profiled steps per run.",
        "",
        "| scenario | fix type | rule | measured (host) | measured (GPU) | predicted | error | fires bad | "
        "fixed/bad time lost |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows(recorded):
        if set(r["status"].values()) != {"ok"}:
            why = "; ".join(f"{v}: {r['status'][v]}" + (f" ({r['why'][v]})" if v in r["why"] else "") for v in VARIANTS)
            lines.append(f"| {r['scenario']} | {r['fix_type']} | {r['rule']} | {why} | | | | | |")
            continue
        error = None if r["error"] is None else r["error"] * 100
        judged = "(memory, not time)" if r["judged_on"] == "memory" else _fmt(error, "+.1f", "%")
        cells = [
            r["scenario"],
            r["fix_type"],
            r["rule"],
            _fmt(r["measured"], ".3f", "x"),
            _fmt(r["measured_device"], ".3f", "x"),
            _fmt(r["predicted"], ".3f", "x"),
            judged,
            "yes" if r["fires_on_bad"] else "no",
            _fmt(r["fixed_time_lost_ratio"], ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: truth_table.py RECORDED_FOLDER (the folder holding manifest.json)", file=sys.stderr)
        return 2
    recorded = Path(args[0])
    if not (recorded / "manifest.json").is_file():
        print(f"truth_table: {recorded / 'manifest.json'} does not exist", file=sys.stderr)
        return 2
    print(markdown(recorded), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
