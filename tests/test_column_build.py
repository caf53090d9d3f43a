"""The vectorised column conversions give exactly what the per-value formulas gave.

`to_int64` used to fall back to `_int_or` value by value once a column held text
(`"stream 7"` in 2021 Kineto traces), and `SymbolTable.encode` factorised an object
array with pandas. Both now take vectorised paths; the old formulas are kept here,
verbatim, and every argument column of real traces is run through both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlprof.trace import jsonstream
from mlprof.trace.build import COMM_KERNEL
from mlprof.trace.columns import SymbolTable, _int_or, _text, factorize_text, to_int64
from mlprof.trace.loader import load_trace
from mlprof.trace.schema import EventArgs, TraceEvent
from mlprof.trace.steps import find_steps
from mlprof.trace.vocabulary import PROFILER_STEP, names_matching

from conftest import external

REAL_TRACES = [
    "pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz",
    "hta/tests/data/df_index_resolver/df_index_resolver.json.gz",
    "facebookresearch__param/dlrm_kineto/worker0_step_12.1694128201545.pt.trace.json",
]
SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def old_to_int64(values: list[Any], missing: int = -1) -> np.ndarray:
    """`to_int64` before the vectorised path (commit dce93c4)."""
    n = len(values)
    try:
        return np.fromiter(values, dtype=np.int64, count=n)
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        return np.fromiter((missing if v is None else v for v in values), dtype=np.int64, count=n)
    except (TypeError, ValueError, OverflowError):
        return np.fromiter((_int_or(v, missing) for v in values), dtype=np.int64, count=n)


def old_encode(symbols: SymbolTable, values: list[Any]) -> np.ndarray:
    """`SymbolTable.encode` before the dict-based path (commit dce93c4)."""
    if len(values) == 0:
        return np.empty(0, dtype=np.int32)
    local_codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    mapping = np.fromiter(
        (symbols.code(u if isinstance(u, str) else _text(u)) for u in uniques),
        dtype=np.int32,
        count=len(uniques),
    )
    mapping = np.append(mapping, np.int32(0))
    return mapping[local_codes]


def _events(path: Path) -> list[TraceEvent]:
    batches: list[list[TraceEvent]] = []
    jsonstream.read_trace_events(path, batches.append)
    return [e for batch in batches for e in batch]


def _columns(events: list[TraceEvent]) -> dict[str, list[Any]]:
    args = [e.args if e.args is not None else EventArgs() for e in events]
    cols = {f: [getattr(e, f) for e in events] for f in ("ph", "cat", "name", "pid", "tid", "id")}
    for f in EventArgs.__struct_fields__:
        if f == "input_dims":
            continue  # raw JSON text, not a scalar column (read for a few ops only: build._input_dims)
        cols[f"args.{f}"] = [getattr(a, f) for a in args]
    return cols


def _distinct(values: list[Any]) -> list[Any]:
    """Each distinct value once (by type and value: 1, 1.0 and True stay apart), in first-seen order.

    Both conversions map value by value, and which path they take depends on which kinds of
    value a column holds, not on how often: the distinct values check the same cases as the
    full column (df_index_resolver: 0.4 s instead of 28 s)."""
    seen: dict[tuple[str, Any], Any] = {}
    for v in values:
        key = (type(v).__name__, v if isinstance(v, (str, int, float, type(None))) else repr(v))
        if isinstance(v, float) and v != v:
            key = ("float", "nan")
        seen.setdefault(key, v)
    return list(seen.values())


@pytest.mark.parametrize("relative", REAL_TRACES)
def test_real_columns_convert_as_before(relative: str) -> None:
    events = _events(external(relative))
    cols = {name: _distinct(values) for name, values in _columns(events).items()}
    text_columns = 0
    for name, values in cols.items():
        for missing in (-1, 0):
            np.testing.assert_array_equal(to_int64(values), old_to_int64(values), err_msg=name)
            np.testing.assert_array_equal(
                to_int64(values, missing), old_to_int64(values, missing), err_msg=f"{name} missing={missing}"
            )
        new_symbols, old_symbols = SymbolTable(), SymbolTable()
        new_codes, old_codes = new_symbols.encode(values), old_encode(old_symbols, values)
        assert [new_symbols.strings[c] for c in new_codes] == [old_symbols.strings[c] for c in old_codes], name
        new_cat = new_symbols.categorical(new_codes)
        used = np.unique(new_codes)
        strings = np.array([new_symbols.strings[i] for i in used], dtype=object)
        order = np.argsort(strings, kind="stable")
        remap = np.zeros(len(new_symbols.strings), dtype=np.int32)
        remap[used[order]] = np.arange(len(used), dtype=np.int32)
        old_cat = pd.Categorical.from_codes(remap[new_codes], categories=strings[order].tolist())
        pd.testing.assert_extension_array_equal(new_cat, old_cat)
        assert new_cat.categories.dtype == old_cat.categories.dtype
        text_columns += factorize_text(values) is not None
    assert text_columns >= 5  # cat, ph, name, ... take the dict path


def test_resnet_text_tids_take_vectorised_path() -> None:
    """2021 Kineto writes ``"tid": "stream 7"`` on GPU events and text thread ids: the per-value case."""
    events = _events(external(REAL_TRACES[0]))
    tids = [e.tid for e in events]
    texts = {t for t in tids if isinstance(t, str)}
    assert any(t.startswith("stream ") for t in texts)
    got = to_int64(tids)
    assert (got == old_to_int64(tids)).all()
    as_text = np.array([isinstance(t, str) for t in tids])
    numbers = [t.removeprefix("stream ") for t in texts]
    expected = {int(t) if t.isdigit() else -1 for t in numbers}
    assert -1 in expected and len(expected) > 2  # thread ids, stream numbers and an empty tid
    assert set(np.unique(got[as_text]).tolist()) == expected
    assert (got[~as_text] == [t for t in tids if not isinstance(t, str)]).all()


def test_sample_trace_columns_convert_as_before() -> None:
    for path in sorted(SAMPLES.glob("*.json.gz")):
        for name, values in _columns(_events(path)).items():
            np.testing.assert_array_equal(to_int64(values), old_to_int64(values), err_msg=f"{path.name} {name}")


ODD_VALUES: list[Any] = [
    None,
    0,
    7,
    -(2**63),
    2**63 - 1,
    2**63,
    -(2**64),
    True,
    False,
    1.0,
    2.5,
    float("nan"),
    float("inf"),
    "12",
    " 12 ",
    "stream 7",
    "stream x",
    "1_000",
    "-5",
    "9223372036854775808",
    "",
    "abc",
    "1.5",
    [1],
    {"a": 1},
]


@pytest.mark.parametrize("seed", range(40))
def test_mixed_columns_convert_as_before(seed: int) -> None:
    """Random mixtures of every kind of value a lenient decode can hand over."""
    rng = np.random.default_rng(seed)
    pool = ODD_VALUES[: 3 + seed % len(ODD_VALUES)]
    values = [pool[i] for i in rng.integers(0, len(pool), size=int(rng.integers(1, 60)))]
    for missing in (-1, 0):
        np.testing.assert_array_equal(to_int64(values, missing), old_to_int64(values, missing))
    hashable = [v for v in values if not isinstance(v, list | dict)]
    new_symbols, old_symbols = SymbolTable(), SymbolTable()
    new_codes, old_codes = new_symbols.encode(hashable), old_encode(old_symbols, hashable)
    assert [new_symbols.strings[c] for c in new_codes] == [old_symbols.strings[c] for c in old_codes]


def old_profiler_steps(host: pd.DataFrame) -> pd.DataFrame:
    """The ``ProfilerStep#N`` branch of `find_steps` before the numpy path (commit dce93c4)."""
    rows = host[names_matching(host["name"], PROFILER_STEP)]
    rows = rows.drop_duplicates(subset=["name"], keep="first")
    digits = rows["name"].astype(str).str.extract(PROFILER_STEP.pattern, expand=False)
    sane = (digits.str.len() <= 18).to_numpy()
    rows, digits = rows[sane], digits[sane]
    steps = pd.DataFrame(
        {
            "step": digits.astype(np.int64).to_numpy(),
            "name": rows["name"].astype(str).to_numpy(),
            "ts": rows["ts"].to_numpy(),
            "end": rows["end"].to_numpy(),
        }
    )
    steps["dur"] = steps["end"] - steps["ts"]
    return steps.sort_values("ts", ignore_index=True)


