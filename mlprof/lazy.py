"""Names of a package loaded on first use (PEP 562), so that importing the package stays cheap.

``import mlprof`` must not pull pandas into a training job (the collectors), and importing
:mod:`mlprof.trace.build` must not import pandas either (the CLI's read-ahead process decodes a
trace while the main process imports it). Standard library only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
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
