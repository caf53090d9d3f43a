"""A placeholder for a field a result gave up to save memory, which raises when read.

A job's client keeps thousands of per-rank results. Some fields are dropped once nothing
needs them (a rank's replay graph when the job is not replayed together) or held packed
elsewhere (a rank's communication signature). Setting them to ``None`` would let a later
reader go on with nothing. The placeholder makes any read a bug that names where the data
went, and it pickles, so a result can still cross process boundaries.
"""

from __future__ import annotations

from typing import Any


class Released:
    """Stands for a field given up: any attribute read raises ``RuntimeError(message.format(name=...))``."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(self.message.format(name=name))

    def __reduce__(self) -> tuple[type[Released], tuple[str]]:
        return (Released, (self.message,))
