"""Rebuild the README's sample report and the Run page screenshot from a bundled trace.

    python docs/make_assets.py            # both
    python docs/make_assets.py --text     # only the sample report (no browser needed)

The sample report is ``mlprof analyze sample_traces/synthetic/data_starvation.json.gz``
at 100 columns: written to ``docs/sample-report.txt`` and copied into the README
between the ``sample-report`` markers (its first lines). The screenshot is the Run page
of that trace ingested into a temporary store, served by ``mlprof dashboard`` and taken
with headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright, as the
browser tests do) into ``docs/img/run-page.png``. Nothing outside ``docs/`` and the
README block is written; the store and cache live in a temporary folder.
``tests/test_readme_sample.py`` regenerates the text and fails when the README or
``docs/sample-report.txt`` differ from it.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "sample_traces" / "synthetic" / "data_starvation.json.gz"
TEXT = ROOT / "docs" / "sample-report.txt"
SHOT = ROOT / "docs" / "img" / "run-page.png"
README = ROOT / "README.md"
START, END = "<!-- sample-report:start -->", "<!-- sample-report:end -->"
HEAD_LINES = 12
"""The README shows the report's first lines (the verdict and the trace's summary), then its findings table."""
CHROMIUM = "/usr/bin/chromium"


def sample_report() -> str:
    from rich.console import Console

    import mlprof
    from mlprof.report.text import render_text

    report = mlprof.analyze(str(TRACE.relative_to(ROOT)))
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    render_text(report, console)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def readme_block(text: str) -> str:
    """The README's sample block for the report ``text``: its first lines, then its findings table."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Findings, ranked")), len(lines))
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("└")), len(lines) - 1)
    shown = "\n".join([*lines[:HEAD_LINES], "...", *lines[start : end + 1]])
    return f"{START}\n```text\n$ mlprof analyze {TRACE.relative_to(ROOT)}\n{shown}\n...\n```\n{END}"


def write_text() -> None:
    text = sample_report()
    TEXT.write_text(text)
    readme = README.read_text()
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        _, tail = rest.split(END, 1)
        README.write_text(head + readme_block(text) + tail)
    print(f"wrote {TEXT.relative_to(ROOT)} and the README block")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_screenshot() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MLPROF_CACHE=str(Path(tmp) / "cache"))
        db = str(Path(tmp) / "runs.db")
        subprocess.run(
            [sys.executable, "-m", "mlprof", "ingest", str(TRACE), "--store", db, "--name", "data_starvation"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mlprof", "dashboard", "--store", db, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
                    raise SystemExit("mlprof dashboard did not come up")
                time.sleep(0.3)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
                try:
                    page = browser.new_page(viewport={"width": 1366, "height": 1100})
                    page.goto(f"{url}/?page=run&run=1", timeout=60_000)
                    page.get_by_role("heading", name="Ranked fixes").wait_for(timeout=60_000)
                    page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
                    page.wait_for_timeout(1500)
                    SHOT.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(SHOT))
                finally:
                    browser.close()
        finally:
            server.terminate()
            server.wait(timeout=20)
    print(f"wrote {SHOT.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", action="store_true", help="only the sample report")
    args = parser.parse_args()
    os.chdir(ROOT)
    write_text()
    if not args.text:
        write_screenshot()


if __name__ == "__main__":
    main()
