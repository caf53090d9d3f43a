"""Which steps are steady state: warm-up, outlier and partial steps set aside from per-step costs.

Every per-step figure mlprof reports (the breakdown, each finding's time lost and
expected speedup, the replay, ``mlprof compare``) is a mean or median over the
*analysed* steps. A recording often starts with steps that are not what the job does
for the rest of its life (lazy CUDA module loading in the first launches, the caching
allocator's start-up ``cudaMalloc``/``cudaFree``, cuDNN autotuning: a 4.5 s first
iteration among 150 ms ones) and can hold a step far above the others (a GC pause,
a checkpoint, the profiler flushing) or a last step cut short. Averaged in, one such
step moves every per-step cost, and a fix would be credited with time the job does
not spend in steady state.

The rule (:func:`steady_state`), with ``m`` the median step and ``s`` the robust
spread ``1.4826 * MAD`` (the standard deviation for normal noise, unmoved by the
outliers themselves) over all the steps:

* **warm-up**: the first steps of the recording, one after another while each is
  either slower than ``m + max(2 s, 20% of m)`` or carries one-off start-up work
  (allocator calls, module loading, lazily loaded kernel launches taking
  over ``max(1 ms, 50x`` the median kernel launch)) whose time exceeds the same work's
  median in the later steps by at least 5% of ``m``;
* **outlier**: any other step slower than ``m' + max(5 s', 25% of m')``, where ``m'``
  and ``s'`` are the median and spread of the steps after the warm-up, unless more
  than a fifth of the steps are even halfway from ``m'`` to that limit (then slow
  steps are part of the workload, e.g. recurring DataLoader stalls, and are kept);
* **partial**: the last step when it is shorter than half of ``m'`` (the profiler
  stopped in it, or a fallback marker's last step was estimated).

At most half of the steps are set aside (warm-up first, then partial, then the
farthest outliers); with fewer than three steps nothing is, as there is no median to
stand on. ``--steps`` overrides the rule: the steps the user named are analysed as
they are. The thresholds are the module constants below; the README's *Steady state*
section says the same for users.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pandas as pd

from mlprof.trace.vocabulary import ALLOC_RUNTIME, name_mask

if TYPE_CHECKING:
    from mlprof.trace.model import Trace

MAD_TO_SIGMA = 1.4826
"""MAD times this is the standard deviation of normally distributed noise."""
MIN_STEPS = 3
"""Fewer steps than this: nothing is set aside."""
WARMUP_SIGMAS = 2.0
WARMUP_SHARE = 0.20
"""A leading step slower than ``median + max(2 spread, 20% of the median)`` is warm-up."""
OUTLIER_SIGMAS = 5.0
OUTLIER_SHARE = 0.25
"""Any other step slower than ``median + max(5 spread, 25% of the median)`` is an outlier..."""
MAX_OUTLIER_SHARE = 0.20
"""...unless more than this share of the steps is even halfway there (then slow steps are the workload)."""
PARTIAL_SHARE = 0.5
"""The last step shorter than this share of the median is partial."""
ONE_OFF_SHARE = 0.05
"""One-off start-up work counts when it exceeds its later-step median by 5% of the median step."""
LAZY_LAUNCH_MIN_NS = 1_000_000
LAZY_LAUNCH_RATIO = 50.0
"""A launch call slower than ``max(1 ms, 50x the median launch)`` is taken as lazy module loading."""
MAX_SET_ASIDE_SHARE = 0.5
"""Never set aside more than half of the steps."""

MODULE_LOAD_RUNTIME = re.compile(
    r"^cu(ModuleLoad\w*|ModuleGetFunction|ModuleGetGlobal\w*|LibraryLoad\w*|LibraryGetKernel|KernelGetFunction)$"
    r"|^hip(ModuleLoad\w*|ModuleGetFunction)$"
)
"""Driver calls that load a CUDA/HIP module (what lazy loading does inside the first launches)."""

KERNEL_LAUNCH_RUNTIME = re.compile(r"LaunchKernel|LaunchCooperativeKernel|^cuLaunch|^hipExtLaunch")
"""Launch calls of kernels (copies are not: a pageable ``cudaMemcpyAsync`` blocks in every step)."""

REASONS = ("warm-up", "partial", "outlier")


class SetAsideStep(msgspec.Struct, frozen=True):
    """One step left out of the per-step costs, and why."""

    step: int
    dur_ns: int
    reason: str
    """``warm-up``, ``outlier`` or ``partial``."""
    detail: str
    """The measurement behind the reason, in words (durations in ms)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "dur_ms": round(self.dur_ns / 1e6, 6),
            "reason": self.reason,
            "detail": self.detail,
        }


