"""The Kernels and Operators tables of the text, markdown and HTML reports, from the JSON ``kernels``/``operators``.

Top ``top`` rows (10 by default, ``--top N``), most time first. Kernel names are C++
signatures hundreds of characters long; tables show :func:`short_name` (no ``void``,
no argument list) cut to the column, and the JSON keeps the whole name. For several
ranks each figure is the mean over ranks, and the titles say so. Every name is
untrusted text, escaped for the output it goes to.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from mlprof.untrusted import html_text, md_code, term

DEFAULT_TOP = 10


def short_name(name: str) -> str:
    """A kernel signature without ``void`` and its argument list: ``void f<float, 4>(int, float*)`` -> ``f<float, 4>``.

    The argument list is the last top-level ``(...)`` when the name ends with ``)``;
    ``(anonymous namespace)`` inside the name stays.
    """
    text = name.strip()
    if text.startswith("void "):
        text = text[5:]
    if not text.endswith(")"):
        return text
    depth = 0
    cut = -1
    for i, ch in enumerate(text):
        if ch in "<[":
            depth += 1
        elif ch in ">]":
            depth = max(depth - 1, 0)
        elif ch == "(" and depth == 0:
            cut = i
    return text[:cut] if cut > 0 else text


def _name_width(width: int, others: list[tuple[str, int]]) -> int:
    """What is left of ``width`` for the name column: each other column takes its width plus 3 for borders."""
    used = sum(max(w, len(label)) + 3 for label, w in others) + 4
    return max(min(width - used, 90), 16)


def _per_step(op: dict[str, Any], key: str) -> float:
    """An op's ``key`` (ms over the analysed steps) per step, with the divisor its ``ms_per_step`` used."""
    total = op["host_total_ms"]
    return op[key] * op["ms_per_step"] / total if total else 0.0


def user_frame(stack: list[str]) -> str:
    """The innermost frame of a call stack outside site-packages, as ``file.py(line): function`` (file name only)."""
    frames = [f for f in stack if "site-packages" not in f and "/torch/" not in f] or stack
    return frames[0].rsplit("/", 1)[-1].strip() if frames else ""


def _scope(data: dict[str, Any]) -> str:
    return " (mean over ranks)" if len(data.get("ranks") or []) > 1 else ""


def kernel_table(data: dict[str, Any], top: int = DEFAULT_TOP, width: int = 120) -> Table | None:
    """Top kernels by GPU time for a terminal ``width`` columns wide (narrow: fewer columns)."""
    rows = [k for k in data.get("kernels") or [] if k["name"] != "(other)"][:top]
    if not rows:
        return None
    wide = width >= 110
    numbers = [("ms/step", 7), ("% GPU", 5), ("count", 6), ("mean µs", 8)]
    extra = [("TC", 3), ("launched by", 30)] if wide else []
    table = Table(title=f"Top kernels by GPU time{_scope(data)}", title_justify="left", expand=False)
    table.add_column("kernel", overflow="ellipsis", no_wrap=True, width=_name_width(width, numbers + extra))
    for label, w in numbers:
        table.add_column(label, justify="right", no_wrap=True, min_width=w)
    for label, w in extra:
        table.add_column(label, overflow="ellipsis", no_wrap=True, max_width=w)
    for k in rows:
        cells: list[Text | str] = [
            term(short_name(k["name"])),
            f"{k['ms_per_step']:.2f}",
            f"{k['share_pct']:.1f}",
            f"{k['count']:g}",
            f"{k['mean_us']:.1f}",
        ]
        if wide:
            cells += ["yes" if k.get("tensor_cores") else "no", term(k.get("launched_by") or "-")]
        table.add_row(*cells)
    return table


