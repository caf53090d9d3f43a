"""Text, markdown and HTML reports as people read them: the verdict first, tables that fit, names shown literally.

Real traces at 80 and 160 columns: the first 25 lines hold the verdict paragraph and the
top fix, no line is wider than the terminal, the kernel table's column headers are whole
and its rows are the JSON's top kernels. A trace whose kernel and op names carry rich
markup, emoji codes, ANSI escapes and HTML goes through text, markdown and HTML and comes
out literally.
"""

from __future__ import annotations

import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from rich.console import Console

from mlprof.api import analyze
from mlprof.report.html import render_html
from mlprof.report.markdown import render_markdown, shown_path
from mlprof.report.name_tables import short_name
from mlprof.report.text import render_text

from conftest import SAMPLES, X, external, kernel, write_trace

REAL = [
    "pytorch__kineto/resnet50_num_workers_0",
    "pytorch__kineto/resnet50_num_workers_4",
    "facebookresearch__param/dlrm_kineto",
]


@pytest.fixture(scope="module")
def reports() -> dict[str, Any]:
    out = {name: analyze(external(name)) for name in REAL}
    out["data_starvation"] = analyze(SAMPLES / "scenarios" / "recorded" / "data_starvation" / "bad")
    return out


def _text(report: Any, width: int, top: int = 10) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    render_text(report.analysis, console, top)
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize("name", [*REAL, "data_starvation"])
def test_verdict_and_top_fix_on_the_first_screen(reports: dict[str, Any], name: str, width: int) -> None:
    report = reports[name]
    data = report.to_dict()
    lines = _text(report, width)
    assert max(len(line) for line in lines) <= width
    head = "\n".join(lines[:25])
    assert lines[0].startswith("Verdict: The step takes ")
    median = data["breakdown"]["step_time_ms"]["median"]
    assert f"{median:.2f} ms" in head
    top = data["findings"][0]
    flat = " ".join(line.strip() for line in lines[:25])
    assert f"Top fix: {top['rule']}, expected {top['expected_speedup']:.2f}x" in flat
    assert f"Fix: {top['fix']}" in flat  # the fix code, whole, on the first screen
    if len(data["ranks"]) > 1:
        assert f"mean over {len(data['ranks'])} ranks" in flat
        everything = " ".join(line.strip() for line in lines)
        assert "(ms/step: mean over ranks; [rank N] in a title: the worst rank's figure)" in everything
        assert "Top kernels by GPU time (mean over ranks)" in everything


@pytest.mark.parametrize("width", [80, 160])
def test_kernel_table_fits_and_lists_the_json_top_kernels(reports: dict[str, Any], width: int) -> None:
    report = reports["pytorch__kineto/resnet50_num_workers_0"]
    data = report.to_dict()
    lines = _text(report, width, top=5)
    start = next(i for i, line in enumerate(lines) if line.startswith("Top kernels by GPU time"))
    header = lines[start + 2]
    for label in ("kernel", "ms/step", "% GPU", "count", "mean µs"):
        assert label in header  # whole headers, never cut to a few letters
    assert ("launched by" in header) == (width >= 110)
    rows = [line for line in lines[start + 4 : start + 9]]
    for row, k in zip(rows, data["kernels"][:5], strict=True):
        cell = row.split("│")[1].strip()
        assert short_name(k["name"]).startswith(cell.rstrip("…")), (cell, k["name"])
        assert f"{k['ms_per_step']:.2f}" in row and f"{k['count']}" in row
    assert lines[start + 9].startswith("└")  # --top 5: five rows


def test_markdown_verdict_tables_and_relative_paths(reports: dict[str, Any], tmp_path: Path) -> None:
    report = reports["pytorch__kineto/resnet50_num_workers_0"]
    md = render_markdown(report.analysis, top=3)
    assert str(external("pytorch__kineto")) not in md  # no absolute path from outside the working directory
    assert md.startswith("## mlprof: `resnet50_num_workers_0`")
    html = MarkdownIt("commonmark").enable("table").render(md)
    assert "<strong>Verdict:</strong> The step takes 152.47 ms" in html
    # an identifier with double underscores stays literal (it used to render as bold "next")
    assert "<strong>next</strong>" not in html and "__next__" in html
    assert html.count("<h3>Top kernels by GPU time</h3>") == 1
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert shown_path(str(tmp_path / "runs" / "a.json")) == "runs/a.json"
        assert shown_path("/elsewhere/b.json") == "b.json"
    finally:
        os.chdir(old)


