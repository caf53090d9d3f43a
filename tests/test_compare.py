"""mlprof compare on real pairs: the kineto num_workers 0 -> 4 fix, HTA's A100/V100 TraceDiff pair,
and mlprof's own recorded bad/fixed scenario folders."""

from __future__ import annotations

import gzip
import json
import logging
import statistics
import warnings
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from mlprof.analysis import Analysis, analyze_job
from mlprof.cli import main
from mlprof.compare import Comparison, compare_analyses
from mlprof.report.compare_report import comparison_json, comparison_text
from mlprof.trace.loader import load_job

from conftest import SAMPLES, external

KINETO_0 = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"
KINETO_4 = "pytorch__kineto/resnet50_num_workers_4/worker0.1623213129365.pt.trace.json.gz"
DIFF = "hta/tests/data/trace_diff"
RECORDED = SAMPLES / "scenarios" / "recorded"


def _analysis(path: Path, steps: str | None = None) -> Analysis:
    return analyze_job(load_job(path), str(path), steps)


@pytest.fixture(scope="module")
def kineto() -> Comparison:
    return compare_analyses(_analysis(external(KINETO_0)), _analysis(external(KINETO_4)))


def _raw_steps(path: Path) -> dict[int, float]:
    """step -> ms from the raw JSON (``ProfilerStep#N`` events, each cut at the next step's start)."""
    with gzip.open(path, "rt") if path.name.endswith(".gz") else open(path) as fh:
        events = json.load(fh)["traceEvents"]
    found: dict[int, tuple[float, float]] = {}
    for e in events:
        if str(e.get("name", "")).startswith("ProfilerStep#") and e.get("ph") == "X":
            found.setdefault(int(e["name"].split("#")[1]), (float(e["ts"]), float(e["dur"])))
    order = sorted(found, key=lambda k: found[k][0])
    out = {}
    for i, k in enumerate(order):
        ts, dur = found[k]
        end = min(ts + dur, found[order[i + 1]][0]) if i + 1 < len(order) else ts + dur
        out[k] = (end - ts) / 1000
    return out


def test_kineto_achieved_is_the_steady_median_step(kineto: Comparison) -> None:
    """Achieved = the change of the median steady step, from the raw JSON: nw0 keeps its six steps, nw4 sets
    aside its warm-up step 16 (160 ms) and its 206.5 ms outlier step 21."""
    base = _raw_steps(external(KINETO_0))
    new = _raw_steps(external(KINETO_4))
    base_median = statistics.median(base.values())
    new_median = statistics.median(new[k] for k in (17, 18, 19, 20))
    s = kineto.step
    assert (s.base.n, s.new.n) == (6, 4)
    assert s.base_ms == pytest.approx(base_median, abs=1e-6)
    assert s.new_ms == pytest.approx(new_median, abs=1e-6)
    assert s.speedup == pytest.approx(base_median / new_median, rel=1e-9)  # 1.244x
    assert s.within_noise is False and s.verdict == "faster"
    assert any("16 (warm-up, 160.08 ms), 21 (outlier, 206.51 ms)" in n for n in kineto.notes)


def test_kineto_change_is_attributed_to_data_loading(kineto: Comparison) -> None:
    total = sum(c.change_ms for c in kineto.categories)
    assert total == pytest.approx(kineto.step.new.mean_ms - kineto.step.base.mean_ms, abs=1e-6)  # exactly
    main_cat = kineto.main_category
    assert main_cat is not None and main_cat.category == "idle_data"
    assert main_cat.base_ms == pytest.approx(35.504, abs=0.001)
    assert main_cat.new_ms < 0.1  # steady nw4 steps barely wait for data
    assert kineto.categories[0].category == "idle_data"  # the largest move of all
    assert kineto.freed[0].category == "idle_data"
    assert "compute" in [c.category for c in kineto.grew]  # some freed time reappeared as GPU work