def operator_table(data: dict[str, Any], top: int = DEFAULT_TOP, width: int = 120) -> Table | None:
    """Top CPU ops by inclusive host time."""
    rows = [o for o in data.get("operators") or [] if o["name"] != "(other)"][:top]
    if not rows:
        return None
    numbers = [("host ms/step", 12), ("self ms", 7), ("device ms", 9), ("count", 6)]
    table = Table(title=f"Top operators by host time{_scope(data)}", title_justify="left", expand=False)
    table.add_column("operator", overflow="ellipsis", no_wrap=True, width=_name_width(width, numbers))
    for label, w in numbers:
        table.add_column(label, justify="right", no_wrap=True, min_width=w)
    for o in rows:
        table.add_row(
            term(o["name"]),
            f"{o['ms_per_step']:.2f}",
            f"{_per_step(o, 'host_self_ms'):.2f}",
            f"{_per_step(o, 'device_ms'):.2f}",
            f"{o['count']:g}",
        )
    return table


def markdown_lines(data: dict[str, Any], top: int = DEFAULT_TOP) -> list[str]:
    """Markdown tables of the top kernels and operators (names as code spans)."""
    lines: list[str] = []
    kernels = [k for k in data.get("kernels") or [] if k["name"] != "(other)"][:top]
    if kernels:
        lines += [
            "",
            f"### Top kernels by GPU time{_scope(data)}",
            "",
            "| kernel | ms/step | % of GPU time | count | mean µs | tensor cores | launched by |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for k in kernels:
            launched = md_code(k["launched_by"]) if k.get("launched_by") else "-"
            lines.append(
                f"| {md_code(short_name(k['name']))} | {k['ms_per_step']:.2f} | {k['share_pct']:.1f} | "
                f"{k['count']:g} | {k['mean_us']:.1f} | {'yes' if k.get('tensor_cores') else 'no'} | {launched} |"
            )
    ops = [o for o in data.get("operators") or [] if o["name"] != "(other)"][:top]
    if ops:
        lines += [
            "",
            f"### Top operators by host time{_scope(data)}",
            "",
            "| operator | host ms/step | self ms/step | device ms/step | count |",
            "|---|---:|---:|---:|---:|",
        ]
        for o in ops:
            lines.append(
                f"| {md_code(o['name'])} | {o['ms_per_step']:.2f} | {_per_step(o, 'host_self_ms'):.2f} | "
                f"{_per_step(o, 'device_ms'):.2f} | {o['count']:g} |"
            )
    return lines


def html_section(data: dict[str, Any], top: int = 25) -> str:
    """HTML tables of the top kernels and operators (full names on hover)."""
    parts: list[str] = []
    kernels = [k for k in data.get("kernels") or [] if k["name"] != "(other)"][:top]
    if kernels:
        parts.append(f"<h2>Top kernels by GPU time{html_text(_scope(data))}</h2>")
        parts.append(
            "<table><tr><th>kernel</th><th>ms/step</th><th>% of GPU time</th><th>count</th><th>mean µs</th>"
            "<th>tensor cores</th><th>launched by</th></tr>"
        )
        for k in kernels:
            parts.append(
                f'<tr><td title="{html_text(k["name"])}"><code>{html_text(short_name(k["name"]))}</code></td>'
                f"<td>{k['ms_per_step']:.2f}</td><td>{k['share_pct']:.1f}</td><td>{k['count']:g}</td>"
                f"<td>{k['mean_us']:.1f}</td><td>{'yes' if k.get('tensor_cores') else 'no'}</td>"
                f"<td><code>{html_text(k.get('launched_by') or '-')}</code></td></tr>"
            )
        parts.append("</table>")
    ops = [o for o in data.get("operators") or [] if o["name"] != "(other)"][:top]
    if ops:
        parts.append(f"<h2>Top operators by host time{html_text(_scope(data))}</h2>")
        parts.append(
            "<table><tr><th>operator</th><th>host ms/step</th><th>self ms/step</th><th>device ms/step</th>"
            "<th>count</th><th>call stack</th></tr>"
        )
        for o in ops:
            stack = o.get("call_stack") or []
            where = html_text(user_frame(stack)) if stack else "-"
            parts.append(
                f"<tr><td><code>{html_text(o['name'])}</code></td><td>{o['ms_per_step']:.2f}</td>"
                f"<td>{_per_step(o, 'host_self_ms'):.2f}</td><td>{_per_step(o, 'device_ms'):.2f}</td>"
                f'<td>{o["count"]:g}</td><td title="{html_text(" <- ".join(reversed(stack)))}">{where}</td></tr>'
            )
        parts.append("</table>")
    return "\n".join(parts)
