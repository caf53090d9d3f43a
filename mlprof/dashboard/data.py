"""Data access for the dashboard: read-only, parameterised, cached; the pages never touch SQL.

Every function takes the store URL as a string (the cache key) and ids as ints. The
store comes from ``MLPROF_STORE`` (set by ``mlprof dashboard``) and the Parquet folder
from ``MLPROF_CACHE``; a run's Parquet files are found through its ``run_key`` in the
database, never through a path from the page's URL. The plain ``read_*`` functions do
the work; the ``cached_*`` wrappers are what pages call (``st.cache_data``, 60 s TTL so
newly ingested runs show up).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy.engine import Engine

from mlprof.analyzers.attribution import CATEGORIES
from mlprof.analyzers.enclosing import innermost_enclosing
from mlprof.dashboard.perfetto import window_trace
from mlprof.dashboard.timeline import bin_series, merge_bands
from mlprof.store import queries
from mlprof.store.engine import open_engine
from mlprof.store.location import StoreLocation, resolve_store
from mlprof.store.parquet_cache import ranks_cached, read_table, run_dir
from mlprof.store.schema import check_readable
from mlprof.trace.build import COMM_KERNEL
from mlprof.trace.vocabulary import name_mask

TTL_S = 60
TIMELINE_PIXELS = 1500
"""Time resolution of the timeline: the window is cut into this many slices (one band per slice at most)."""
CURVE_POINTS = 2000
COUNTER_METRICS = ("gpu_util_pct", "mem_used_bytes", "sm_active", "sm_clock_mhz", "power_w", "temp_c")


def current_store() -> StoreLocation:
    """The store the dashboard was started on (``MLPROF_STORE``, else the default file)."""
    return resolve_store(None)


@lru_cache(maxsize=4)
def _engine(url: str) -> Engine:
    return open_engine(resolve_store(url), read_only=True)


def _loc(url: str) -> StoreLocation:
    return resolve_store(url)


def check_store(url: str) -> None:
    with _engine(url).connect() as conn:
        check_readable(conn)


def read_runs(
    url: str,
    tags: tuple[tuple[str, str], ...] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    gpu: str | None = None,
    name: str | None = None,
    sort: str = "date",
) -> pd.DataFrame:
    with _engine(url).connect() as conn:
        return queries.list_runs(conn, tags=dict(tags), since=since, until=until, gpu=gpu, name=name, sort=sort)


def read_tags(url: str) -> pd.DataFrame:
    with _engine(url).connect() as conn:
        return queries.all_tags(conn)


def read_run(url: str, run_id: int) -> dict[str, Any] | None:
    """Everything the Run page shows from the database (no Parquet)."""
    with _engine(url).connect() as conn:
        run = queries.get_run(conn, int(run_id))
        if run is None:
            return None
        run["findings"] = queries.run_findings(conn, int(run_id))
        run["steps"] = queries.run_steps(conn, int(run_id), rank=None)
        run["counters"] = queries.run_counters(conn, int(run_id))
        run["ops"] = queries.run_ops(conn, int(run_id))
    return run


def _folder(url: str, run_key: str) -> Path:
    return run_dir(_loc(url).cache_dir, run_key)


def worst_step(steps: pd.DataFrame, rank: int) -> dict[str, int] | None:
    """The longest step of ``rank`` (from the store's steps rows)."""
    mine = steps[steps["rank"] == rank]
    if len(mine) == 0:
        return None
    row = mine.loc[mine["dur_ns"].idxmax()]
    return {"step": int(row["step"]), "ts": int(row["start_ns"]), "end": int(row["start_ns"] + row["dur_ns"])}


def rank_steps(steps: pd.DataFrame, rank: int) -> list[dict[str, int]]:
    """Every step of ``rank`` in order: number, start and end ns (the timeline's step picker)."""
    mine = steps[steps["rank"] == rank].sort_values("step", kind="stable")
    starts = mine["start_ns"].to_numpy(np.int64)
    ends = starts + mine["dur_ns"].to_numpy(np.int64)
    numbers = mine["step"].to_numpy(np.int64)
    return [
        {"step": int(n), "ts": int(a), "end": int(b)}
        for n, a, b in zip(numbers.tolist(), starts.tolist(), ends.tolist(), strict=True)
    ]


LANE_KINDS = ("compute", "communication", "memcpy", "memset", "cpu op", "cuda runtime")
"""What a timeline band is, each drawn in its own colour: GPU kernels split into compute and
communication (NCCL and other collective kernels, by name), copies, memsets, host ops and
CUDA runtime calls."""


def read_timeline(url: str, run_key: str, rank: int, lo: int, hi: int) -> pd.DataFrame | None:
    """GPU streams and CPU threads of ``rank`` in ``[lo, hi)``, merged into bands per lane and kind
    (:data:`LANE_KINDS`); None without a cache."""
    folder = _folder(url, run_key)
    window = (int(lo), int(hi))
    gpu = read_table(folder, rank, "gpu", ["kind", "name", "ts", "end", "device", "stream"], window)
    host = read_table(folder, rank, "host", ["name", "ts", "end", "tid"], window)
    runtime = read_table(folder, rank, "runtime", ["name", "ts", "end", "tid"], window)
    if gpu is None and host is None:
        return None
    parts = []
    if gpu is not None and len(gpu):
        gpu = gpu[gpu["kind"].astype(str) != "sync"]
        lane = "GPU " + gpu["device"].astype(str) + " stream " + gpu["stream"].astype(str)
        names = gpu["name"].astype(str)
        kind = gpu["kind"].astype(str).to_numpy()
        comm = name_mask(gpu["name"].astype("category"), COMM_KERNEL)
        gpu_what = np.where(kind == "kernel", np.where(comm, "communication", "compute"), kind)
        parts.append(pd.DataFrame({"lane": lane, "kind": gpu_what, "ts": gpu["ts"], "end": gpu["end"], "name": names}))
    for frame, what in ((host, "cpu op"), (runtime, "cuda runtime")):
        if frame is not None and len(frame):
            lane = "CPU thread " + frame["tid"].astype(str)
            parts.append(
                pd.DataFrame(
                    {
                        "lane": lane,
                        "kind": what,
                        "ts": frame["ts"],
                        "end": frame["end"],
                        "name": frame["name"].astype(str),
                    }
                )
            )
    if not parts:
        return pd.DataFrame(columns=["lane", "kind", "ts", "end", "events", "top_name", "top_dur"])
    events = pd.concat(parts, ignore_index=True)
    resolution = max((window[1] - window[0]) // TIMELINE_PIXELS, 1)
    out = []
    for what, part in events.groupby("kind", sort=False):
        bands = merge_bands(part, resolution)
        bands.insert(1, "kind", what)
        out.append(bands)
    bands = pd.concat(out, ignore_index=True)
    bands["ts"] = bands["ts"].clip(lower=window[0])
    bands["end"] = bands["end"].clip(upper=window[1])
    return bands


def finding_bands(findings: list[dict[str, Any]], rank: int, lo: int, hi: int) -> pd.DataFrame:
    """Time ranges of each finding (its ``time_ranges_ns``) that overlap ``[lo, hi)``, clipped to it.

    A finding's ranges were measured on the ranks it names (``ranks``); on another rank
    they are not drawn.
    """
    rows = []
    for f in findings:
        d = f["detail"]
        ranks = d.get("ranks") or []
        if ranks and rank not in ranks:
            continue
        for a, b in d.get("time_ranges_ns") or []:
            a, b = int(a), int(b)
            if b > lo and a < hi:
                rows.append({"rule": f["rule"], "title": f["title"], "ts": max(a, lo), "end": min(b, hi)})
    return pd.DataFrame(rows, columns=["rule", "title", "ts", "end"])


def finding_steps(findings: list[dict[str, Any]], steps: list[dict[str, int]]) -> dict[int, list[str]]:
    """Per step number: the rules with a time range inside that step (marks the step picker)."""
    out: dict[int, list[str]] = {}
    if not steps:
        return out
    starts = np.array([s["ts"] for s in steps], np.int64)
    for f in findings:
        for a, _b in f["detail"].get("time_ranges_ns") or []:
            pos = int(np.searchsorted(starts, int(a), side="right")) - 1
            if pos >= 0 and int(a) < steps[pos]["end"]:
                rules = out.setdefault(steps[pos]["step"], [])
                if f["rule"] not in rules:
                    rules.append(f["rule"])
    return out


def read_memory(url: str, run_key: str, rank: int) -> pd.DataFrame | None:
    """Allocated bytes over time per device (allocator events), at most CURVE_POINTS points per device."""
    frame = read_table(_folder(url, run_key), rank, "memory", ["ts", "device_type", "device_id", "total_allocated"])
    if frame is None:
        return None
    frame = frame[frame["total_allocated"] >= 0]
    out = []
    for (dtype, did), dev in frame.groupby(["device_type", "device_id"], sort=True):
        dev = dev.sort_values("ts", kind="stable")
        ts, val = bin_series(dev["ts"].to_numpy(np.int64), dev["total_allocated"].to_numpy(np.int64), CURVE_POINTS)
        name = f"{'cuda' if int(dtype) == 1 else 'cpu' if int(dtype) == 0 else f'type{int(dtype)}'}:{int(did)}"
        out.append(pd.DataFrame({"device": name, "ts": ts, "bytes": val}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["device", "ts", "bytes"])


def read_window_trace(url: str, run_key: str, rank: int, lo: int, hi: int, findings: pd.DataFrame) -> bytes | None:
    """The timeline window of ``rank`` as a Chrome/Perfetto trace with the findings on it (see
    :mod:`mlprof.dashboard.perfetto`); None without a cache."""
    folder = _folder(url, run_key)
    window = (int(lo), int(hi))
    gpu = read_table(folder, rank, "gpu", ["kind", "name", "ts", "end", "device", "stream"], window)
    host = read_table(folder, rank, "host", ["name", "ts", "end", "tid"], window)
    runtime = read_table(folder, rank, "runtime", ["name", "ts", "end", "tid"], window)
    if gpu is None and host is None:
        return None
    return window_trace(gpu, host, runtime, findings)


def _device_name(dtype: int, did: int) -> str:
    return f"{'cuda' if dtype == 1 else 'cpu' if dtype == 0 else f'type{dtype}'}:{did}"


def read_memory_window(url: str, run_key: str, rank: int, lo: int, hi: int) -> pd.DataFrame | None:
    """Allocated and reserved bytes per device in ``[lo, hi)`` (the timeline's window), at most
    CURVE_POINTS points per device and series; None when the rank has no allocator events."""
    frame = read_table(
        _folder(url, run_key), rank, "memory", ["ts", "device_type", "device_id", "total_allocated", "total_reserved"]
    )
    if frame is None or len(frame) == 0:
        return None
    frame = frame[(frame["ts"] >= int(lo)) & (frame["ts"] < int(hi)) & (frame["total_allocated"] >= 0)]
    out = []
    for (dtype, did), dev in frame.groupby(["device_type", "device_id"], sort=True):
        dev = dev.sort_values("ts", kind="stable")
        ts = dev["ts"].to_numpy(np.int64)
        for series in ("total_allocated", "total_reserved"):
            values = dev[series].to_numpy(np.int64)
            if series == "total_reserved" and (values < 0).all():
                continue  # older traces do not record reserved bytes
            t, v = bin_series(ts, values, CURVE_POINTS)
            what = "allocated" if series == "total_allocated" else "reserved"
            out.append(
                pd.DataFrame({"device": _device_name(int(dtype), int(did)), "series": what, "ts": t, "bytes": v})
            )
    return pd.concat(out, ignore_index=True) if out else None


def read_allocating_ops(url: str, run_key: str, rank: int, lo: int, hi: int, top: int = 10) -> pd.DataFrame | None:
    """The host ops that allocated most in ``[lo, hi)``: bytes and allocations per op name, per device.

    Each allocator event (``bytes > 0``) is charged to the innermost host op enclosing it on
    its thread (allocations outside any op go to ``(no op)``).
    """
    folder = _folder(url, run_key)
    window = (int(lo), int(hi))
    mem = read_table(folder, rank, "memory", ["ts", "tid", "device_type", "device_id", "bytes"])
    if mem is None or len(mem) == 0:
        return None
    mem = mem[(mem["ts"] >= window[0]) & (mem["ts"] < window[1]) & (mem["bytes"] > 0)].reset_index(drop=True)
    if len(mem) == 0:
        return None
    host = read_table(folder, rank, "host", ["name", "ts", "end", "tid"], window)
    ts = mem["ts"].to_numpy(np.int64)
    if host is not None and len(host):
        host = host.reset_index(drop=True)
        pos = innermost_enclosing(ts, ts, mem["tid"].to_numpy(np.int64), host)
        names = np.where(pos >= 0, host["name"].astype(str).to_numpy()[np.maximum(pos, 0)], "(no op)")
    else:
        names = np.full(len(mem), "(no op)", dtype=object)
    dtype = mem["device_type"].astype(np.int64)
    prefix = np.where(dtype == 1, "cuda", np.where(dtype == 0, "cpu", "type" + dtype.astype(str)))
    devices = pd.Series(prefix, dtype=object) + ":" + mem["device_id"].astype(np.int64).astype(str)
    frame = pd.DataFrame({"op": names, "device": devices.to_numpy(), "bytes": mem["bytes"].to_numpy(np.int64)})
    table = frame.groupby(["op", "device"], sort=False)["bytes"].agg(["sum", "count"]).reset_index()
    table = table.sort_values("sum", ascending=False, kind="stable").head(top)
    return pd.DataFrame(
        {
            "op": table["op"],
            "device": table["device"],
            "MiB allocated": (table["sum"] / (1 << 20)).round(3),
            "allocations": table["count"],
        }
    ).reset_index(drop=True)


def read_counter_series(url: str, run_key: str) -> pd.DataFrame | None:
    """NVML/DCGM samples of the run (mean per time bin, per device and metric); None when there are none."""
    frame = read_table(_folder(url, run_key), None, "counters", ["ts", "device", "metric", "value"])
    if frame is None or len(frame) == 0:
        return None
    frame["metric"] = frame["metric"].astype(str)
    frame = frame[frame["metric"].isin(COUNTER_METRICS)]
    out = []
    for (device, metric), part in frame.groupby(["device", "metric"], sort=True):
        part = part.sort_values("ts", kind="stable")
        ts, val = bin_series(part["ts"].to_numpy(np.int64), part["value"].to_numpy(np.float64), CURVE_POINTS, "mean")
        out.append(pd.DataFrame({"device": int(device), "metric": metric, "ts": ts, "value": val}))
    return pd.concat(out, ignore_index=True) if out else None


def cached_ranks(url: str, run_key: str) -> list[int]:
    return ranks_cached(_folder(url, run_key))


def category_ms(steps: pd.DataFrame) -> pd.DataFrame:
    """Per-step ms per category (a view of the store's ns rows)."""
    out = pd.DataFrame({"step": steps["step"].to_numpy(), "dur_ms": steps["dur_ns"].to_numpy() / 1e6})
    for c in CATEGORIES:
        out[c] = steps[f"{c}_ns"].to_numpy() / 1e6
    return out


cached_runs = st.cache_data(ttl=TTL_S, show_spinner=False)(read_runs)
cached_tags = st.cache_data(ttl=TTL_S, show_spinner=False)(read_tags)
cached_run = st.cache_data(ttl=TTL_S, show_spinner=False)(read_run)
cached_timeline = st.cache_data(ttl=TTL_S, show_spinner=False)(read_timeline)
cached_memory_window = st.cache_data(ttl=TTL_S, show_spinner=False)(read_memory_window)
cached_allocating_ops = st.cache_data(ttl=TTL_S, show_spinner=False)(read_allocating_ops)
cached_window_trace = st.cache_data(ttl=TTL_S, show_spinner=False)(read_window_trace)
cached_memory = st.cache_data(ttl=TTL_S, show_spinner=False)(read_memory)
cached_counter_series = st.cache_data(ttl=TTL_S, show_spinner=False)(read_counter_series)
cached_check = st.cache_data(ttl=TTL_S, show_spinner=False)(check_store)
