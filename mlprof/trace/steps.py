"""Where the training steps are.

``torch.profiler`` marks each step with a ``ProfilerStep#N`` range, and that is what
we use when it is there. Many real traces have none (a profiler used without
``prof.step()``, a hand-rolled ``record_function`` loop), and HTA then shows nothing;
we fall back to markers every training loop has, in this order, and the report says
which one was used:

1. a user-given regex (``--step-marker``), matched against host range names;
2. ``ProfilerStep#N``;
3. DataLoader ``__next__`` calls (the top of a typical loop);
4. ``Optimizer.step`` calls (the end of a typical loop).

With fallback markers a step runs from one marker's start to the next one's start;
the last step ends one median step after its start, or at the end of the trace if
that is sooner.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from mlprof.trace.vocabulary import DATALOADER, OPTIMIZER_STEP, PROFILER_STEP, names_matching


def empty_steps() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "step": np.empty(0, np.int64),
            "name": pd.Series([], dtype=str),
            "ts": np.empty(0, np.int64),
            "end": np.empty(0, np.int64),
            "dur": np.empty(0, np.int64),
        }
    )


def find_steps(host: pd.DataFrame, trace_end_ns: int, marker: str | None = None) -> tuple[pd.DataFrame, str]:
    """Return the steps table and a description of the marker that produced it."""
    if len(host) == 0:
        return empty_steps(), "none"
    if marker is not None:
        rows = host[names_matching(host["name"], re.compile(marker))]
        if len(rows):
            return _from_markers(rows, trace_end_ns), f"user marker /{marker}/"
        return empty_steps(), f"user marker /{marker}/ (no match)"
    is_profiler_step = names_matching(host["name"], PROFILER_STEP)
    if is_profiler_step.any():
        found = _profiler_steps(host, is_profiler_step.to_numpy())
        if found is not None:
            return found
        rows = host[is_profiler_step]
        rows = rows.drop_duplicates(subset=["name"], keep="first")
        digits = rows["name"].astype(str).str.extract(PROFILER_STEP.pattern, expand=False)
        sane = (digits.str.len() <= 18).to_numpy()  # a step number beyond int64 is junk, not a step
        rows, digits = rows[sane], digits[sane]
        if len(rows) == 0:
            return empty_steps(), "none"
        numbers = digits.astype(np.int64)
        steps = pd.DataFrame(
            {
                "step": numbers.to_numpy(),
                "name": rows["name"].astype(str).to_numpy(),
                "ts": rows["ts"].to_numpy(),
                "end": rows["end"].to_numpy(),
            }
        )
        steps["dur"] = steps["end"] - steps["ts"]
        return steps.sort_values("ts", ignore_index=True), "ProfilerStep"
    for pattern, label in ((DATALOADER, "DataLoader __next__"), (OPTIMIZER_STEP, "Optimizer.step")):
        rows = _outermost(host[names_matching(host["name"], pattern)])
        if len(rows) >= 2:
            return _from_markers(rows, trace_end_ns), f"{label} (no ProfilerStep markers)"
    return empty_steps(), "none"


def _profiler_steps(host: pd.DataFrame, mask: np.ndarray) -> tuple[pd.DataFrame, str] | None:
    """The ``ProfilerStep#N`` branch of :func:`find_steps` on numpy columns, for the common case.

    Same table as filtering the host table, ``drop_duplicates`` by name and
    ``str.extract`` of the number (those cost ~1 ms per small rank in pandas calls);
    ``None`` when a step number has non-ASCII digits, which the pandas path handles.
    """
    categorical: pd.Categorical = host["name"].array
    rows = np.flatnonzero(mask)
    codes = categorical.codes[rows]
    _, first = np.unique(codes, return_index=True)
    rows = rows[np.sort(first)]  # the first range of each name, in table order
    names: list[str] = categorical.categories.take(categorical.codes[rows]).tolist()
    digits = [match.group(1) if (match := PROFILER_STEP.search(n)) else "" for n in names]
    if not all(d.isascii() and d.isdigit() for d in digits):
        return None
    sane = np.array([len(d) <= 18 for d in digits], dtype=bool)  # a number beyond int64 is junk
    if not sane.any():
        return empty_steps(), "none"
    rows = rows[sane]
    steps = pd.DataFrame(
        {
            "step": np.array([int(d) for d, ok in zip(digits, sane, strict=True) if ok], dtype=np.int64),
            "name": np.array([n for n, ok in zip(names, sane, strict=True) if ok], dtype=object),
            "ts": host["ts"].to_numpy()[rows],
            "end": host["end"].to_numpy()[rows],
        }
    )
    steps["dur"] = steps["end"] - steps["ts"]
    return steps.sort_values("ts", ignore_index=True), "ProfilerStep"


def _outermost(rows: pd.DataFrame) -> pd.DataFrame:
    """Drop markers nested inside an earlier marker (``__next__`` inside ``enumerate``)."""
    if len(rows) < 2:
        return rows
    rows = rows.sort_values("ts")
    running_end = np.maximum.accumulate(rows["end"].to_numpy())
    nested = np.zeros(len(rows), dtype=bool)
    nested[1:] = rows["ts"].to_numpy()[1:] < running_end[:-1]
    return rows[~nested]


def _from_markers(rows: pd.DataFrame, trace_end_ns: int) -> pd.DataFrame:
    rows = _outermost(rows)
    starts = rows["ts"].to_numpy()
    if len(starts) == 1:
        ends = np.array([max(int(rows["end"].iloc[0]), trace_end_ns)])
    else:
        gaps = np.diff(starts)
        last_end = min(trace_end_ns, int(starts[-1]) + int(np.median(gaps)))
        last_end = max(last_end, int(rows["end"].iloc[-1]))
        ends = np.append(starts[1:], last_end)
    steps = pd.DataFrame(
        {
            "step": np.arange(len(starts), dtype=np.int64),
            "name": rows["name"].astype(str).to_numpy(),
            "ts": starts,
            "end": ends,
        }
    )
    steps["dur"] = steps["end"] - steps["ts"]
    return steps
