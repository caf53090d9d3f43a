"""Facts derived from a trace's tables, computed once per table and reused by every analyzer and rule.

Analysing one rank asks the same questions many times: which runtime calls are
syncs, which copies go host-to-device, what class each kernel is, the attribution
layers. On small traces (a rank of a multi-rank job) pandas' fixed cost per
operation, not the number of events, dominated: the same masks and joins were
rebuilt by the attribution, the causes and several rules, ~80 ms per rank.

A memo lives beside the object it was computed from (a table, a trace, a
categorical's categories) and dies with it; an entry also records the other
objects it was computed from and is recomputed when any of them was replaced
(``trace.gpu = ...``). Tables are read-only after loading (nothing in mlprof
edits a loaded table in place); cached numpy arrays are marked read-only so a
caller that tries to edit one fails loudly instead of corrupting later answers.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import numpy as np

T = TypeVar("T")

_MEMOS: dict[int, dict[Any, tuple[tuple[weakref.ref[Any], ...], Any]]] = {}


def _memo_for(owner: object) -> dict[Any, tuple[tuple[weakref.ref[Any], ...], Any]]:
    key = id(owner)
    memo = _MEMOS.get(key)
    if memo is None:
        memo = {}
        _MEMOS[key] = memo
        weakref.finalize(owner, _MEMOS.pop, key, None)
    return memo


def cached(owner: object, name: Any, compute: Callable[[], T], *deps: object) -> T:
    """``compute()``, once per ``owner`` and ``name`` while ``deps`` are the same objects.

    ``owner`` and ``deps`` must support weak references (DataFrames, Indexes, traces do).
    """
    memo = _memo_for(owner)
    entry = memo.get(name)
    if entry is not None:
        refs, value = entry
        if len(refs) == len(deps) and all(r() is d for r, d in zip(refs, deps, strict=True)):
            return value
    value = compute()
    _freeze(value)
    memo[name] = (tuple(weakref.ref(d) for d in deps), value)
    return value


def forget(owner: object, name: Any) -> None:
    """Drop one entry (a large one whose last reader is done with it)."""
    memo = _MEMOS.get(id(owner))
    if memo is not None:
        memo.pop(name, None)


def _freeze(value: object) -> None:
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, (tuple, list)):
        for v in value:
            _freeze(v)
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _freeze(getattr(value, name))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _freeze(getattr(value, f.name))
