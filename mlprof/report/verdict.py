"""The one-paragraph verdict every report opens with: the step, the top fix, its speedup, what paces the step.

Built from the JSON report alone (so text, markdown and HTML say the same thing):

* the step: median step time over the analysed steps and GPU busy share (for several
  ranks, both are the **mean over ranks**, and the paragraph says so);
* the top fix: the first ranked finding's rule, expected speedup (``≤`` for a
  low-confidence bound), time saved per step and title, and the fix itself;
* all fixes: the plan's cumulative speedup;
* what paces the step: the what-if replay's answer when the report has a ``whatif`` object
  (its ``paces`` string: the resource pacing most steps, see :mod:`mlprof.whatif.replay`);
  for a report without a replay (``--low-memory``, a report of schema 1.4 or older) the
  attribution category with the most time per step, with what it means.

The pieces are plain strings: each renderer escapes them for its output.
"""

from __future__ import annotations

from typing import Any

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.report.speedup import speedup_text


def _paces(data: dict[str, Any]) -> str | None:
    whatif = data.get("whatif")
    if isinstance(whatif, dict):
        # The report's own answer (mlprof.whatif.predict.WhatIf.paces): one string, or null without steps.
        value = whatif.get("paces")
        return value if isinstance(value, str) and value else None
    bd = data.get("breakdown") or {}
    cats = bd.get("categories") or {}
    if not cats:
        return None
    top = max(CATEGORIES, key=lambda c: (cats.get(c) or {}).get("ms_per_step", 0.0))
    entry = cats[top]
    return f"{top} takes the most of it ({entry['ms_per_step']:.2f} ms/step, {entry['pct']:.0f}%: {entry['meaning']})"


def verdict(data: dict[str, Any]) -> dict[str, str | None]:
    """The verdict's parts: ``step``, ``top_fix``, ``fix_code``, ``all_fixes``, ``paces`` (None when unknown)."""
    bd = data.get("breakdown") or {}
    ranks = len(data.get("ranks") or [])
    scope = f", mean over {ranks} ranks" if ranks > 1 else ""
    median = (bd.get("step_time_ms") or {}).get("median")
    step = None
    if median is not None:
        n = int(bd.get("steps_analysed") or 0)
        step = f"the step takes {median:.2f} ms (median over {n} step{'' if n == 1 else 's'}{scope})"
        if bd.get("gpu_busy_pct") is not None:
            step += f", the GPU is busy {bd['gpu_busy_pct']:.0f}% of it"
    findings = data.get("findings") or []
    top_fix = fix_code = None
    if findings:
        f = findings[0]
        where = ""
        if ranks > 1 and f.get("ranks"):
            fr = f["ranks"]
            where = f" on rank {fr[0]}" if len(fr) == 1 else f", mean over {len(fr)} ranks"
        top_fix = (
            f"{f['rule']}, expected {speedup_text(f)} (saves {f['time_lost_ms_per_step']:.2f} ms/step{where}): "
            f"{f['title']}"
        )
        fix_code = str(f.get("fix") or "").strip() or None
    plan = data.get("plan") or []
    all_fixes = None
    if len(plan) > 1:
        all_fixes = f"all {len(plan)} fixes in the plan together: {plan[-1]['cumulative_speedup']:.2f}x"
    return {"step": step, "top_fix": top_fix, "fix_code": fix_code, "all_fixes": all_fixes, "paces": _paces(data)}


def verdict_sentences(data: dict[str, Any]) -> str:
    """The verdict as one plain paragraph (without the fix code)."""
    v = verdict(data)
    parts = []
    if v["step"]:
        parts.append(v["step"][0].upper() + v["step"][1:] + ".")
    if v["top_fix"]:
        parts.append(f"Top fix: {v['top_fix']}.")
    else:
        parts.append("No finding costs measurable time.")
    if v["all_fixes"]:
        parts.append(v["all_fixes"][0].upper() + v["all_fixes"][1:] + ".")
    if v["paces"]:
        parts.append(f"What paces the step: {v['paces']}.")
    return " ".join(parts)