STEP_TRACES = [
    *REAL_TRACES,
    "hta/tests/data/trace_filter/sampled_rank-0.json.gz",
    "facebookresearch__param/dlrm_kineto/worker3_step_12.1694128201557.pt.trace.json",
]


@pytest.mark.parametrize("relative", STEP_TRACES)
def test_profiler_steps_as_before(relative: str) -> None:
    trace = load_trace(external(relative), workers=1)
    host = trace.host
    if not names_matching(host["name"], PROFILER_STEP).any():
        pytest.skip("no ProfilerStep ranges")
    steps, marker = find_steps(host, int(host["end"].max()))
    assert marker == "ProfilerStep" and len(steps) >= 1
    pd.testing.assert_frame_equal(steps, old_profiler_steps(host), check_exact=True)
    assert steps["name"].dtype == old_profiler_steps(host)["name"].dtype


def test_profiler_steps_dedup_and_junk_as_before() -> None:
    """Repeated step names keep the first range; step numbers beyond int64 are dropped."""
    names = ["ProfilerStep#3", "aten::mm", "ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#" + "9" * 19]
    symbols = SymbolTable()
    host = pd.DataFrame(
        {
            "name": symbols.categorical(symbols.encode(names)),
            "ts": np.array([50, 10, 0, 70, 90], dtype=np.int64),
            "end": np.array([60, 20, 40, 80, 95], dtype=np.int64),
        }
    )
    steps, _ = find_steps(host, 100)
    pd.testing.assert_frame_equal(steps, old_profiler_steps(host), check_exact=True)
    assert steps["step"].tolist() == [2, 3] and steps["end"].tolist() == [40, 60]


