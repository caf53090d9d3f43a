"""Downsampling event tables for drawing: a 1 GB trace still draws in a couple of seconds.

A browser cannot draw millions of bars, and at screen resolution it need not: events
on one lane (a GPU stream, a CPU thread) that are closer together than one pixel's
worth of time (``resolution_ns``) are merged into one *band* that keeps how many events
it holds and the name of the longest. Bands never hide time: the band covers the union
of its events plus gaps shorter than the resolution. Memory and counter curves are cut
into at most ``bins`` time bins, keeping each bin's maximum (memory: the peaks matter)
or mean (counters).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BAND_COLUMNS = ["lane", "ts", "end", "events", "top_name", "top_dur"]


def merge_bands(events: pd.DataFrame, resolution_ns: int) -> pd.DataFrame:
    """Events (``lane``, ``ts``, ``end``, ``name``) merged per lane into bands; see the module doc."""
    if len(events) == 0:
        return pd.DataFrame(columns=BAND_COLUMNS)
    frame = events[["lane", "ts", "end", "name"]].copy()
    frame["lane"] = frame["lane"].astype(str)
    frame = frame.sort_values(["lane", "ts"], kind="stable").reset_index(drop=True)
    lane_codes = pd.factorize(frame["lane"])[0]
    ts = frame["ts"].to_numpy(np.int64)
    end = np.maximum(frame["end"].to_numpy(np.int64), ts)
    reach = pd.Series(end).groupby(lane_codes).cummax().to_numpy(np.int64)
    prev_reach = np.empty_like(reach)
    prev_reach[0] = np.iinfo(np.int64).min
    prev_reach[1:] = reach[:-1]
    new_lane = np.ones(len(ts), dtype=bool)
    new_lane[1:] = lane_codes[1:] != lane_codes[:-1]
    new_band = new_lane | (ts > prev_reach + resolution_ns)
    band = np.cumsum(new_band) - 1
    frame["dur"] = end - ts
    frame["band"] = band
    grouped = frame.groupby("band", sort=True)
    longest = frame.loc[grouped["dur"].idxmax().to_numpy()]
    return pd.DataFrame(
        {
            "lane": grouped["lane"].first().to_numpy(),
            "ts": grouped["ts"].min().to_numpy(np.int64),
            "end": pd.Series(end).groupby(band).max().to_numpy(np.int64),
            "events": grouped.size().to_numpy(np.int64),
            "top_name": longest["name"].astype(str).to_numpy(),
            "top_dur": longest["dur"].to_numpy(np.int64),
        }
    )


def bin_series(ts: np.ndarray, values: np.ndarray, bins: int, how: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """At most ``bins`` points: each bin's first time and its max (or mean) value; input sorted by time."""
    if len(ts) <= bins:
        return ts, values
    edges = np.linspace(ts[0], ts[-1], bins + 1)
    starts = np.unique(np.searchsorted(ts, edges[:-1], side="left"))
    starts = starts[starts < len(ts)]
    if how == "mean":
        sums = np.add.reduceat(values.astype(np.float64), starts)
        counts = np.diff(np.append(starts, len(ts)))
        return ts[starts], sums / counts
    return ts[starts], np.maximum.reduceat(values, starts)
