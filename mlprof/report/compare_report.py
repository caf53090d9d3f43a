"""Formats of ``mlprof compare``: JSON (the contract), markdown (a PR/CI comment) and text.

JSON layout (``schema_version`` 2.0 of the comparison)::

    base, new          path, format, devices, ranks, steps_analysed (steady steps),
                       step_source, step_filter, set_aside (steps left out: rank, step,
                       dur_ms, reason, detail)
    step_time_ms       achieved, on the steady steps: statistic, base, new (medians),
                       change_ms, change_pct (+ slower, - faster), speedup (base/new),
                       base_spread_pct, new_spread_pct (1.4826 MAD / median), noise_pct
                       (run-to-run band), within_noise, verdict, base_steps, new_steps,
                       base_mean, new_mean, mean_change_pct, mean_speedup, base_min,
                       base_max, new_min, new_max
    categories         per breakdown category of the mean steady step: base_ms, new_ms,
                       change_ms, share_of_change_pct (sums to 100), meaning
    where_time_went    freed (categories that shrank), reappeared (that grew), both as
                       category + change_ms, and mean_step_change_ms (their sum)
    explained_by       the category that moved most in the direction of the change
    kernel_classes     device time per kernel class (gemm_fp32, gemm_tensor, comm...) per step
    kernels, ops       top names by absolute time change: count and ms per step in each run
    findings           resolved / new / changed / unchanged: lists of findings, each with
                       rule, category, severity, title, expected_speedup,
                       time_lost_ms_per_step (of NEW, or of BASE for resolved ones) and
                       base_/new_time_lost_ms_per_step
    predicted_vs_achieved  per fix BASE predicted: status, acted_on, predicted_saving_ms,
                       predicted_speedup, base_lost_ms, new_lost_ms, freed_categories,
                       achieved_speedup, achieved_saving_ms (the whole steady step),
                       within_noise
    predicted_together BASE's predicted speedup of the acted-on fixes together, or null
    gates              null, or passed + results (gate, passed, measured, limit)
    notes              caveats (different GPUs, set-aside steps, within noise, ...)

Every figure is defined in :mod:`mlprof.compare` (runs, steps, names, findings).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mlprof import __version__
from mlprof.compare.diff import Comparison
from mlprof.compare.findings import FindingPair
from mlprof.compare.runs import RunSummary
from mlprof.gates.evaluate import GateResult
from mlprof.report.markdown import shown_path
from mlprof.untrusted import md_code, md_text, plain

SCHEMA_VERSION = "2.0"
TOP_NAMES_JSON = 25
TOP_NAMES_TEXT = 10
NS_PER_MS = 1_000_000


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _side(run: RunSummary) -> dict[str, Any]:
    return {
        "path": run.path,
        "format": run.format,
        "devices": run.devices,
        "ranks": run.ranks,
        "steps_analysed": 0 if run.stepless else len(run.steps),
        "step_source": run.step_source,
        "step_filter": run.step_filter,
        "set_aside": run.set_aside,
    }


def _names(frame: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "kind": r.kind,
            "class": r.klass,
            "base_count": _r(r.base_count, 2),
            "new_count": _r(r.new_count, 2),
            "base_ms": _r(r.base_ns / NS_PER_MS, 4),
            "new_ms": _r(r.new_ns / NS_PER_MS, 4),
            "change_ms": _r(r.change_ns / NS_PER_MS, 4),
        }
        for r in frame.head(n).itertuples(index=False)
    ]


def _pair(p: FindingPair) -> dict[str, Any]:
    d = p.finding.brief()
    d["status"] = p.status
    d["base_time_lost_ms_per_step"] = _r(p.base_ms, 6)
    d["new_time_lost_ms_per_step"] = _r(p.new_ms, 6)
    if p.base is not None:
        d["base_expected_speedup"] = _r(p.base.expected_speedup, 4)
    if p.new is not None:
        d["new_expected_speedup"] = _r(p.new.expected_speedup, 4)
    return d


def comparison_json(c: Comparison, gates: list[GateResult] | None = None) -> dict[str, Any]:
    s = c.step
    main = c.main_category
    kernels = c.names.of("kernel", "memcpy", "memset")
    ops = c.names.of("op")
    dev_totals = c.names.totals("kernel", "memcpy", "memset")
    classes = c.names.by_class()
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "mlprof", "version": __version__},
        "base": _side(c.base),
        "new": _side(c.new),
        "step_time_ms": {
            "statistic": "median over the steady steps",
            "base": _r(s.base_ms, 6),
            "new": _r(s.new_ms, 6),
            "change_ms": _r(s.change_ms, 6),
            "change_pct": _r(s.change_pct, 3),
            "speedup": _r(s.speedup, 4),
            "base_spread_pct": _r(s.base.spread_pct, 3),
            "new_spread_pct": _r(s.new.spread_pct, 3),
            "noise_pct": _r(s.noise_pct, 3),
            "within_noise": s.within_noise,
            "verdict": s.verdict,
            "base_steps": s.base.n,
            "new_steps": s.new.n,
            "base_mean": _r(s.base.mean_ms, 6),
            "new_mean": _r(s.new.mean_ms, 6),
            "mean_change_pct": _r(s.mean_change_pct, 3),
            "mean_speedup": _r(s.mean_speedup, 4),
            "base_min": _r(s.base.min_ms, 6),
            "base_max": _r(s.base.max_ms, 6),
            "new_min": _r(s.new.min_ms, 6),
            "new_max": _r(s.new.max_ms, 6),
        },
        "categories": [
            {
                "category": x.category,
                "base_ms": _r(x.base_ms, 6),
                "new_ms": _r(x.new_ms, 6),
                "change_ms": _r(x.change_ms, 6),
                "share_of_change_pct": _r(x.share_of_change_pct, 2),
                "meaning": x.meaning,
            }
            for x in c.categories
        ],
        "where_time_went": {
            "freed": [{"category": x.category, "change_ms": _r(x.change_ms, 6)} for x in c.freed],
            "reappeared": [{"category": x.category, "change_ms": _r(x.change_ms, 6)} for x in c.grew],
            "mean_step_change_ms": _r(sum(x.change_ms for x in c.categories), 6),
        },
        "explained_by": None if main is None else main.category,
        "kernel_classes": [
            {
                "class": r.klass,
                "base_count": _r(r.base_count, 2),
                "new_count": _r(r.new_count, 2),
                "base_ms": _r(r.base_ns / NS_PER_MS, 4),
                "new_ms": _r(r.new_ns / NS_PER_MS, 4),
                "change_ms": _r(r.change_ns / NS_PER_MS, 4),
                "base_names": int(r.base_names),
                "new_names": int(r.new_names),
            }
            for r in classes.itertuples(index=False)
        ],
        "kernels": {
            "matched_by": "name",
            "per_step": True,
            "base_count": _r(dev_totals["base_count"], 2),
            "new_count": _r(dev_totals["new_count"], 2),
            "base_ms": _r(dev_totals["base_ns"] / NS_PER_MS, 4),
            "new_ms": _r(dev_totals["new_ns"] / NS_PER_MS, 4),
            "names_only_in_base": int((kernels["new_count"] == 0).sum()),
            "names_only_in_new": int((kernels["base_count"] == 0).sum()),
            "names_in_both": int(((kernels["new_count"] > 0) & (kernels["base_count"] > 0)).sum()),
            "top": _names(kernels, TOP_NAMES_JSON),
        },
        "ops": {
            "matched_by": "name",
            "per_step": True,
            "names_only_in_base": int((ops["new_count"] == 0).sum()),
            "names_only_in_new": int((ops["base_count"] == 0).sum()),
            "top": _names(ops, TOP_NAMES_JSON),
        },
        "findings": {
            "resolved": [_pair(p) for p in c.findings.resolved],
            "new": [_pair(p) for p in c.findings.new],
            "changed": [_pair(p) for p in c.findings.changed],
            "unchanged": [_pair(p) for p in c.findings.unchanged],
        },
        "predicted_vs_achieved": [
            {
                "rule": p.rule,
                "category": p.category,
                "title": p.title,
                "status": p.status,
                "acted_on": p.acted_on,
                "predicted_saving_ms": _r(p.predicted_saving_ms, 6),
                "predicted_speedup": _r(p.predicted_speedup, 4),
                "base_lost_ms": _r(p.base_lost_ms, 6),
                "new_lost_ms": _r(p.new_lost_ms, 6),
                "freed_categories": list(p.freed_categories),
                "achieved_speedup": _r(p.achieved_speedup, 4),
                "achieved_saving_ms": _r(p.achieved_saving_ms, 6),
                "within_noise": s.within_noise,
            }
            for p in c.predicted
        ],
        "predicted_together": _r(c.predicted_together, 4),
        "gates": None
        if gates is None
        else {"passed": all(g.passed for g in gates), "results": [g.to_dict() for g in gates]},
        "notes": c.notes,
    }


def _step_line(s: dict[str, Any]) -> str:
    """The achieved change in words: medians, change, speedup, verdict and the noise band."""
    band = "" if s["noise_pct"] is None else f"; run-to-run band +/-{s['noise_pct']:.1f}%"
    return (
        f"{s['base']:.2f} -> {s['new']:.2f} ms ({s['change_pct']:+.1f}%, {s['verdict']}, {s['speedup']:.2f}x)"
        f" over {s['base_steps']} / {s['new_steps']} steady steps{band}"
    )


def _went(d: dict[str, Any]) -> str | None:
    w = d["where_time_went"]
    if not w["freed"] and not w["reappeared"]:
        return None
    freed = ", ".join(f"{x['category']} {x['change_ms']:+.2f}" for x in w["freed"] if abs(x["change_ms"]) >= 0.005)
    grew = ", ".join(f"{x['category']} {x['change_ms']:+.2f}" for x in w["reappeared"] if abs(x["change_ms"]) >= 0.005)
    return f"freed: {freed or 'none'}; reappeared: {grew or 'none'} (ms per mean steady step)"


def _direction(pct: float) -> str:
    return "slower" if pct > 0 else "faster" if pct < 0 else "unchanged"


def comparison_markdown(c: Comparison, gates: list[GateResult] | None = None) -> str:
    d = comparison_json(c, gates)
    s = d["step_time_ms"]
    base, new = md_code(shown_path(d["base"]["path"])), md_code(shown_path(d["new"]["path"]))
    lines = [f"## mlprof compare: {base} -> {new}", ""]
    lines.append(f"Steady step (median) **{_step_line(s)}**.")
    lines.append(
        f"Mean steady step {s['base_mean']:.2f} -> {s['new_mean']:.2f} ms ({s['mean_change_pct']:+.1f}%, "
        f"{s['mean_speedup']:.2f}x)."
    )
    if d["explained_by"]:
        main = next(x for x in d["categories"] if x["category"] == d["explained_by"])
        lines.append(f"Mostly **{main['category']}** ({main['change_ms']:+.2f} ms per step: {main['meaning']}).")
    went = _went(d)
    if went:
        lines.append(f"Where the time went: {went}.")
    lines += ["", "| category | base ms/step | new ms/step | change | share of change |", "|---|---:|---:|---:|---:|"]
    for x in d["categories"]:
        share = "-" if x["share_of_change_pct"] is None else f"{x['share_of_change_pct']:.0f}%"
        lines.append(f"| {x['category']} | {x['base_ms']:.2f} | {x['new_ms']:.2f} | {x['change_ms']:+.2f} | {share} |")
    pva = d["predicted_vs_achieved"]
    if pva:
        lines += [
            "",
            "### Predicted vs achieved (fixes the base run predicted; achieved = the whole steady step)",
            "",
            "| rule | status | predicted | achieved (step) | its time lost ms/step | freed categories |",
            "|---|---|---:|---:|---:|---|",
        ]
        for p in pva:
            achieved = f"{p['achieved_speedup']:.2f}x" if p["acted_on"] else "-"
            lines.append(
                f"| {p['rule']} | {p['status']} | {p['predicted_speedup']:.2f}x | {achieved} | "
                f"{p['base_lost_ms']:.2f} -> {p['new_lost_ms']:.2f} | {', '.join(p['freed_categories'])} |"
            )
        if d["predicted_together"] is not None:
            lines.append("")
            lines.append(
                f"The fixes acted on predicted {d['predicted_together']:.2f}x together; the steady step "
                f"achieved {s['speedup']:.2f}x ({s['verdict']})."
            )
    f = d["findings"]
    lines += ["", "### Findings", ""]
    for status in ("resolved", "new", "changed", "unchanged"):
        for x in f[status]:
            lines.append(
                f"- **{status}** {x['rule']} ({x['category']}): {md_text(x['title'])} "
                f"[{x['base_time_lost_ms_per_step']:.2f} -> {x['new_time_lost_ms_per_step']:.2f} ms/step]"
            )
    if not any(f.values()):
        lines.append("- no findings in either run")
    if d["kernel_classes"]:
        lines += ["", "### Kernel classes (device time per step)", ""]
        lines += ["| class | base ms | new ms | change | names base/new |", "|---|---:|---:|---:|---|"]
    for k in d["kernel_classes"]:
        lines.append(
            f"| {k['class']} | {k['base_ms']:.2f} | {k['new_ms']:.2f} | {k['change_ms']:+.2f} | "
            f"{k['base_names']}/{k['new_names']} |"
        )
    for title, key in (("Kernels", "kernels"), ("Ops", "ops")):
        rows = d[key]["top"][:TOP_NAMES_TEXT]
        if not rows:
            continue
        lines += ["", f"### {title} whose time changed most (matched by name, per step)", ""]
        lines += ["| name | count base -> new | ms base -> new | change ms |", "|---|---:|---:|---:|"]
        for r in rows:
            lines.append(
                f"| {md_code(_short(r['name']))} | {r['base_count']:g} -> {r['new_count']:g} | "
                f"{r['base_ms']:.3f} -> {r['new_ms']:.3f} | {r['change_ms']:+.3f} |"
            )
    if gates is not None:
        lines += ["", *_gate_lines(gates)]
    if d["notes"]:
        lines += ["", *[f"> note: {md_text(n)}" for n in d["notes"]]]
    return "\n".join(lines) + "\n"


def _gate_lines(gates: list[GateResult]) -> list[str]:
    from mlprof.gates.evaluate import gates_markdown

    return gates_markdown(gates, "").rstrip("\n").split("\n")


def _short(name: str, width: int = 90) -> str:
    name = plain(name)
    return name if len(name) <= width else name[: width - 3] + "..."


TEXT_WIDTH = 100
"""Width of ``comparison_text`` when the caller does not say (``mlprof compare`` passes the terminal's)."""
WIDE = 120
"""From this width on, a finding's title goes on its own row's line; narrower, on the lines below it."""


def comparison_text(c: Comparison, gates: list[GateResult] | None = None, width: int = TEXT_WIDTH) -> str:
    """Plain text for the terminal, every line shorter than ``width``: prose wrapped at word boundaries
    (paths at ``/``), fixed-width number columns, long kernel names cut with ``...``."""
    width = max(width, 40) - 1
    d = comparison_json(c, gates)
    s = d["step_time_ms"]
    out = ["mlprof compare"]
    for label, side in (("base", d["base"]), ("new", d["new"])):
        devices = ", ".join(side["devices"]) or "no device properties"
        one_line = f"  {label + ':':<5} {plain(side['path'])}  ({devices})"
        if len(one_line) <= width:
            out.append(one_line)
        else:  # the device, then the path on lines of its own
            out += _fill(f"{label + ':':<5} {devices}", width, "  ", "        ")
            out += _path_lines(plain(side["path"]), width, "        ")
    out += _fill(f"steady step (median): {_step_line(s)}", width, "  ", "    ")
    out += _fill(
        f"mean steady step: {s['base_mean']:.2f} -> {s['new_mean']:.2f} ms ({s['mean_change_pct']:+.1f}%, "
        f"{s['mean_speedup']:.2f}x)",
        width,
        "  ",
        "    ",
    )
    if d["explained_by"]:
        out.append(f"  mostly: {d['explained_by']}")
    went = _went(d)
    if went:
        out += _fill(f"where the time went: {went}", width, "  ", "    ")
    out += ["", f"  {'category':<16}{'base ms':>10}{'new ms':>10}{'change':>10}{'share':>8}"]
    for x in d["categories"]:
        share = "-" if x["share_of_change_pct"] is None else f"{x['share_of_change_pct']:.0f}%"
        out.append(f"  {x['category']:<16}{x['base_ms']:>10.2f}{x['new_ms']:>10.2f}{x['change_ms']:>+10.2f}{share:>8}")
    if d["predicted_vs_achieved"]:
        out += ["", f"  {'fix':<10}{'status':<11}{'predicted':>10}{'achieved':>10}  time lost ms/step"]
        for p in d["predicted_vs_achieved"]:
            achieved = f"{p['achieved_speedup']:>9.2f}x" if p["acted_on"] else f"{'-':>10}"
            out.append(
                f"  {p['rule']:<10}{p['status']:<11}{p['predicted_speedup']:>9.2f}x{achieved}"
                f"  {p['base_lost_ms']:.2f} -> {p['new_lost_ms']:.2f}"
            )
        out += _fill(
            "(achieved: the measured change of the whole steady step, median, every change included; "
            "shown for the fixes NEW acted on)",
            width,
            "  ",
            "   ",
        )
        if d["predicted_together"] is not None:
            out.append(f"  acted-on fixes together predicted {d['predicted_together']:.2f}x")
    out.append("")
    for status in ("resolved", "new", "changed", "unchanged"):
        for x in d["findings"][status]:
            head = (
                f"  {status:<10}{x['rule']:<10}{x['base_time_lost_ms_per_step']:>8.2f} -> "
                f"{x['new_time_lost_ms_per_step']:>6.2f} ms/step"
            )
            title = plain(x["title"])
            if width + 1 >= WIDE:
                out += _fill(f"{head}  {title}", width, "", " " * (len(head) + 2))
            else:
                out.append(head)
                out += _fill(title, width, "      ", "      ")
    if d["kernel_classes"]:
        out += ["", f"  {'kernel class':<16}{'base ms':>10}{'new ms':>10}{'change':>10}"]
    for k in d["kernel_classes"]:
        out.append(f"  {k['class']:<16}{k['base_ms']:>10.2f}{k['new_ms']:>10.2f}{k['change_ms']:>+10.2f}")
    rows = d["kernels"]["top"][:TOP_NAMES_TEXT]
    if rows:
        out += ["", "  kernels whose time changed most (per step: count, ms)"]
        for r in rows:
            head = f"  {r['change_ms']:>+9.3f} ms  {r['base_count']:>7g} -> {r['new_count']:<7g} "
            out.append(head + _short(r["name"], min(90, width - len(head))))
    if gates is not None:
        out += [""]
        for g in gates:
            out += _fill(
                f"gate {'pass' if g.passed else 'FAIL'}: {g.gate}: {g.measured} (limit: {g.limit})", width, "  ", "    "
            )
    for n in d["notes"]:
        out += _fill(f"note: {n}", width, "  ", "    ")
    return "\n".join(plain(line) for line in out) + "\n"  # names and paths from traces: no escapes reach a terminal


def _fill(text: str, width: int, indent: str, hang: str) -> list[str]:
    """``text`` wrapped at spaces to ``width`` (a word longer than a line is cut at ``/`` when it has one)."""
    import textwrap

    words = []
    for word in plain(text).split(" "):
        words += _split_long(word, width - len(hang)) if len(word) > width - len(hang) else [word]
    lines = textwrap.wrap(
        " ".join(words),
        width=width,
        initial_indent=indent,
        subsequent_indent=hang,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return lines or [indent.rstrip()]


def _split_long(word: str, room: int) -> list[str]:
    """A long word (a path) in pieces of at most ``room`` characters, cut after a ``/``; else whole."""
    if "/" not in word:
        return [word]
    pieces: list[str] = []
    current = ""
    for part in word.split("/"):
        part_slash = part + "/"
        if current and len(current) + len(part_slash) > room:
            pieces.append(current)
            current = ""
        current += part_slash
    pieces.append(current[:-1])
    return [p for p in pieces if p]


def _path_lines(path: str, width: int, indent: str) -> list[str]:
    """A path on lines of its own, cut after a ``/`` where it does not fit (its characters all kept, in order)."""
    room = width - len(indent)
    return [indent + piece for piece in (_split_long(path, room) if len(path) > room else [path])]
