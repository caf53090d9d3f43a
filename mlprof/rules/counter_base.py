"""Rules over GPU counters (NVML, DCGM, nvidia-smi), with or without a trace.

Counter rules see sampled counters, not events: a :class:`CounterContext` instead of
a :class:`~mlprof.rules.base.RankContext`. They claim no cause (the trace's causes are
the trace rules'), so their findings never enter the trace's plan. Their "step" is the
time the counters cover: ``step_ns`` is that span and ``time_lost_ns_per_step`` the time
lost over it, so ``expected_speedup`` is what removing the measured idle time would
give the whole recording. Where the cost is not time (memory growth, throttling) the
time lost is 0, the speedup 1.0, and the severity says how urgent it is.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import pandas as pd

from mlprof.analyzers.counter_timeline import (
    MemoryTrend,
    ThrottleShare,
    UtilOverlap,
    memory_trends,
    throttle_shares,
    util_overlap,
)
from mlprof.rules.base import Finding, OptionsT, RankContext, Rule

COUNTER_CATEGORIES: tuple[str, ...] = ("gpu_utilisation", "gpu_clocks", "memory_leak")


class CounterContext:
    """What a counter rule may read: the counters table and measurements over it, computed on first use."""

    def __init__(self, counters: pd.DataFrame, time_base: str = "epoch") -> None:
        self.counters = counters
        """Rows ``ts, device, metric, value, source`` (see :mod:`mlprof.counters.metrics`)."""
        self.time_base = time_base
        self.verdicts: dict[str, str] = {}
        """Rules that looked and found nothing say why here."""
        self._overlaps: dict[float, UtilOverlap | None] = {}
        self._throttles: dict[tuple[str, ...], list[ThrottleShare]] = {}

    @cached_property
    def devices(self) -> list[int]:
        return sorted(int(d) for d in pd.unique(self.counters["device"]))

    @cached_property
    def metrics(self) -> set[str]:
        return {str(m) for m in pd.unique(self.counters["metric"].astype(str))}

    @cached_property
    def span_ns(self) -> int:
        ts = self.counters["ts"]
        return int(ts.max() - ts.min()) if len(ts) else 0

    def util(self, low_util_pct: float) -> UtilOverlap | None:
        """Low-utilisation time per device and across devices (None without ``gpu_util_pct``)."""
        if low_util_pct not in self._overlaps:
            self._overlaps[low_util_pct] = util_overlap(self.counters, low_util_pct)
        return self._overlaps[low_util_pct]

    def throttles(self, reasons: tuple[str, ...]) -> list[ThrottleShare]:
        if reasons not in self._throttles:
            self._throttles[reasons] = throttle_shares(self.counters, reasons)
        return self._throttles[reasons]

    @cached_property
    def memory(self) -> list[MemoryTrend]:
        return memory_trends(self.counters)


class CounterRule(Rule[OptionsT]):
    """A rule that reads counters: implement :meth:`check_counters`; :meth:`check` (traces) finds nothing."""

    needs_device: ClassVar[bool] = False

    def check(self, ctx: RankContext, opts: OptionsT) -> list[Finding]:
        return []

    def check_counters(self, ctx: CounterContext, opts: OptionsT) -> list[Finding]:
        raise NotImplementedError

    def counter_finding(self, ctx: CounterContext, basis_ns: int, **kwargs: Any) -> Finding:
        """A finding whose "step" is ``basis_ns``: the recorded time its time lost is measured over."""
        kwargs.setdefault("ranks", [])
        return Finding(rule=self.id, name=self.name, category=self.category, step_ns=float(basis_ns), **kwargs)


def duration_text(ns: float) -> str:
    """``42.0 s``, ``12.5 min`` or ``3.1 h``."""
    seconds = ns / 1e9
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