def test_html_has_verdict_tables_and_a_per_rank_section(reports: dict[str, Any]) -> None:
    report = reports["facebookresearch__param/dlrm_kineto"]
    data = report.to_dict()
    page = render_html(report.analysis)
    text = _visible(page)
    assert "Verdict: The step takes" in text and "mean over 8 ranks" in text
    assert "Per rank" in text and "Top kernels by GPU time (mean over ranks)" in text
    straggler = data["cross_rank"]["summary"]["stragglers"][0]["rank"]
    assert f"{straggler} (straggler: the others wait for it most)" in text
    for r in data["ranks"]:
        assert f"{r['breakdown']['step_time_ms']['mean']:.2f}" in text


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _visible(page: str) -> str:
    parser = _Text()
    parser.feed(page)
    return " ".join(" ".join(parser.parts).split())


HOSTILE = [
    "[/red][bold]k1 :-1: :thumbs_up:",
    "\x1b[31mk2\x1b[0m <script>alert(1)</script>",
    "k3 __next__ *em* `tick` | pipe",
]


def test_hostile_kernel_and_op_names_are_shown_literally(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = [X("user_annotation", "ProfilerStep#1", 0, 1000, tid=1)]
    for i, name in enumerate(HOSTILE):
        events.append(X("cpu_op", name, 10 + 300 * i, 200, tid=1))
        events.append(X("cuda_runtime", "cudaLaunchKernel", 20 + 300 * i, 10, tid=1, correlation=i + 1))
        events.append(kernel(name, 40 + 300 * i, 100 + 10 * i, corr=i + 1))
    trace = write_trace(tmp_path / "hostile.json", events)
    report = analyze(trace)
    data = report.to_dict()
    assert {k["name"] for k in data["kernels"]} == set(HOSTILE)
    console = Console(width=200, record=True, file=io.StringIO(), color_system=None)
    render_text(report.analysis, console)
    out = console.export_text()
    assert "\x1b" not in out
    assert "[/red][bold]k1 :-1: :thumbs_up:" in out and "👎" not in out and "👍" not in out
    assert "k2 <script>alert(1)</script>" in out
    md = render_markdown(report.analysis)
    html = MarkdownIt("commonmark").enable("table").render(md)
    shown = _visible(html)
    assert "<script>" not in html and "\x1b" not in html
    for name in ("[/red][bold]k1 :-1: :thumbs_up:", "k2 <script>alert(1)</script>", "k3 __next__ *em* `tick` | pipe"):
        assert name in shown, name
    page = render_html(report.analysis)
    assert "<script>alert(1)</script>" not in page and "\x1b" not in page
    parser = _Text()
    parser.feed(page)
    visible = " ".join(" ".join(parser.parts).split())
    assert "k2 <script>alert(1)</script>" in visible and "[/red][bold]k1 :-1: :thumbs_up:" in visible


@pytest.mark.parametrize("width", [80, 160])
def test_runs_table_reads_at_80_and_160_columns(tmp_path: Path, width: int) -> None:
    from mlprof.commands._store_table import print_runs
    from mlprof.store import ingest

    db = str(tmp_path / "runs.db")
    old = os.environ.get("MLPROF_CACHE")
    os.environ["MLPROF_CACHE"] = str(tmp_path / "cache")
    try:
        ingest(external("facebookresearch__param/dlrm_kineto"), store_url=db)
        ingest(SAMPLES / "scenarios" / "recorded" / "data_starvation" / "bad", store_url=db)
    finally:
        if old is None:
            os.environ.pop("MLPROF_CACHE")
        else:
            os.environ["MLPROF_CACHE"] = old
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    print_runs(console, None, None, None, "date", 50, db)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= width
    at = next(i for i, line in enumerate(lines) if " name " in line)
    header = lines[at]
    assert "…" not in header
    for label in ("id", "name", "started", "step ms", "speedup", "all fixes"):
        assert f" {label} " in f" {header} ", label
    body = "\n".join(lines[at + 2 : at + 4])
    for text in ("16.01", "dlrm_kineto", "18.89", "DATA001"):
        assert text in body, text
    assert len(re.findall(r"\d\.\d\dx", body)) >= 2  # speedups (replayed since issue 13)


@pytest.mark.parametrize("width", [80, 160])
def test_rules_and_explain_wrap_at_word_boundaries(
    width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlprof.cli import main
    from mlprof.rules.registry import RULES

    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) < width
    flat = " ".join(out.split())
    for rule in RULES:
        assert " ".join(rule.summary.split()) in flat, rule.id  # every word whole, in order
    assert main(["explain", "DATA001"]) == 0
    text = capsys.readouterr().out
    prose = [line for line in text.splitlines() if not line.startswith("    ")]
    assert max(len(line) for line in prose) < width
    doc = next(r for r in RULES if r.id == "DATA001").doc
    first_paragraph = doc.what.split("\n\n")[0]
    assert " ".join(first_paragraph.split()) in " ".join(text.split())
