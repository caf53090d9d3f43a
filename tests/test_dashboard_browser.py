"""End to end in a real browser: ``mlprof dashboard`` served on a free port, headless Chromium.

Clicks a run's row in the runs table (the table is a canvas grid; its accessibility
table gives the row index, the click goes to the row's selection box) and checks that
the run page shows the ranked findings and draws its charts; opens the Kernels tab,
the Timeline tab with a finding's band on it, and the Runs page at 1366 px. Screenshots
are test artefacts: kept in the test's tmp_path (the path is printed) and copied into
``$MLPROF_SCREENSHOTS`` when that is set. Skips only when Chromium is missing.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mlprof
from mlprof.dashboard.views.runs import FIRST_COLUMNS

from conftest import SAMPLES

STARVED = SAMPLES / "synthetic" / "data_starvation.json.gz"
"""A synthetic GPU trace (H100, 6 steps, DataLoader waits) with known timings: bundled, so a clean clone runs
these tests; the AppTests in test_dashboard.py cover the same pages on real traces too (marked external)."""


def _json_truth() -> tuple[str, int]:
    """The kernel with the most GPU time and the longest ProfilerStep, read from the trace JSON itself."""
    events = json.loads(gzip.decompress(STARVED.read_bytes()))["traceEvents"]
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "kernel":
            totals[e["name"]] = totals.get(e["name"], 0.0) + e["dur"]
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    longest = max(steps, key=lambda e: e["dur"])["name"].split("#")[1]
    return max(totals, key=lambda k: totals[k]), int(longest)


CHROMIUM = "/usr/bin/chromium"
ROW_PX = 35
ROW_MARKER_PX = 40
"""Width of the grid's row-selection column, in CSS pixels (a little more than Streamlit draws)."""
"""Row height of Streamlit's data grid (header row included), in CSS pixels."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _keep(shot: Path) -> None:
    """Copy a screenshot into ``$MLPROF_SCREENSHOTS`` (an artefact folder for CI), when set."""
    target = os.environ.get("MLPROF_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)
    print(f"screenshot: {shot}")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    tmp_path = tmp_path_factory.mktemp("browser")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian package 'chromium')")
    from mlprof.store import ingest

    env = dict(os.environ, MLPROF_CACHE=str(tmp_path / "cache"))
    env.pop("MLPROF_STORE", None)
    db = str(tmp_path / "runs.db")
    old_cache = os.environ.get("MLPROF_CACHE")
    os.environ["MLPROF_CACHE"] = env["MLPROF_CACHE"]
    try:
        ids = {
            "starved": ingest(STARVED, store_url=db).run_id,
            "bad": ingest(SAMPLES / "scenarios" / "recorded" / "data_starvation" / "bad", store_url=db).run_id,
        }
    finally:
        if old_cache is None:
            os.environ.pop("MLPROF_CACHE")
        else:
            os.environ["MLPROF_CACHE"] = old_cache
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlprof", "dashboard", "--store", db, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                out = server.stdout.read().decode() if server.stdout else ""
                pytest.fail(f"mlprof dashboard did not come up: {out[-1000:]}")
            time.sleep(0.3)
        yield url, ids
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser(dashboard: tuple[str, dict[str, int]]) -> Iterator[Any]:
    """One headless Chromium for the module (each test opens its own page): launching it is seconds."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_click_from_runs_table_into_a_run(dashboard: tuple[str, dict[str, int]], browser: Any, tmp_path: Path) -> None:
    url, ids = dashboard
    shot = tmp_path / "run_page.png"
    page = browser.new_page(viewport={"width": 1400, "height": 2600})
    try:
        page.goto(url + "/", timeout=60_000)
        page.get_by_role("heading", name="Runs", exact=True).wait_for(timeout=60_000)
        grid = page.locator('[data-testid="stDataFrame"]').first
        grid.wait_for(timeout=30_000)
        cell = page.locator('[data-testid="stDataFrame"] [role="gridcell"]', has_text="data_starvation")
        cell.first.wait_for(state="attached", timeout=30_000)
        row_index = int(cell.first.locator("xpath=..").get_attribute("aria-rowindex") or "0")
        assert row_index >= 2  # row 1 is the header
        box = grid.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + 16, box["y"] + ROW_PX * (row_index - 1) + ROW_PX / 2)

        page.get_by_role("heading", name="Ranked fixes").wait_for(timeout=60_000)
        assert f"page=run&run={ids['starved']}" in page.url
        page.get_by_role("heading", name=f"Run {ids['starved']}: data_starvation").wait_for()
        first = page.locator('[data-testid="stExpander"]').first
        top = mlprof.analyze(STARVED).findings.iloc[0]
        assert f"1. {top.rule} {top.expected_speedup:.2f}x [{top.severity}]" in first.inner_text()
        # the top finding's fix code is shown with it
        assert top.fix.splitlines()[0].strip()[:20] in page.locator('[data-testid="stCode"]').first.inner_text()
        # the charts are drawn: each has plotly's SVG with its title and at least one trace
        charts = page.locator(".js-plotly-plot")
        charts.nth(1).locator(".main-svg").first.wait_for(timeout=60_000)
        titles = [charts.nth(i).locator(".gtitle").first.text_content() for i in range(charts.count())]
        assert titles[:2] == [
            "Cumulative effect of the ranked fixes (ms per step)",
            "Where each step's time goes",
        ]
        assert charts.nth(1).locator("g.trace.bars").count() == 7  # one stacked series per category
        page.wait_for_timeout(500)
        page.screenshot(path=str(shot))
    finally:
        page.close()
    assert shot.stat().st_size > 10_000
    _keep(shot)


