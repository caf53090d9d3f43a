"""The few lines printed when a profiled run ends: is this run healthy, and what to fix first.

It runs the same analysis as ``mlprof analyze`` on the trace just written. Any failure
becomes one line saying so: the summary must never raise into the training script.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

GPU_BUSY = ("compute", "comm_exposed", "memcpy_exposed")
TOP_CATEGORIES = 3
TOP_FINDINGS = 3


def summary_lines(trace_path: Path) -> list[str]:
    """Analyse ``trace_path`` and describe it in a few lines (raises on unreadable input).

    The analysis is :func:`mlprof.analyze` of the trace, so these lines agree with
    ``mlprof analyze`` of the same file (thresholds from the project's config included).
    """
    from mlprof.api import analyze

    report = analyze(trace_path, counters=None, jobs=1).data  # no reader processes inside a training job
    lines = [f"mlprof: {trace_path}"]
    bd = report["breakdown"]
    cats = bd["categories"]
    wall = bd["wall_ms"]
    st = bd["step_time_ms"]
    if bd["steps_analysed"]:
        aside = [s for r in (report.get("steady_state") or {}).get("ranks", []) for s in r["set_aside"]]
        more = (
            f"; {len(aside)} more set aside: " + ", ".join(f"{s['step']} ({s['reason']})" for s in aside)
            if aside
            else ""
        )
        lines.append(
            f"  {bd['steps_analysed']} steps ({report['trace']['step_source']}{more}): step time median "
            f"{st['median']:.2f} ms, mean {st['mean']:.2f} ms, min {st['min']:.2f} ms, max {st['max']:.2f} ms"
        )
    else:
        lines.append(f"  no steps found; the whole trace ({wall:.2f} ms) is one window")
    if wall > 0:
        busy = sum(cats[c]["ms"] for c in GPU_BUSY) / wall * 100
        device = "" if report["trace"]["has_device_activity"] else " (no GPU activity recorded)"
        lines.append(f"  GPU busy {busy:.1f}%{device}")
        top = sorted(cats, key=lambda c: -cats[c]["ms"])[:TOP_CATEGORIES]
        lines.append("  top: " + ", ".join(f"{c} {cats[c]['ms'] / wall * 100:.1f}%" for c in top if cats[c]["ms"] > 0))
    for finding in report["findings"][:TOP_FINDINGS]:
        lines.append("  finding: " + _finding_line(finding))
    return lines


def _finding_line(finding: Any) -> str:
    d = finding.to_dict() if hasattr(finding, "to_dict") else dict(finding)
    speedup = d.get("expected_speedup")
    tail = f" (expected speedup {speedup:.2f}x)" if isinstance(speedup, int | float) else ""
    return f"[{d.get('rule', '?')}] {d.get('title', '')}{tail}"


def print_summary(trace_path: Path, stream: TextIO | None = None) -> bool:
    """Print the summary; True if it was printed, False (and one line why) if not. Never raises."""
    out = stream if stream is not None else sys.stdout
    try:
        text = "\n".join(summary_lines(trace_path))
    except Exception as exc:
        text = f"mlprof: no summary for {trace_path} ({type(exc).__name__}: {exc})"
        ok = False
    else:
        ok = True
    try:
        from mlprof.untrusted import plain

        print("\n".join(plain(line) for line in text.split("\n")), file=out, flush=True)  # trace names: no escapes
    except Exception:
        return False
    return ok