def test_kineto_data_starvation_prediction_next_to_the_measured_step(kineto: Comparison) -> None:
    """DATA001 predicted 1.29x (the replay); the steady median step improved 1.24x, 3.9% below (the issue asks
    for 15%). Achieved is never the drop in the very cause the rule claimed (35.5 ms of data.loader -> 0,
    which would read 1.30x and confirm itself)."""
    resolved = {p.rule: p for p in kineto.findings.resolved}
    assert "DATA001" in resolved and resolved["DATA001"].category == "data_starvation"
    pva = {p.rule: p for p in kineto.predicted}["DATA001"]
    assert pva.status == "resolved" and pva.acted_on
    assert pva.freed_categories == ("idle_data",)
    assert pva.predicted_speedup == pytest.approx(1.2923, abs=1e-4)
    assert pva.predicted_saving_ms == pytest.approx(34.598, abs=0.001)
    assert abs(pva.achieved_speedup / pva.predicted_speedup - 1) < 0.05
    assert pva.achieved_speedup == pytest.approx(kineto.step.speedup, rel=1e-12)
    assert pva.achieved_speedup == pytest.approx(1.2443, abs=1e-4)
    assert pva.achieved_saving_ms == pytest.approx(kineto.step.base_ms - kineto.step.new_ms, abs=1e-9)
    # Only DATA001 was acted on (resolved): the change as a whole was predicted to give DATA001's own 1.29x.
    assert kineto.predicted_together == pytest.approx(pva.predicted_speedup, abs=1e-4)
    # Fixes the change did not touch were not acted on: no achieved figure is shown for them.
    # LAUNCH001's replayed saving shrank (41.6 -> 15.5 ms) because the host is no longer held by the
    # DataLoader, not because launches were fixed: a finding that only changed is not counted as acted on.
    for rule, status in (("LAUNCH001", "changed"), ("AMP001", "changed"), ("FUSE001", "unchanged")):
        p = {p.rule: p for p in kineto.predicted}[rule]
        assert p.status == status and not p.acted_on


