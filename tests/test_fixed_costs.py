"""The per-trace fast paths give what the direct pandas formulas give, on real traces.

Small ranks were dominated by pandas' fixed cost per operation, so several measurements
were rewritten (numpy instead of DataFrame filters, one memo per table, a sparse table for
the enclosing-range search). These tests pin each rewrite to the formula it replaced.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mlprof.analysis import measure_trace
from mlprof.analyzers import enclosing
from mlprof.analyzers.attribution import build_layers, drain_after
from mlprof.analyzers.causes import attribute_causes
from mlprof.analyzers.copies import copy_table, runtime_copy_direction
from mlprof.analyzers.enclosing import innermost_enclosing
from mlprof.analyzers.kernels import launch_times
from mlprof.engine.rank_task import windows
from mlprof.rules._kernels import kernel_facts, top_names, totals_by_name
from mlprof.rules.base import RankContext
from mlprof.trace.loader import load_trace
from mlprof.trace.model import Trace
from mlprof.trace.vocabulary import (
    ALLOC_RUNTIME,
    DATALOADER,
    LAUNCH_RUNTIME,
    OPTIMIZER_STEP,
    PROFILER_STEP,
    SYNC_OPS,
    SYNC_RUNTIME,
    names_matching,
)
from tests.conftest import external

DLRM0 = "facebookresearch__param/dlrm_kineto/worker0_step_12.1694128201545.pt.trace.json"
RESNET = "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz"


@pytest.fixture(scope="module")
def dlrm() -> Trace:
    return load_trace(external(DLRM0), workers=1)


def _context(trace: Trace) -> RankContext:
    ra = measure_trace(trace)
    starts, ends = windows(ra)
    ra.causes = attribute_causes(trace, starts, ends)
    return RankContext(ra, ra.causes)


def test_names_matching_equals_isin_of_the_matching_names(dlrm: Trace) -> None:
    patterns = (SYNC_RUNTIME, LAUNCH_RUNTIME, ALLOC_RUNTIME, SYNC_OPS, DATALOADER, PROFILER_STEP, OPTIMIZER_STEP)
    hits = 0
    for table in (dlrm.host, dlrm.runtime, dlrm.gpu):
        for pattern in patterns:
            names = table["name"]
            expected = names.isin([c for c in names.cat.categories if pattern.search(c)])
            got = names_matching(names, pattern)
            pd.testing.assert_series_equal(got, expected)
            # A filtered copy shares the categories (and the memo) and still gets its own rows right.
            half = names.iloc[::2]
            pd.testing.assert_series_equal(names_matching(half, pattern), expected.iloc[::2])
            hits += int(got.sum())
    assert hits > 0
    # A missing name never matches.
    with_missing = pd.Series(pd.Categorical(["cudaDeviceSynchronize", None, "cudaLaunchKernel"]))
    assert names_matching(with_missing, SYNC_RUNTIME).tolist() == [True, False, False]


def _innermost_reference(q_ts: np.ndarray, q_end: np.ndarray, q_tid: np.ndarray, ranges: pd.DataFrame) -> np.ndarray:
    """The direct search: from the last range of the query's thread starting at or before it, step back
    one range at a time (at most MAX_STEPS_BACK) to the first that ends at or after the query."""
    r_ts, r_end, r_tid = (ranges[c].to_numpy(np.int64) for c in ("ts", "end", "tid"))
    out = np.full(len(q_ts), -1, dtype=np.int64)
    for i, (t, e, tid) in enumerate(zip(q_ts.tolist(), q_end.tolist(), q_tid.tolist(), strict=True)):
        mine = np.flatnonzero(r_tid == tid)
        mine = mine[np.lexsort((r_ts[mine],))]  # by start; equal starts in row order
        before = mine[r_ts[mine] <= t][::-1][: enclosing.MAX_STEPS_BACK]
        hit = before[r_end[before] >= e]
        out[i] = hit[0] if len(hit) else -1
    return out


def _in_small_blocks(q_ts: np.ndarray, q_end: np.ndarray, q_tid: np.ndarray, ranges: pd.DataFrame) -> np.ndarray:
    """The table search block by block (the path of more than TABLE_BLOCK ranges), with blocks of 64."""
    saved = enclosing.TABLE_BLOCK
    enclosing.TABLE_BLOCK = 64
    try:
        return innermost_enclosing(q_ts, q_end, q_tid, ranges)
    finally:
        enclosing.TABLE_BLOCK = saved


def test_innermost_enclosing_sparse_table_equals_step_back_on_real_ops(dlrm: Trace) -> None:
    host, runtime = dlrm.host, dlrm.runtime
    ops = host[host["cat"] == "cpu_op"]
    q = (runtime["ts"].to_numpy(np.int64), runtime["end"].to_numpy(np.int64), runtime["tid"].to_numpy(np.int64))
    got = innermost_enclosing(*q, ops)
    assert np.array_equal(got, _innermost_reference(*q, ops))
    assert np.array_equal(_in_small_blocks(*q, ops), got)
    assert (got >= 0).sum() > 400  # nearly every runtime call has an enclosing op


def test_innermost_enclosing_sparse_table_equals_step_back_on_overlapping_ranges() -> None:
    # Ranges that do not nest, long runs of siblings (more than MAX_STEPS_BACK), three threads.
    rng = np.random.default_rng(7)
    n = 3000
    ts = np.sort(rng.integers(0, 200_000, n))
    dur = np.where(rng.random(n) < 0.02, rng.integers(50_000, 150_000, n), rng.integers(1, 60, n))
    ranges = pd.DataFrame({"ts": ts, "end": ts + dur, "tid": rng.integers(1, 4, n)})
    m = 2000
    q_ts = rng.integers(-10, 210_000, m)
    q_end = q_ts + rng.integers(0, 500, m)
    q_tid = rng.integers(0, 5, m)  # threads 0 and 4 have no ranges
    got = innermost_enclosing(q_ts, q_end, q_tid, ranges)
    expected = _innermost_reference(q_ts, q_end, q_tid, ranges)
    assert np.array_equal(got, expected)
    assert np.array_equal(_in_small_blocks(q_ts, q_end, q_tid, ranges), expected)
    assert 0 < (got >= 0).sum() < m
    # The search gives up after MAX_STEPS_BACK ranges: a parent 511 siblings back is found, 512 back is not.
    for siblings, expected_parent in ((enclosing.MAX_STEPS_BACK - 1, 0), (enclosing.MAX_STEPS_BACK, -1)):
        starts = np.concatenate([[0], 10 + 10 * np.arange(siblings)])
        ends = np.concatenate([[10**9], 15 + 10 * np.arange(siblings)])
        chain = pd.DataFrame({"ts": starts, "end": ends, "tid": np.full(siblings + 1, 9)})
        q = (np.array([10**8]), np.array([10**8 + 1]), np.array([9]))
        assert innermost_enclosing(*q, chain).tolist() == [expected_parent]
        assert _innermost_reference(*q, chain).tolist() == [expected_parent]
        assert _in_small_blocks(*q, chain).tolist() == [expected_parent]


def test_top_names_equals_the_groupby_ranking(dlrm: Trace) -> None:
    ctx = _context(dlrm)
    kernels = kernel_facts(ctx).kernels
    assert len(kernels) > 100

    def reference(frame: pd.DataFrame, n_steps: int) -> list[dict[str, object]]:
        grouped = (
            frame.groupby("name").agg(n=("dur", "size"), total=("dur", "sum")).sort_values("total", ascending=False)
        )
        return [
            {
                "kernel": name[:160],
                "per_step": round(r.n / n_steps, 1),
                "ms_per_step": round(r.total / n_steps / 1e6, 3),
            }
            for name, r in grouped.head(5).iterrows()
        ]

    assert top_names(kernels, 1) == reference(kernels, 1)
    assert top_names(kernels, 3) == reference(kernels, 3)
    # Ties in total time keep the order pandas gives them.
    ties = pd.DataFrame({"name": ["b", "a", "c", "b", "d", "e", "f", "g"], "dur": [5, 10, 10, 5, 10, 10, 10, 10]})
    assert top_names(ties, 2) == reference(ties, 2)
    assert top_names(kernels.head(0), 1) == []
    # A missing name is left out, as groupby leaves it out.
    missing = pd.DataFrame({"name": ["a", np.nan, "b", "a"], "dur": [1, 100, 3, 4]})
    assert top_names(missing, 1) == reference(missing, 1)
    # The communication kernels COMM001 lists (real NCCL names).
    comm = dlrm.gpu[dlrm.gpu["is_comm"]]
    frame = pd.DataFrame({"name": comm["name"].astype(str).to_numpy(), "dur": comm["dur"].to_numpy(np.int64)})
    uniq, count, total, order = totals_by_name(frame["name"].to_numpy(), frame["dur"].to_numpy())
    grouped = frame.groupby("name").agg(n=("dur", "size"), total=("dur", "sum")).sort_values("total", ascending=False)
    assert [str(u) for u in uniq[order]] == grouped.index.tolist()
    assert count[order].tolist() == grouped["n"].tolist()
    assert total[order].tolist() == grouped["total"].tolist()
    assert len(uniq) >= 2
    # A categorical (the kernel table's names) counts by codes: categories out of string order,
    # unused ones and a missing name give the ranking of the same names as strings.
    names = ["b", "a", "c", "b", None, "e", "f", "g", "a"]
    durs = np.array([5, 10, 10, 5, 100, 10, 10, 10, 1])
    cat = pd.Categorical(names, categories=["g", "z", "f", "e", "c", "b", "a"])
    strings = pd.DataFrame({"name": names, "dur": durs})
    grouped = strings.groupby("name").agg(n=("dur", "size"), total=("dur", "sum")).sort_values("total", ascending=False)
    for got in (totals_by_name(cat, durs), totals_by_name(np.array(names, dtype=object), durs)):
        uniq, count, total, order = got
        assert uniq.tolist() == ["a", "b", "c", "e", "f", "g"]
        assert [str(u) for u in uniq[order]] == grouped.index.tolist()
        assert count[order].tolist() == grouped["n"].tolist()
        assert total[order].tolist() == grouped["total"].tolist()
    assert top_names(pd.DataFrame({"name": cat, "dur": durs}), 1) == top_names(strings, 1)


def test_per_step_and_steps_with_equal_the_pandas_sums(dlrm: Trace) -> None:
    ctx = _context(dlrm)
    causes = ctx.causes
    for names in (("compute.other",), ("sync.h2d", "launch.h2d", "copy.h2d"), ("data.loader",), tuple(causes.columns)):
        assert ctx.per_step(*names) == float(causes[list(names)].sum(axis=1).mean())
    dur = (ctx.windows["end"] - ctx.windows["ts"]).to_numpy()
    share = causes[["compute.other"]].sum(axis=1).to_numpy() / np.maximum(dur, 1)
    expected = [int(s) for s in ctx.windows["step"].to_numpy()[share > 0.01] if s >= 0]
    assert ctx.steps_with("compute.other", min_share=0.01) == expected
    with pytest.raises(KeyError):
        ctx.per_step("no.such.cause")


def test_memo_follows_a_replaced_table_and_its_arrays_are_read_only() -> None:
    trace = load_trace(external(RESNET), workers=1)
    first = build_layers(trace)
    assert build_layers(trace) is first
    assert copy_table(trace.gpu) is copy_table(trace.gpu)
    with pytest.raises(ValueError, match="read-only"):
        first[0].starts[0] = 0
    compute_before = len(first[0].starts)
    assert compute_before > 0
    trace.gpu = trace.gpu[trace.gpu["kind"] != "kernel"].reset_index(drop=True)
    again = build_layers(trace)
    assert again is not first
    assert len(again[0].starts) == 0
    assert trace.has_device_activity == bool(len(trace.gpu))


def test_kernel_facts_match_the_full_table_filter(dlrm: Trace) -> None:
    ctx = _context(dlrm)
    facts = kernel_facts(ctx).kernels
    gpu = dlrm.gpu
    kernels = gpu[gpu["kind"] == "kernel"]
    inside = kernels[ctx.in_windows(kernels["ts"].to_numpy(np.int64))]
    assert facts["name"].tolist() == inside["name"].astype(str).tolist()
    assert facts["ts"].tolist() == inside["ts"].tolist()
    assert facts["dur"].tolist() == inside["dur"].tolist()
    assert re.search("nccl", " ".join(facts["name"].unique()))


def _drain_reference(sync_rt: pd.DataFrame, launch_rt: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-thread groupby formula drain_after replaced."""
    starts, ends, rows = [], [], []
    launches = {t: np.sort(f["ts"].to_numpy(np.int64)) for t, f in launch_rt.groupby("tid", observed=True)}
    positions = pd.Series(np.arange(len(sync_rt)), index=sync_rt.index)
    for t, frame in sync_rt.groupby("tid", observed=True):
        launch_ts = launches.get(t)
        if launch_ts is None:
            continue
        sync_end = frame["end"].to_numpy(np.int64)
        nxt = np.searchsorted(launch_ts, sync_end, side="left")
        has = nxt < len(launch_ts)
        starts.append(sync_end[has])
        ends.append(launch_ts[nxt[has]])
        rows.append(positions.loc[frame.index].to_numpy(np.int64)[has])
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(rows)