def test_kernel_tab_and_timeline_with_a_finding_band(
    dashboard: tuple[str, dict[str, int]], browser: Any, tmp_path: Path
) -> None:
    url, ids = dashboard
    page = browser.new_page(viewport={"width": 1366, "height": 1400})
    try:
        page.goto(f"{url}/?page=run&run={ids['starved']}", timeout=60_000)
        top_kernel, longest = _json_truth()
        page.get_by_role("heading", name="Ranked fixes").wait_for(timeout=60_000)
        page.get_by_role("tab", name="Kernels").click()
        grid = page.locator('[data-testid="stDataFrame"]').filter(has_text="% of kernel time")
        grid.first.wait_for(timeout=30_000)
        # the kernel with the most GPU time in the trace (summed from its JSON) is the first row
        cell = grid.first.locator('[role="gridcell"]', has_text=top_kernel[:60])
        cell.first.wait_for(state="attached", timeout=30_000)
        assert cell.first.locator("xpath=..").get_attribute("aria-rowindex") == "2"
        page.wait_for_timeout(500)
        shot = tmp_path / "run_page_kernels.png"
        page.screenshot(path=str(shot))
        _keep(shot)

        page.get_by_role("tab", name="Timeline").click()
        chart = page.locator(".js-plotly-plot").filter(has_text=f"Timeline of step {longest}")
        chart.first.locator(".main-svg").first.wait_for(timeout=60_000)
        labels = chart.first.locator(".annotation-text")
        labels.first.wait_for(timeout=30_000)
        texts = {labels.nth(i).text_content() for i in range(labels.count())}
        assert "DATA001" in texts
        # a drawn band: plotly draws each vrect as a path in the shape layer (the step's shading and DATA001's)
        assert chart.first.locator(".shapelayer path").count() >= 2
        page.wait_for_timeout(500)
        shot = tmp_path / "run_page_timeline.png"
        chart.first.screenshot(path=str(shot))
        _keep(shot)
    finally:
        page.close()


def test_runs_page_columns_fit_1366px(dashboard: tuple[str, dict[str, int]], browser: Any, tmp_path: Path) -> None:
    url, _ids = dashboard
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    try:
        page.goto(url + "/", timeout=60_000)
        page.get_by_role("heading", name="Runs", exact=True).wait_for(timeout=60_000)
        grid = page.locator('[data-testid="stDataFrame"]').first
        grid.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        # the grid is a canvas: its visible width is measured here, the columns' widths are the page's
        visible = page.evaluate(
            "() => document.querySelector('[data-testid=\"stDataFrame\"] .dvn-scroller').clientWidth"
        )
        needed = sum(FIRST_COLUMNS.values()) + ROW_MARKER_PX
        assert needed <= visible, (needed, visible)
        header = page.locator('[data-testid="stDataFrame"] [role="columnheader"]')
        assert [header.nth(i).text_content() for i in range(6)] == list(FIRST_COLUMNS)
        shot = tmp_path / "runs_page_1366.png"
        page.screenshot(path=str(shot))
        _keep(shot)
    finally:
        page.close()
