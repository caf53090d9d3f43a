"""Names of a package loaded on first use (PEP 562), so that importing the package stays cheap.

``import mlprof`` must not pull pandas into a training job (the collectors), and importing
:mod:`mlprof.trace.build` must not import pandas either (the CLI's read-ahead process decodes a
trace while the main process imports it). Standard library only.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
from collections.abc import Callable, Iterator
from typing import Any


def lazy_getattr(package: str, namespace: dict[str, Any], table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``table[name]`` (a module path) on first use of ``name``
    and keeps the value in ``namespace`` (the package's ``globals()``), so later reads cost nothing."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


@contextlib.contextmanager
def imports_held(*, freeze: bool = False) -> Iterator[None]:
    """Imports made with the cyclic garbage collector off and Ctrl-C/SIGTERM held back until they are done;
    with ``freeze``, what they made is frozen after (:func:`gc.freeze`: not walked by later collections).

    numpy, pandas and mlprof's modules make objects that live as long as the process, and the collector ran
    ~170 times over them while they were imported (0.03-0.04 s of a ~0.6 s ``mlprof analyze``); a signal
    raised inside an extension module's initialisation (numpy's datetime capsule) came out as an ImportError,
    "internal error" (exit 3) instead of "interrupted" (130). The CLI's fast path imports the command's
    modules this way (:func:`mlprof.__main__._import_without_collections`), and the read-ahead the reader
    before it forks (:mod:`mlprof.trace.prefetch`).
    """
    from mlprof.interrupts import signals_deferred

    enabled = gc.isenabled()
    gc.disable()
    try:
        with signals_deferred():
            yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()
