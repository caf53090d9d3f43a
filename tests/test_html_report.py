"""mlprof report: one self-contained HTML file with the breakdown, the ranked fixes and the waterfall."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mlprof.analysis import analyze_job
from mlprof.cli import main
from mlprof.report.html import render_html
from mlprof.trace.loader import load_job

from conftest import SAMPLES, external

KINETO_0 = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"
CHROMIUM = "/usr/bin/chromium"


class _Refs(HTMLParser):
    """Every src/href the page would load, and the scripts' sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_page_is_self_contained_and_complete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = external(KINETO_0)
    out = tmp_path / "report.html"
    assert main(["report", str(source), "-o", str(out)]) == 0
    assert "4 finding(s)" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed(page)
    assert refs.refs == []  # nothing to fetch: plotly.js is inline
    assert page.count("Plotly.newPlot(") == 2  # step breakdown and waterfall
    assert len(re.findall(r"plotly\.js v\d", page)) == 1  # the library inlined once
    analysis = analyze_job(load_job(source), str(source))
    for f in analysis.findings:
        assert f"<b>{f.rule}</b>" in page and f"{f.expected_speedup:.2f}x" in page
    # the waterfall table: the same plan as the JSON report (the replay's, since issue 13)
    for p in analysis.diagnosis.plan:  # type: ignore[union-attr]
        row = (
            f"<td>{p.rule}</td><td class=num>{p.saves_ms_per_step:.2f}</td><td class=num>{p.step_ms_after:.2f}</td>"
            f"<td class=num>{p.cumulative_speedup:.2f}x</td>"
        )
        assert row in page
    assert "<td>idle_data</td><td class=num>35.50</td><td class=num>23.2</td>" in page
    assert "median <b>152.47 ms</b>" in page


def test_page_without_findings_or_device(tmp_path: Path) -> None:
    source = SAMPLES / "synthetic" / "healthy.json.gz"
    page = render_html(analyze_job(load_job(source), str(source)))
    assert "No findings: no rule found time to save in this trace." in page
    assert page.count("Plotly.newPlot(") == 1  # no plan, no waterfall
    assert "plotly.js v" in page


def test_report_refuses_to_overwrite_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.json.gz"
    original = (SAMPLES / "synthetic" / "sync_point.json.gz").read_bytes()
    trace.write_bytes(original)
    assert main(["report", str(trace), "-o", str(trace)]) == 2
    assert "would write over or into the input" in capsys.readouterr().err
    assert trace.read_bytes() == original


def test_page_renders_offline_in_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian package 'chromium')")
    sync_api = pytest.importorskip("playwright.sync_api")
    source = SAMPLES / "scenarios" / "recorded" / "data_starvation" / "bad"
    out = tmp_path / "report.html"
    assert main(["report", str(source), "-o", str(out)]) == 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            errors: list[str] = []
            requests: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            page.locator(".main-svg").first.wait_for(timeout=20_000)
            assert errors == []
            assert [r for r in requests if not r.startswith(("file:", "data:", "blob:"))] == []
            assert page.locator(".js-plotly-plot").count() == 2  # steps and the waterfall
            steps_chart, waterfall = page.locator(".js-plotly-plot").nth(0), page.locator(".js-plotly-plot").nth(1)
            assert steps_chart.locator(".barlayer .trace").count() == 7  # one stacked trace per category
            assert waterfall.locator(".waterfalllayer .point").count() == 3  # step now, DATA001, after
            assert "DATA001" in page.locator("table").nth(1).inner_text()
        finally:
            browser.close()


def test_page_does_not_follow_the_process_plotly_template() -> None:
    """Importing streamlit (the dashboard, or a notebook) makes its template plotly's default; the report's charts
    name their own, so the page is the same in any process (it embeds the template's colours)."""
    import plotly.io as pio

    source = SAMPLES / "synthetic" / "healthy.json.gz"
    analysis = analyze_job(load_job(source), str(source))
    plain = render_html(analysis)
    before = pio.templates.default
    pio.templates.default = "plotly_dark"
    try:
        themed = render_html(analysis)
    finally:
        pio.templates.default = before
    assert '"template":' in plain
    assert themed == plain
