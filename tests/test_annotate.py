"""mlprof annotate: the copy loads in mlprof's reader and in HTA, shows every finding, keeps the original."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_annotate_arrows import _arrows_checked

from mlprof.analysis import Analysis, analyze_job
from mlprof.annotate.events import FINDING_CAT, FINDINGS_PROCESS
from mlprof.cli import main
from mlprof.trace.loader import load_job, load_trace
from mlprof.trace.model import TABLES

from conftest import SAMPLES, external

KINETO_0 = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"
NS_TRACE = "hta/tests/data/ns_resolution_trace/rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz"
UNCHANGED_TABLES = [t for t in TABLES if t not in ("host", "flows", "threads")]
"""The annotation adds host-side slices, flows and track names; device, runtime, memory and step tables stay."""


def _events(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:  # type: ignore[operator]
        events: list[dict[str, Any]] = json.load(fh)["traceEvents"]
    return events


def _annotate(source: Path, out: Path) -> tuple[Analysis, list[dict[str, Any]]]:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert main(["annotate", str(source), "-o", str(out)]) == 0
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest  # the original is untouched
    return analyze_job(load_job(source), str(source)), _events(out)


def _check_every_finding_shown(analysis: Analysis, events: list[dict[str, Any]]) -> None:
    ours = [e for e in events if e.get("cat") == FINDING_CAT or e.get("ph") == "M"]
    pid = next(e["pid"] for e in ours if e.get("name") == "process_name" and e["args"]["name"] == FINDINGS_PROCESS)
    assert not any(e.get("pid") == pid for e in events if e not in ours)  # a process of its own
    device = {"kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "Memset"}
    kernels: dict[tuple[Any, Any], list[tuple[float, float]]] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in device:
            kernels.setdefault((e["pid"], e["tid"]), []).append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    steps = analysis.ranks[0].trace.steps
    for i, f in enumerate(analysis.findings, 1):
        slices = [e for e in ours if e.get("ph") == "X" and e["tid"] == i]
        assert slices and all(e["args"]["rule"] == f.rule and e["pid"] == pid for e in slices)
        expected = len(f.time_ranges_ns) or int(steps["step"].isin(f.steps).sum()) or 1
        assert len(slices) == expected
        if f.time_ranges_ns:
            got = [(e["ts"], e["ts"] + e["dur"]) for e in slices]  # float µs here; exact ns via the reader below
            assert got == [
                (pytest.approx(a / 1000, abs=0.5), pytest.approx(b / 1000, abs=0.5)) for a, b in f.time_ranges_ns
            ]
        assert slices[0]["args"]["expected_speedup"] == pytest.approx(f.expected_speedup, abs=1e-4)
        names = [e for e in ours if e.get("name") == "thread_name" and e["tid"] == i]
        assert names and names[0]["args"]["name"].startswith(f"#{i} {f.rule} {f.category}")
        assert any(e.get("ph") == "i" and e["name"] == f"{f.rule}: {f.title}" for e in ours)
    starts = {e["id"]: e for e in ours if e.get("ph") == "s"}
    ends = [e for e in ours if e.get("ph") == "f"]
    assert len(starts) == len(ends)
    for end in ends:  # each arrow ends inside a kernel on that kernel's own track
        assert end["id"] in starts and end["bp"] == "e"
        spans = kernels.get((end["pid"], end["tid"]), [])
        assert any(a <= end["ts"] <= b for a, b in spans)


def test_kineto_annotated_copy_shows_every_finding(tmp_path: Path) -> None:
    source = external(KINETO_0)
    out = tmp_path / "annotated.json.gz"
    analysis, events = _annotate(source, out)
    assert sorted(f.rule for f in analysis.findings) == ["AMP001", "DATA001", "FUSE001", "LAUNCH001"]
    _check_every_finding_shown(analysis, events)
    arrows = _arrows_checked(source, out)  # each lands on a kernel the finding is about, forward in time
    assert arrows == {"DATA001": 5, "FUSE001": 5, "LAUNCH001": 6, "AMP001": 6}  # ranges, chains, steps, steps
    # mlprof's reader: the device side, runtime, memory and steps are the original's; the analysis too.
    original, copy = load_trace(source), load_trace(out)
    for name in UNCHANGED_TABLES:
        assert copy.table(name).equals(original.table(name)), name
    shown = copy.host[copy.host["cat"] == FINDING_CAT]
    data001 = shown[shown["name"] == "DATA001 data_starvation 1.30x"]
    assert list(zip(data001["ts"], data001["end"], strict=True)) == analysis.findings[0].time_ranges_ns  # exact ns
    again = analyze_job([copy], str(out))
    assert again.category_totals() == analysis.category_totals()
    assert [(f.rule, f.time_lost_ns_per_step) for f in again.findings] == [
        (f.rule, f.time_lost_ns_per_step) for f in analysis.findings
    ]


def _hta(path: Path) -> Any:
    from hta.trace_analysis import TraceAnalysis

    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    try:
        return TraceAnalysis(trace_files={0: str(path)}, trace_dir=str(path.parent), include_last_profiler_step=True)
    finally:
        logging.disable(logging.NOTSET)


def test_annotated_copy_loads_in_hta(tmp_path: Path) -> None:
    pytest.importorskip("hta.trace_analysis")
    source = external(KINETO_0)
    (tmp_path / "a").mkdir()
    out = tmp_path / "a" / "annotated.json.gz"
    analysis, _ = _annotate(source, out)
    ours, theirs = _hta(out), _hta(source)
    pd_ours = ours.get_temporal_breakdown(visualize=False)
    pd_theirs = theirs.get_temporal_breakdown(visualize=False)
    assert pd_ours.equals(pd_theirs)  # HTA's own figures are not disturbed by the annotation
    symbols = set(map(str, ours.t.symbol_table.get_sym_table()))
    for f in analysis.findings:
        assert f"{f.rule} {f.category} {f.expected_speedup:.2f}x" in symbols


def test_ns_timestamps_survive_byte_for_byte(tmp_path: Path) -> None:
    source = external(NS_TRACE)  # float-µs timestamps with ns digits, which a float64 cannot hold
    out = tmp_path / "ns.json"
    analysis, events = _annotate(source, out)
    assert analysis.findings
    _check_every_finding_shown(analysis, events)
    original, copy = load_trace(source), load_trace(out)
    for name in UNCHANGED_TABLES:
        assert copy.table(name).equals(original.table(name)), name
    # Every top-level value as written; the original events, as written, open the new traceEvents array.
    before = msgspec.json.decode(gzip.decompress(source.read_bytes()), type=dict[str, msgspec.Raw])
    after = msgspec.json.decode(out.read_bytes(), type=dict[str, msgspec.Raw])
    assert list(after) == list(before)
    for key, value in before.items():
        if key != "traceEvents":
            assert bytes(after[key]) == bytes(value), key
    original_events = bytes(before["traceEvents"]).rstrip()[:-1].rstrip()
    assert bytes(after["traceEvents"]).startswith(original_events + b",")
    # and the whole file is the original with the new events inserted before the array's closing bracket
    raw_before, raw_after = gzip.decompress(source.read_bytes()), out.read_bytes()
    cut = raw_before.index(original_events) + len(original_events)
    tail = raw_before[cut:].lstrip()
    assert raw_after.startswith(raw_before[:cut] + b",") and raw_after.endswith(tail) and tail.startswith(b"]")
    assert b'"ts": 1712195495519689.047' in bytes(after["traceEvents"])  # ns digits a float64 would round


def test_findings_without_time_ranges_use_their_steps(tmp_path: Path) -> None:
    source = SAMPLES / "synthetic" / "launch_bound.json.gz"
    analysis, events = _annotate(source, tmp_path / "lb.json.gz")
    launch = next(f for f in analysis.findings if f.rule == "LAUNCH001")
    assert launch.time_ranges_ns == [] and len(launch.steps) == 5
    _check_every_finding_shown(analysis, events)


def test_run_folder_annotated_rank_by_rank(tmp_path: Path) -> None:
    source = SAMPLES / "scenarios" / "recorded" / "comm_no_overlap" / "bad"
    out = tmp_path / "annotated"
    assert main(["annotate", str(source), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "trace.rank0.json.gz", "trace.rank1.json.gz"]
    original, copy = load_job(source), load_job(out)
    for a, b in zip(original, copy, strict=True):
        assert a.meta.rank == b.meta.rank
        for name in UNCHANGED_TABLES:
            assert b.table(name).equals(a.table(name)), name
    rules = {f.rule for f in analyze_job(original, str(source)).findings}
    assert rules == {"FUSE002"}
    for rank_file in ("trace.rank0.json.gz", "trace.rank1.json.gz"):
        shown = {e["args"]["rule"] for e in _events(out / rank_file) if e.get("cat") == FINDING_CAT and e["ph"] == "X"}
        assert shown == rules


def test_never_overwrites_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.json.gz"
    original = (SAMPLES / "synthetic" / "data_starvation.json.gz").read_bytes()
    trace.write_bytes(original)
    assert main(["annotate", str(trace), "-o", str(trace)]) == 2
    assert "would write over or into the input" in capsys.readouterr().err
    assert main(["annotate", str(tmp_path), "-o", str(tmp_path / "inside")]) == 2
    assert trace.read_bytes() == original and sorted(tmp_path.iterdir()) == [trace]


def test_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["annotate", str(SAMPLES / "synthetic" / "nsys_pytorch_like.sqlite"), "-o", str(tmp_path / "x")]) == 2
    assert "Nsight Systems export" in capsys.readouterr().err
    garbage = tmp_path / "g.json"
    garbage.write_text('{"traceEvents": [{"ph": "X", "ts": 1, "dur": 2}')
    assert main(["annotate", str(garbage), "-o", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlprof: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.json").exists()


def test_an_output_folder_that_cannot_be_made_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder of rank traces annotated under a path whose parent is a file: exit 2, one line, nothing written."""
    source = SAMPLES / "scenarios" / "recorded" / "unfused_optimizer" / "bad"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["annotate", str(source), "-o", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create the folder" in err
    assert sorted(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "x"