@pytest.mark.parametrize("relative", [DLRM0, RESNET])
def test_drain_after_equals_the_per_thread_groupby(relative: str) -> None:
    trace = load_trace(external(relative), workers=1)
    runtime = trace.runtime
    sync_rt = runtime[names_matching(runtime["name"], SYNC_RUNTIME)]
    launch_rt = runtime[names_matching(runtime["name"], LAUNCH_RUNTIME)]
    got = drain_after(sync_rt, launch_rt)
    expected = _drain_reference(sync_rt, launch_rt)
    assert len(got[0]) > 0
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, b)
    # A second thread that syncs but never launches, and one launching only: no window for either.
    extra = sync_rt.iloc[:3].assign(tid=999_999)
    mixed_sync = pd.concat([extra, sync_rt], ignore_index=True)
    mixed_launch = pd.concat([launch_rt, launch_rt.iloc[:2].assign(tid=555_555)], ignore_index=True)
    for a, b in zip(drain_after(mixed_sync, mixed_launch), _drain_reference(mixed_sync, mixed_launch), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("relative", [DLRM0, RESNET])
def test_correlation_joins_equal_the_pandas_joins(relative: str) -> None:
    trace = load_trace(external(relative), workers=1)
    gpu, runtime = trace.gpu, trace.runtime
    # launch_times: first runtime call of each correlation id.
    rt = runtime.loc[runtime["correlation"] > 0, ["correlation", "ts"]].drop_duplicates("correlation")
    by_corr = pd.Series(rt["ts"].to_numpy(np.int64), index=rt["correlation"].to_numpy(np.int64))
    expected = gpu["correlation"].map(by_corr).fillna(gpu["ts"]).to_numpy(np.int64).copy()
    expected[gpu["correlation"].to_numpy() <= 0] = gpu["ts"].to_numpy(np.int64)[gpu["correlation"].to_numpy() <= 0]
    assert np.array_equal(launch_times(gpu, runtime), expected)
    # runtime_copy_direction: direction of the first copy of each correlation id.
    copies = copy_table(gpu)
    keyed = copies[copies["correlation"] > 0].drop_duplicates("correlation")
    lookup = pd.Series(keyed["direction"].to_numpy(), index=keyed["correlation"].to_numpy())
    hit = pd.Series(runtime["correlation"].to_numpy(np.int64)).map(lookup).fillna("").to_numpy(dtype=object)
    got = runtime_copy_direction(runtime, copies)
    assert got.tolist() == hit.tolist()
    assert (got == "HtoD").sum() > 0
    # copy_table: the memcpy rows, in order, with their names.
    memcpy = gpu[gpu["kind"] == "memcpy"]
    assert copies["name"].tolist() == memcpy["name"].astype(str).tolist()
    assert copies["ts"].tolist() == memcpy["ts"].tolist()
    assert copies["correlation"].tolist() == memcpy["correlation"].tolist()


def test_innermost_enclosing_with_times_too_far_apart_for_combined_keys() -> None:
    # Thread rank * time span would overflow int64: the search falls back to one search per thread.
    far = 4 * 10**18
    ranges = pd.DataFrame(
        {
            "ts": [0, 5, far, far + 5, 10, 2, far + 1],
            "end": [100, 8, far + 100, far + 8, 20, 3, far + 2],
            "tid": [1, 1, 1, 1, 2, 3, 3],
        }
    )
    q_ts = np.array([6, far + 6, 15, 2, far + 1, 50, far + 200, -5])
    q_end = q_ts + 1
    q_tid = np.array([1, 1, 2, 3, 3, 1, 1, 2])
    got = innermost_enclosing(q_ts, q_end, q_tid, ranges)
    assert np.array_equal(got, _innermost_reference(q_ts, q_end, q_tid, ranges))
    assert got.tolist() == [1, 3, 4, 5, 6, 0, -1, -1]


def test_most_frequent_value_per_op_name_equals_the_groupby_formula() -> None:
    from mlprof.analyzers.name_totals import _most_frequent

    rng = np.random.default_rng(11)
    labels = ["", "a.py(1): f", "b.py(2): g", "c.py(3): h", "[[1, 2]]"]
    for _ in range(30):
        n_rows, n_names = int(rng.integers(1, 200)), int(rng.integers(1, 6))
        values = pd.Categorical.from_codes(rng.integers(-1, len(labels), n_rows), categories=labels)
        is_op = rng.random(n_rows) < 0.8
        o_codes_all = rng.integers(0, n_names, n_rows)
        o_in = rng.random(int(is_op.sum())) < 0.9
        o_codes = o_codes_all[is_op][o_in]
        # The formula it replaced: groupby in order of appearance, stable sort by count, first per name.
        codes = values.codes[is_op][o_in]
        known = codes >= 0
        expected = np.full(n_names, None, dtype=object)
        if known.any():
            pairs = pd.DataFrame({"o": o_codes[known], "s": codes[known]})
            common = pairs.groupby(["o", "s"], sort=False).size().reset_index(name="n")
            common = common.sort_values("n", ascending=False, kind="stable").drop_duplicates("o")
            expected[common["o"].to_numpy()] = np.array(labels, dtype=object)[common["s"].to_numpy()]
        expected[expected == ""] = None
        assert _most_frequent(values, is_op, o_codes, o_in, n_names).tolist() == expected.tolist()