@pytest.mark.parametrize("relative", STEP_TRACES)
def test_is_comm_as_before(relative: str) -> None:
    """``is_comm`` from the cached per-name regex answers equals the ``isin`` formula it replaced."""
    gpu = load_trace(external(relative), workers=1).gpu
    comm_names = [c for c in gpu["name"].cat.categories if COMM_KERNEL.search(c)]
    old = gpu["name"].isin(comm_names) & (gpu["kind"] == "kernel")
    pd.testing.assert_series_equal(gpu["is_comm"], old, check_names=False)
    if "dlrm" in relative:
        assert gpu["is_comm"].sum() > 0  # the DLRM ranks run NCCL all-to-all and all-reduce


@pytest.mark.parametrize("junk_cat", [False, True])
def test_flow_ph_codes_from_the_batch_are_the_flows_own(junk_cat: bool) -> None:
    """A flow's ``ph`` is coded from the batch's distinct phs (not each flow's again): the same column, with
    flows, ranges, instants and metadata interleaved, and where a non-text cat takes the general path."""
    from mlprof.trace.build import TableBuilder

    phs = ["X", "s", "i", "f", "t", "M", "f", "s", "X", "t"]
    events = [
        TraceEvent(ph=ph, cat=(7 if junk_cat and k == 2 else "ac2g"), name="n", pid=1, tid=2, id=k, ts=msgspec_raw(k))
        for k, ph in enumerate(phs)
    ]
    builder = TableBuilder()
    builder.add(events)
    flows = builder.finish()["flows"]
    assert flows["ph"].astype(str).tolist() == [p for p in phs if p in ("s", "f", "t")]
    assert flows["id"].tolist() == [k for k, p in enumerate(phs) if p in ("s", "f", "t")]


def msgspec_raw(k: int) -> Any:
    import msgspec

    return msgspec.Raw(str(1000 + k).encode())


def _every(path: Path, step: int) -> list[TraceEvent]:
    batches: list[list[TraceEvent]] = []
    jsonstream.read_trace_events(path, batches.append, None)
    return [e for batch in batches for e in batch][::step]


def _odd(events: list[TraceEvent]) -> tuple[list[TraceEvent], set[str]]:
    """Copies with a value that takes each conversion's per-family path: a flow's ts in exponent notation, an op's
    ts with decimals among integers (or the reverse) and its name not text, a kernel without dur (dropped), a
    runtime call's pid not an integer (where the trace has kernels and runtime calls)."""
    import msgspec

    out = list(events)
    done: set[str] = set()
    for i, e in enumerate(out):
        if e.ph in ("s", "f") and "flow" not in done:
            out[i], _ = msgspec.structs.replace(e, ts=msgspec.Raw(b"1.5e3")), done.add("flow")
        elif e.cat in ("kernel", "Kernel") and "kernel" not in done:
            out[i], _ = msgspec.structs.replace(e, dur=msgspec.Raw(b"")), done.add("kernel")
        elif e.cat in ("cuda_runtime", "Runtime") and "runtime" not in done:
            out[i], _ = msgspec.structs.replace(e, pid="x"), done.add("runtime")
        elif e.cat in ("cpu_op", "Operator") and e.ph == "X" and "op" not in done:
            ts = bytes(e.ts)  # decimals among integers, or an integer among decimals
            ts = ts.partition(b".")[0] if b"." in ts else ts + b".5"
            out[i], _ = msgspec.structs.replace(e, name=5, ts=msgspec.Raw(ts)), done.add("op")
    return out, done