def test_kineto_steps_option_still_overrides(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    rc = main(
        ["compare", str(external(KINETO_0)), str(external(KINETO_4)), "--steps", "16-21", "-f", "json", "-o", str(out)]
    )
    assert rc == 0
    d = json.loads(out.read_text())
    base, new = _raw_steps(external(KINETO_0)), _raw_steps(external(KINETO_4))
    assert (d["step_time_ms"]["base_steps"], d["step_time_ms"]["new_steps"]) == (6, 6)
    assert d["step_time_ms"]["new"] == pytest.approx(statistics.median(new.values()), abs=1e-5)  # 125.09 ms
    assert d["step_time_ms"]["new_mean"] == pytest.approx(statistics.mean(new.values()), abs=1e-5)  # 142.75 ms
    assert d["step_time_ms"]["base"] == pytest.approx(statistics.median(base.values()), abs=1e-5)
    assert d["new"]["set_aside"] == []
    assert d["explained_by"] == "idle_data"


def test_kineto_json_contract(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    assert main(["compare", str(external(KINETO_0)), str(external(KINETO_4)), "--format", "json", "-o", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["schema_version"] == "2.0"
    s = d["step_time_ms"]
    assert s["statistic"] == "median over the steady steps"
    assert s["speedup"] == pytest.approx(1.2443, abs=1e-4) and s["within_noise"] is False
    assert s["noise_pct"] == pytest.approx(2 * (s["base_spread_pct"] ** 2 + s["new_spread_pct"] ** 2) ** 0.5, abs=2e-3)
    assert [x["step"] for x in d["new"]["set_aside"]] == [16, 21]
    assert set(d["findings"]) >= {"resolved", "new", "changed"}
    for status in ("resolved", "new", "changed"):
        assert all("category" in f for f in d["findings"][status])
    assert [f["rule"] for f in d["findings"]["resolved"]] == ["DATA001"]
    pva = {p["rule"]: p for p in d["predicted_vs_achieved"]}
    assert pva["DATA001"]["predicted_speedup"] == pytest.approx(1.2923, abs=1e-4)
    assert pva["DATA001"]["achieved_speedup"] == pytest.approx(1.2443, abs=1e-4)
    assert d["gates"] is None
    went = d["where_time_went"]
    assert went["freed"][0]["category"] == "idle_data"
    assert sum(c["change_ms"] for c in d["categories"]) == pytest.approx(went["mean_step_change_ms"], abs=1e-4)
    assert went["mean_step_change_ms"] == pytest.approx(s["new_mean"] - s["base_mean"], abs=1e-4)


def test_kineto_markdown_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.md"
    assert main(["compare", str(external(KINETO_0)), str(external(KINETO_4)), "-f", "markdown", "-o", str(out)]) == 0
    md = out.read_text()
    assert md.startswith(f"## mlprof compare: `{Path(KINETO_0).name}` -> `{Path(KINETO_4).name}`")
    assert "/work/" not in md and str(external(KINETO_0).parent) not in md  # no absolute path to paste into a PR
    assert "| DATA001 | resolved | 1.29x | 1.24x | 34.60 -> 0.00 | idle_data |" in md
    assert "| LAUNCH001 | changed | 1.37x | - |" in md
    assert "Mostly **idle_data** (-35.49 ms per step" in md
    assert main(["compare", str(external(KINETO_0)), str(external(KINETO_4))]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "steady step (median): 152.47 -> 122.53 ms (-19.6%, faster, 1.24x) over 6 / 4 steady steps" in text
    assert "resolved DATA001 34.60 -> 0.00 ms/step" in text


@pytest.mark.parametrize("width", [80, 160])
def test_kineto_text_reads_at_80_and_160_columns(
    kineto: Comparison, width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every line fits; titles, paths and table headers are whole (words never cut, no 3-letter columns)."""
    text = comparison_text(kineto, width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) < width
    flat = " ".join(text.split())
    d = comparison_json(kineto)
    for status, found in d["findings"].items():
        for x in found:  # each title whole, its words in order, next to its rule and status
            assert " ".join(x["title"].split()) in flat, x["rule"]
            assert f"{status} {x['rule']}" in flat
    for side in ("base", "new"):  # a path cut only after a "/", every character kept
        path = d[side]["path"]
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  {side}:"))
        below = []
        for line in lines[at + 1 :]:
            if not line.startswith(" " * 8):
                break
            below.append(line.strip())
        assert path in lines[at] or "".join(below) == path
    header = "  category           base ms    new ms    change   share"
    assert header in lines and "  fix       status      predicted  achieved  time lost ms/step" in lines
    rows = d["kernels"]["top"][:10]
    kernel_lines = lines[lines.index("  kernels whose time changed most (per step: count, ms)") + 1 :][: len(rows)]
    for row, line in zip(rows, kernel_lines, strict=True):
        name = row["name"]
        shown = line[35:]  # after the change and counts columns
        assert shown == name or (shown.endswith("...") and name.startswith(shown[:-3]) and len(shown) >= 40), line
    # the verdict (the achieved change) within the first lines, at either width
    assert any("152.47 -> 122.53 ms (-19.6%, faster, 1.24x)" in line for line in lines[:8])
    if width != 80:
        return
    monkeypatch.setenv("COLUMNS", str(width))  # and the CLI fits the terminal it is given
    assert main(["compare", str(external(KINETO_0)), str(external(KINETO_4))]) == 0
    assert capsys.readouterr().out == text


SIDNB13 = (
    "sidnb13__torch-profiling-tutorial/dc3b0e7228dd_851.1752215573993169006.pt.trace.json",
    "sidnb13__torch-profiling-tutorial/dc3b0e7228dd_851.1752215574025896717.pt.trace.json",
    "sidnb13__torch-profiling-tutorial/dcb0aa1a78e7_4399.1752181589589738346.pt.trace.json",
    "sidnb13__torch-profiling-tutorial/dcb0aa1a78e7_4399.1752181589621105859.pt.trace.json",
)


@pytest.fixture(scope="module")
def sidnb13() -> list[Analysis]:
    return [_analysis(external(p)) for p in SIDNB13]


@pytest.mark.parametrize("i,j", [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
def test_null_pairs_compare_as_no_change(sidnb13: list[Analysis], i: int, j: int) -> None:
    """The four recordings of one run (CATALOG rows 26-29): every pair is ~1.0x and within run-to-run spread."""
    raw_i, raw_j = _raw_steps(external(SIDNB13[i])), _raw_steps(external(SIDNB13[j]))
    steady_i = sorted(raw_i)[1:]  # the first step of each (1.2-1.3 ms vs 0.75-0.87) is warm-up
    steady_j = sorted(raw_j)[1:]
    median_i = statistics.median(raw_i[k] for k in steady_i)
    median_j = statistics.median(raw_j[k] for k in steady_j)
    c = compare_analyses(sidnb13[i], sidnb13[j])
    assert c.step.speedup == pytest.approx(median_i / median_j, rel=1e-6)
    assert 0.92 < c.step.speedup < 1.08
    assert c.step.within_noise is True and c.step.verdict == "within run-to-run spread"
    assert any("within the run-to-run spread" in n for n in c.notes)


@pytest.fixture(scope="module")
def diff_pair() -> tuple[list, list]:  # type: ignore[type-arg]
    return load_job(external(f"{DIFF}/control")), load_job(external(f"{DIFF}/test"))


def test_trace_diff_explained_by_kernels(diff_pair: tuple[list, list]) -> None:  # type: ignore[type-arg]
    control, test = diff_pair
    c = compare_analyses(analyze_job(control, "control"), analyze_job(test, "test"))
    assert c.step.base.mean_ms == pytest.approx(77.491, abs=0.001)
    assert c.step.new.mean_ms == pytest.approx(124.067, abs=0.001)
    main_cat = c.main_category
    assert main_cat is not None and main_cat.category == "compute"
    assert main_cat.change_ms == pytest.approx(44.340, abs=0.001)
    assert any("different GPUs" in n for n in c.notes)
    classes = c.names.by_class().set_index("klass")
    # The A100 runs its matmuls on tensor cores (cutlass s1688 TF32), the V100 in FP32 (volta_sgemm):
    assert classes.loc["gemm_tensor", "base_ns"] / 1e6 == pytest.approx(11.135, abs=0.001)
    assert (classes.loc["gemm_tensor", "base_names"], classes.loc["gemm_tensor", "new_names"]) == (46, 0)
    assert classes.loc["gemm_tensor", "new_ns"] == 0
    assert classes.loc["gemm_fp32", "base_ns"] / 1e6 == pytest.approx(2.656, abs=0.001)
    assert classes.loc["gemm_fp32", "new_ns"] / 1e6 == pytest.approx(35.254, abs=0.001)
    assert classes.index[0] == "gemm_fp32"  # the class whose time changed most
    top = c.names.of("kernel", "memcpy", "memset").iloc[0]
    assert top["name"] == "Memcpy DtoD (Device -> Device)"
    assert (top["base_count"], round(top["new_count"], 3)) == (3.0, 774.167)


def _hta_diff(control: str, test: str) -> pd.DataFrame:
    from hta.trace_diff import DeviceType, TraceDiff

    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    try:
        return TraceDiff.compare_traces(control, test, device_type=DeviceType.GPU)
    finally:
        logging.disable(logging.NOTSET)


def _launched_only(trace):  # type: ignore[no-untyped-def]
    """HTA gives a GPU event the iteration of its launch; one without a recorded launch gets none (-1)."""
    gpu = trace.gpu[trace.gpu["correlation"].isin(trace.runtime["correlation"])]
    return msgspec.structs.replace(trace, gpu=gpu.reset_index(drop=True))


def test_trace_diff_counts_and_durations_match_hta(diff_pair: tuple[list, list]) -> None:  # type: ignore[type-arg]
    pytest.importorskip("hta.trace_diff")
    control, test = diff_pair
    hta = _hta_diff(str(external(f"{DIFF}/control")), str(external(f"{DIFF}/test")))
    first = str(int(control[0].steps["step"].min()))  # HTA's default: the first iteration of each trace
    assert first == str(int(test[0].steps["step"].min())) == "1009"

    def ours(traces: list) -> pd.DataFrame:  # type: ignore[type-arg]
        c = compare_analyses(analyze_job(control, "c", first), analyze_job(traces, "t", first))
        return c.names.of("kernel", "memcpy", "memset").set_index("name")

    as_is = ours(test)
    hta_sees = ours([_launched_only(t) for t in test])
    joined = hta.join(hta_sees, how="outer").fillna(0.0)
    assert len(joined) == len(hta) == 201
    np.testing.assert_array_equal(joined["Control_counts"], joined["base_count"])
    np.testing.assert_array_equal(joined["Test_counts"], joined["new_count"])
    # Both traces are in whole microseconds: total durations agree exactly.
    np.testing.assert_allclose(joined["Control_total_duration"], joined["base_ns"] / 1000, atol=1e-6)
    np.testing.assert_allclose(joined["Test_total_duration"], joined["new_ns"] / 1000, atol=1e-6)
    np.testing.assert_array_equal(joined["diff_counts"], joined["change_count"])
    # The only difference as is: 614 V100 GPU events whose launch the profiler did not record, which HTA
    # leaves out of every iteration and mlprof places by their own start time.
    unlaunched = len(test[0].gpu) - len(_launched_only(test[0]).gpu)
    assert unlaunched == 614
    assert as_is["new_count"].sum() - hta["Test_counts"].sum() == 614
    assert hta["Test_counts"].sum() == 2503 and hta["Control_counts"].sum() == 1575


def test_recorded_run_folders_predicted_vs_achieved() -> None:
    bad, fixed = RECORDED / "data_starvation" / "bad", RECORDED / "data_starvation" / "fixed"
    c = compare_analyses(_analysis(bad), _analysis(fixed))
    # No step of either recording stands out: all five are steady, and the medians are the raw JSON's.
    base_median = statistics.median(_raw_steps(bad / "trace.rank0.json.gz").values())
    new_median = statistics.median(_raw_steps(fixed / "trace.rank0.json.gz").values())
    assert (c.step.base.n, c.step.new.n) == (5, 5)
    assert c.step.base_ms == pytest.approx(base_median, abs=1e-6) and c.step.new_ms == pytest.approx(
        new_median, abs=1e-6
    )
    assert c.step.speedup == pytest.approx(2.397, abs=0.001)
    assert c.main_category is not None and c.main_category.category == "idle_data"
    p = {p.rule: p for p in c.predicted}["DATA001"]
    assert p.predicted_speedup == pytest.approx(2.69, abs=0.01)  # the replay (attribution said 2.81x)
    assert p.acted_on  # still fires at 0.85 ms per step, but idle_data shrank 12.2 -> 0.85 ms
    assert p.achieved_speedup == pytest.approx(c.step.speedup, rel=1e-12)
    assert p.status == "changed"  # still fires on the fixed run, at 0.85 ms per step
    assert c.names.by_class().empty  # CPU-only recordings: no device activity to compare


def test_run_ids_of_the_store_compare_like_their_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mlprof compare 1 run:2 --store DB`` gives the same report as the two folders they were ingested from."""
    import shutil

    from mlprof.store.ingest import ingest

    bad, fixed = tmp_path / "bad", tmp_path / "fixed"
    shutil.copytree(RECORDED / "data_starvation" / "bad", bad)
    shutil.copytree(RECORDED / "data_starvation" / "fixed", fixed)
    db = str(tmp_path / "store.db")
    ids = [ingest(p, store_url=db).run_id for p in (bad, fixed)]
    assert main(["compare", str(bad), str(fixed), "-f", "json"]) == 0
    by_path = json.loads(capsys.readouterr().out)
    assert main(["compare", str(ids[0]), f"run:{ids[1]}", "--store", db, "-f", "json"]) == 0
    by_id = json.loads(capsys.readouterr().out)
    assert by_id["step_time_ms"] == by_path["step_time_ms"]
    assert by_id["step_time_ms"]["speedup"] == pytest.approx(2.397, abs=0.001)
    assert by_id["predicted_vs_achieved"] == by_path["predicted_vs_achieved"]

    assert main(["compare", "99", str(fixed), "--store", db]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run" in err
    (bad / "meta.json").write_text((bad / "meta.json").read_text() + " ")  # the stored run's files changed
    assert main(["compare", str(ids[0]), str(fixed), "--store", db]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has changed since" in err
    assert main(["compare", "1", str(fixed), "--store", str(tmp_path / "none.db")]) == 2
    assert "no run store" in capsys.readouterr().err


def test_names_that_are_neither_paths_nor_run_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "run-2024-01-01", str(RECORDED / "data_starvation" / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nor a run id" in err
    assert main(["compare", "missing/trace.json", str(RECORDED / "data_starvation" / "bad")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_compare_refuses_to_overwrite_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.json.gz"
    original = (SAMPLES / "synthetic" / "healthy.json.gz").read_bytes()
    trace.write_bytes(original)
    assert main(["compare", str(trace), str(trace), "-o", str(trace)]) == 2
    assert "would write over or into the input" in capsys.readouterr().err
    assert trace.read_bytes() == original


def test_empty_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text('{"traceEvents": []}')
    assert main(["compare", str(empty), str(SAMPLES / "synthetic" / "healthy.json.gz")]) == 2
    err = capsys.readouterr().err
    assert "no recorded activity to compare" in err and err.count("\n") == 1