class SteadyState(msgspec.Struct, frozen=True):
    """The verdict on one rank's steps: which are steady, which were set aside and why."""

    steady: tuple[int, ...]
    """Step numbers analysed, in time order."""
    set_aside: tuple[SetAsideStep, ...] = ()
    median_ns: float | None = None
    """Median of all the steps (the reference of the rule); None without steps."""
    spread_ns: float | None = None
    """``1.4826 * MAD`` of all the steps."""
    overridden: bool = False
    """``--steps`` named the steps: the rule was not applied."""
    notes: tuple[str, ...] = msgspec.field(default_factory=tuple)

    @property
    def set_aside_steps(self) -> list[int]:
        return [s.step for s in self.set_aside]

    def is_steady(self, steps: np.ndarray | pd.Series) -> np.ndarray:
        """Boolean mask: which of these step numbers are steady."""
        return np.isin(np.asarray(steps), np.asarray(self.steady, dtype=np.int64))

    def select(self, steps: pd.DataFrame) -> pd.DataFrame:
        """The rows of a table with a ``step`` column that are steady (all rows when nothing was set aside)."""
        if not self.set_aside or len(steps) == 0:
            return steps
        return steps[self.is_steady(steps["step"].to_numpy())].reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steady_steps": list(self.steady),
            "set_aside": [s.to_dict() for s in self.set_aside],
            "median_ms": None if self.median_ns is None else round(self.median_ns / 1e6, 6),
            "spread_ms": None if self.spread_ns is None else round(self.spread_ns / 1e6, 6),
            "overridden_by_steps": self.overridden,
            "notes": list(self.notes),
        }


def steady_state(steps: pd.DataFrame, trace: Trace | None = None, *, overridden: bool = False) -> SteadyState:
    """Apply the rule of the module docstring to a steps table (``step``, ``ts``, ``dur`` in ns).

    ``trace`` supplies the one-off start-up signals of the leading steps (allocator
    calls, module loading, lazily loaded launches); without it only durations are used.
    ``overridden`` (``--steps`` given) keeps every step and says so.
    """
    numbers = steps["step"].to_numpy(np.int64) if len(steps) else np.empty(0, np.int64)
    if len(steps) == 0:
        return SteadyState(steady=())
    order = np.argsort(steps["ts"].to_numpy(np.int64), kind="stable")
    numbers = numbers[order]
    dur = steps["dur"].to_numpy(np.int64)[order]
    median = float(np.median(dur))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(dur - median)))
    if overridden:
        return SteadyState(
            steady=tuple(int(s) for s in numbers),
            median_ns=median,
            spread_ns=spread,
            overridden=True,
            notes=("--steps named the steps: no step was set aside as warm-up or outlier",),
        )
    if len(dur) < MIN_STEPS:
        return SteadyState(
            steady=tuple(int(s) for s in numbers),
            median_ns=median,
            spread_ns=spread,
            notes=(f"only {len(dur)} step(s): too few to tell warm-up or outlier steps from steady ones",),
        )
    one_off = (
        one_off_ns(trace, steps["ts"].to_numpy(np.int64)[order], steps["ts"].to_numpy(np.int64)[order] + dur)
        if trace is not None
        else None
    )
    reasons, limits = _classify(dur.astype(np.float64), one_off)
    return _verdict(numbers, dur, reasons, limits, median, spread, one_off)