@pytest.mark.parametrize("odd", [False, True])
@pytest.mark.parametrize(
    ("source", "step"),
    [
        ("hta/tests/data/ns_resolution_trace/rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz", 20),
        ("pytorch__kineto/resnet50_num_workers_0/worker0.1623143566756.pt.trace.json.gz", 25),
        ("facebookresearch__param/dlrm_kineto/worker0_step_12.1694128201545.pt.trace.json", 10),
        ("sample:synthetic/comm_exposed.json.gz", 1),
        ("sample:cpu_slow_dataloader.pt.trace.json.gz", 2),
    ],
)
def test_a_slice_gives_the_tables_of_its_events_one_by_one(source: str, step: int, odd: bool) -> None:
    """The builder converts each column of a slice's families together (families laid out one after another, one
    parse of all their times, one lookup of all their names); the tables are those of the same events added one
    at a time (each slice one family, every value converted alone), also where one family's values take the
    per-family paths (``odd``) and with the events cut into uneven slices."""
    from mlprof.trace.build import TableBuilder

    path = SAMPLES / source.removeprefix("sample:") if source.startswith("sample:") else external(source)
    events = _every(path, step)
    done: set[str] = set()
    if odd:
        events, done = _odd(events)
        assert {"flow", "op"} <= done
    one_by_one = TableBuilder()
    for e in events:
        one_by_one.add([e])
    expected = one_by_one.finish()
    for cuts in ([len(events)], [7, 307, 308, 2808, len(events)]):
        builder, start = TableBuilder(), 0
        for end in cuts:
            builder.add(events[start:end])
            start = end
        tables = builder.finish()
        for name, frame in expected.items():
            pd.testing.assert_frame_equal(tables[name], frame, obj=name)
        assert builder.dropped_no_time == one_by_one.dropped_no_time
        assert builder.categories_seen == one_by_one.categories_seen
    assert sum(len(t) for t in expected.values()) > len(events) // 2
    assert one_by_one.dropped_no_time == ("kernel" in done)


def test_a_trace_with_a_cat_and_a_ph_per_event_keeps_the_builders_codes_bounded(tmp_path: Path) -> None:
    """Thousands of distinct cats and phs (a custom trace writing an id there): the builder codes at most
    MAX_CODED_CATS cats and 128 + MAX_CODED_PHS phs (the family table of every (cat, ph) pair stays small; it was
    rebuilt per new value, quadratic: 100 k such events took minutes) and reads the rest per slice. The host ops
    are every "X" event, with the cats and times of the file (truth: the JSON)."""
    import json

    from mlprof.trace import build

    n = 6000
    events = [
        {"ph": "X", "cat": f"custom {i}", "name": f"op{i % 7}", "pid": 1, "tid": 1, "ts": 1000 + 3 * i, "dur": 2}
        for i in range(n)
    ] + [{"ph": f"ph {i}", "cat": "cpu_op", "name": "odd", "pid": 1, "tid": 1, "ts": 1, "dur": 1} for i in range(n)]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    seen: list[build.TableBuilder] = []
    original = build.TableBuilder.add

    def add(self: build.TableBuilder, batch: Any) -> None:
        original(self, batch)
        seen.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonstream, "SLICE_BYTES", 32 << 10)
        mp.setattr(jsonstream, "BLOCK_BYTES", 8 << 10)
        mp.setattr(build.TableBuilder, "add", add)
        trace = load_trace(path)
    builder = seen[-1]
    assert len(seen) > 20
    assert len(builder._cat_index) <= build.MAX_CODED_CATS
    assert len(builder._ph_index) <= 128 + build.MAX_CODED_PHS
    assert builder._families.shape == (len(builder._cat_index), len(builder._ph_index))
    host = trace.host.sort_values("ts", kind="stable")
    assert host["cat"].astype(str).tolist() == [e["cat"] for e in events[:n]]
    assert (host["ts"].to_numpy() == 1000_000 + 3000 * np.arange(n)).all()
    assert "custom 5999" in builder.categories_seen
