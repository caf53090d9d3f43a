"""Every renderer renders a Report (or its JSON read back) the same way, on every kind of input.

Inputs, all built from bundled files (no ``../shared``): an empty trace, a CPU-only trace,
a stepless trace, a two-rank job and a GPU counters file alone. The renderers are under
test here, so the report's own JSON is the truth they must show.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import mlprof
from mlprof.cli import main
from mlprof.report.formats import FORMATS, choose
from mlprof.results import Report

from conftest import SAMPLES

ROOT = Path(__file__).resolve().parents[1]
SYNC = SAMPLES / "synthetic" / "sync_point.json.gz"
COUNTERS = ROOT / "tests" / "data" / "counters" / "nvidia_smi_units.csv"
STEP_NAMES = ("ProfilerStep#", "enumerate(DataLoader)", "Optimizer.step")
KINDS = ("empty", "cpu_only", "stepless", "multi_rank", "counters_only")


def _input(kind: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path = folder / "empty.json"
        path.write_text('{"traceEvents": []}')
        return path
    if kind == "cpu_only":
        return SAMPLES / "synthetic" / "cpu_only.json.gz"
    if kind == "counters_only":
        return COUNTERS
    doc = json.loads(gzip.decompress(SYNC.read_bytes()))
    if kind == "stepless":
        doc["traceEvents"] = [e for e in doc["traceEvents"] if not str(e.get("name", "")).startswith(STEP_NAMES)]
        path = folder / "stepless.json.gz"
        path.write_bytes(gzip.compress(json.dumps(doc).encode()))
        return path
    job = folder / "job"
    job.mkdir()
    for rank in (0, 1):
        copy = dict(doc, distributedInfo={"rank": rank, "world_size": 2})
        (job / f"rank-{rank}.json.gz").write_bytes(gzip.compress(json.dumps(copy).encode()))
    return job


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Report]:
    folder = tmp_path_factory.mktemp("inputs")
    return {kind: mlprof.analyze(_input(kind, folder / kind), jobs=1, config=ROOT / "pyproject.toml") for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_renderer_on_every_kind_of_input(reports: dict[str, Report], kind: str, fmt: str) -> None:
    report = reports[kind]
    out = FORMATS[fmt].render(report)
    assert FORMATS[fmt].render(Report.from_json(report.to_json())) == out  # the JSON alone renders the same
    data = report.data
    if fmt == "json":
        assert json.loads(out) == data
        return
    assert report.path and report.path.split("/")[-1] in out
    for finding in data["findings"]:
        assert finding["rule"] in out
    if kind == "counters_only":
        assert data["trace"] is None and data["counters"]["rows"] > 0
        assert str(data["counters"]["rows"]) in out.replace(",", "")
        return
    median = data["breakdown"]["step_time_ms"]["median"]
    if median is not None:
        assert f"{median:.2f}" in out
    if kind == "multi_rank":
        assert data["trace"]["ranks"] == [0, 1]
    if kind in ("stepless", "multi_rank"):
        assert data["findings"], "the sync trace has findings with or without steps"


def test_format_follows_the_output_suffix_unless_named() -> None:
    assert choose(None, Path("r.json")).name == "json"
    assert choose(None, Path("r.MD")).name == "markdown"
    assert choose(None, Path("r.html")).name == "html"
    assert choose(None, Path("r.out")).name == "text"
    assert choose(None, None).name == "text"
    assert choose("markdown", Path("r.json")).name == "markdown"


def test_render_a_saved_report_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "report.json"
    assert main(["analyze", str(SYNC), "-o", str(saved)]) == 0  # .json: the JSON report, no --format
    report = Report.from_json(saved)
    assert report == mlprof.analyze(SYNC)
    for suffix, start in ((".html", "<!DOCTYPE html>"), (".md", "## mlprof")):
        out = tmp_path / f"from_json{suffix}"
        assert main(["render", str(saved), "-o", str(out)]) == 0
        assert out.read_text().startswith(start)
        direct = tmp_path / f"direct{suffix}"
        argv = (
            ["report", str(SYNC), "-o", str(direct)] if suffix == ".html" else ["analyze", str(SYNC), "-o", str(direct)]
        )
        assert main(argv) == 0
        assert out.read_text() == direct.read_text()  # the saved report renders as the analysis does
    capsys.readouterr()
    # An existing file is left alone without --force, replaced with it.
    target = tmp_path / "from_json.html"
    target.write_text("mine")
    assert main(["render", str(saved), "-o", str(target)]) == 2
    assert "--force" in capsys.readouterr().err and target.read_text() == "mine"
    assert main(["render", str(saved), "-o", str(target), "--force"]) == 0
    assert target.read_text().startswith("<!DOCTYPE html>")
    # Not a report: one line, exit 2.
    assert main(["render", str(SYNC), "-o", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlprof: error:") and err.count("\n") == 1


@pytest.mark.parametrize(
    "doc",
    [
        {"schema_version": "1.5"},  # the version alone
        {"schema_version": "1.5", "trace": {"path": "x"}, "findings": [{"rule": 3}], "plan": 5},  # wrong types
    ],
)
def test_render_of_an_incomplete_report_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: dict[str, object]
) -> None:
    # A JSON object that passes the schema check but is not a whole report: exit 2 with one line (was exit 3,
    # KeyError 'trace'), and nothing written.
    saved = tmp_path / "partial.json"
    saved.write_text(json.dumps(doc))
    for fmt in ("text", "markdown", "html"):  # (json re-writes the JSON as read)
        out = tmp_path / f"out.{fmt}"
        assert main(["render", str(saved), "--format", fmt, "-o", str(out)]) == 2, fmt
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a complete mlprof report" in err and "Traceback" not in err
        assert not out.exists()