def classify_durations(dur: np.ndarray, one_off: dict[str, np.ndarray] | None = None) -> list[str | None]:
    """The reason each step (in time order) is set aside, or None when it is steady.

    ``one_off`` maps a signal name (``allocator``, ``module loading``, ``lazy launches``)
    to ns per step. Pure function of the durations and signals; the half-of-the-steps cap
    is applied here.
    """
    return _classify(np.asarray(dur, dtype=np.float64), one_off)[0]


def _robust(values: np.ndarray) -> tuple[float, float]:
    """Median and ``1.4826 * MAD``."""
    median = float(np.median(values))
    return median, MAD_TO_SIGMA * float(np.median(np.abs(values - median)))


def _classify(dur: np.ndarray, one_off: dict[str, np.ndarray] | None) -> tuple[list[str | None], dict[str, float]]:
    """Reasons per step, and the limits used (ns): ``warm``, ``outlier``, ``partial``, ``rest_median``.

    Warm-up is judged against the median of all the steps; outliers and the partial last
    step against the median and spread of the steps left after the warm-up, so that a
    long warm-up does not raise the bar for the rest.
    """
    n = len(dur)
    reasons: list[str | None] = [None] * n
    if n < MIN_STEPS:
        return reasons, {}
    median, spread = _robust(dur)
    warm_limit = median + max(WARMUP_SIGMAS * spread, WARMUP_SHARE * median)
    cap = int(MAX_SET_ASIDE_SHARE * n)
    excess = _one_off_excess(one_off, n)
    warm = 0
    while warm < min(cap, n - 1) and (dur[warm] > warm_limit or excess[warm] >= ONE_OFF_SHARE * median):
        reasons[warm] = "warm-up"  # leading steps, one after another, at most the cap
        warm += 1
    rest_median, rest_spread = _robust(dur[warm:])
    out_limit = rest_median + max(OUTLIER_SIGMAS * rest_spread, OUTLIER_SHARE * rest_median)
    partial_limit = PARTIAL_SHARE * rest_median
    limits = {"warm": warm_limit, "outlier": out_limit, "partial": partial_limit, "rest_median": rest_median}
    budget = cap - warm
    if budget > 0 and reasons[-1] is None and dur[-1] < partial_limit:
        reasons[-1] = "partial"
        budget -= 1
    slow = [i for i in range(n) if reasons[i] is None and dur[i] > out_limit]
    slowish = sum(1 for i in range(n) if reasons[i] is None and dur[i] > (rest_median + out_limit) / 2)
    if slow and slowish <= MAX_OUTLIER_SHARE * n:
        for i in sorted(slow, key=lambda i: -dur[i])[:budget]:  # the farthest first
            reasons[i] = "outlier"
    return reasons, limits


def _one_off_excess(one_off: dict[str, np.ndarray] | None, n: int) -> np.ndarray:
    """Per step: one-off work beyond what the same signals cost in a typical later step (ns)."""
    excess = np.zeros(n)
    if not one_off:
        return excess
    total = np.zeros(n)
    for values in one_off.values():
        total += np.asarray(values, dtype=np.float64)
    typical = float(np.median(total[n // 2 :]))  # the later half of the recording is the reference
    return total - typical


def one_off_ns(trace: Trace, starts: np.ndarray, ends: np.ndarray) -> dict[str, np.ndarray]:
    """ns per step of start-up work: allocator calls, module loading, lazily loaded launches.

    A runtime call belongs to the step in which it starts. A kernel launch is taken as lazily
    loaded (the driver loading the kernel's module inside the first launch) when it
    takes over ``max(1 ms, 50x`` the median launch); only its time beyond the median
    launch counts.
    """
    n = len(starts)
    out = {name: np.zeros(n) for name in ("allocator", "module loading", "lazy launches")}
    runtime = trace.runtime
    if n == 0 or len(runtime) == 0:
        return out
    ts = runtime["ts"].to_numpy(np.int64)
    dur = runtime["dur"].to_numpy(np.int64)
    pos = np.searchsorted(starts, ts, side="right") - 1
    inside = pos >= 0
    inside[inside] &= ts[inside] < ends[pos[inside]]
    names = runtime["name"]
    launch = name_mask(names, KERNEL_LAUNCH_RUNTIME)
    masks = {"allocator": name_mask(names, ALLOC_RUNTIME), "module loading": name_mask(names, MODULE_LOAD_RUNTIME)}
    for key, mask in masks.items():
        sel = mask & inside
        out[key] = np.bincount(pos[sel], weights=dur[sel], minlength=n).astype(np.float64)[:n]
    if launch.any():
        typical = float(np.median(dur[launch]))
        slow = launch & inside & (dur > max(LAZY_LAUNCH_MIN_NS, LAZY_LAUNCH_RATIO * typical))
        if slow.any():
            lazy = np.bincount(pos[slow], weights=dur[slow] - typical, minlength=n)
            out["lazy launches"] = lazy.astype(np.float64)[:n]
    return out


def _verdict(
    numbers: np.ndarray,
    dur: np.ndarray,
    reasons: list[str | None],
    limits: dict[str, float],
    median: float,
    spread: float,
    one_off: dict[str, np.ndarray] | None,
) -> SteadyState:
    n = len(dur)
    excess = _one_off_excess(one_off, n)
    rest = limits["rest_median"]
    set_aside = []
    for i, reason in enumerate(reasons):
        if reason is None:
            continue
        d = float(dur[i])
        if reason == "warm-up":
            parts = [
                f"step {i + 1} of the recording, {d / 1e6:.2f} ms, {d / median:.2f}x the median {median / 1e6:.2f} ms"
            ]
            if d > limits["warm"]:
                parts.append(f"above the warm-up limit {limits['warm'] / 1e6:.2f} ms")
            if one_off is not None and excess[i] >= ONE_OFF_SHARE * median:
                signals = [f"{v[i] / 1e6:.2f} ms {k}" for k, v in one_off.items() if v[i] > 0]
                parts.append("one-off start-up work: " + ", ".join(signals))
            detail = "; ".join(parts)
        elif reason == "outlier":
            detail = (
                f"{d / 1e6:.2f} ms, {d / rest:.2f}x the median {rest / 1e6:.2f} ms of the steps after warm-up; "
                f"above the outlier limit {limits['outlier'] / 1e6:.2f} ms"
            )
        else:
            detail = (
                f"last step, {d / 1e6:.2f} ms, {d / rest:.2f}x the median {rest / 1e6:.2f} ms: cut short "
                f"(under {PARTIAL_SHARE:.0%} of the median)"
            )
        set_aside.append(SetAsideStep(step=int(numbers[i]), dur_ns=int(dur[i]), reason=reason, detail=detail))
    notes: list[str] = []
    kept_slow = int(((dur > limits["outlier"]) & np.array([r is None for r in reasons])).sum()) if limits else 0
    if kept_slow:
        notes.append(
            f"{kept_slow} step(s) slower than the outlier limit {limits['outlier'] / 1e6:.2f} ms were kept: slow "
            "steps are frequent here (over a fifth of the steps are halfway there, or half would be set aside), "
            "so they are the workload"
        )
    steady = tuple(int(s) for s, r in zip(numbers, reasons, strict=True) if r is None)
    return SteadyState(
        steady=steady, set_aside=tuple(set_aside), median_ns=median, spread_ns=spread, notes=tuple(notes)
    )
