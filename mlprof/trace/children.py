"""Child processes reaped without waiting for them to give their memory back.

A forked child that has sent its results (the read-ahead, a what-if helper) ends right after, but its exit
unmaps a copy-on-write image of the parent's few hundred MB: 0-6.5 ms for the read-ahead of a 35 MB trace,
~7.5 ms for a helper of the 217 MB trace's analysis, which a blocking ``waitpid`` put on the analysis's path
three times. Such a child is reaped now if it has ended, else later: by the next call here (no waiting) or at
exit (by then long ended).
"""

from __future__ import annotations

import atexit
import contextlib
import os

_pending: set[int] = set()
_hooked: list[bool] = []


def reap(pid: int) -> None:
    """Wait for the child ``pid`` to end and reap it (nothing if it is not this process's child any more)."""
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)


def reap_soon(pid: int) -> None:
    """Reap the child ``pid`` if it has ended, else later (see the module docstring); the children held back
    by earlier calls are reaped too where they have ended."""
    _pending.add(pid)
    for held in sorted(_pending):
        try:
            ended = os.waitpid(held, os.WNOHANG)[0] != 0
        except OSError:  # already reaped (or not a child of this process)
            ended = True
        if ended:
            _pending.discard(held)
    if _pending and not _hooked:
        atexit.register(_reap_pending)
        _hooked.append(True)


def _reap_pending() -> None:
    while _pending:
        reap(_pending.pop())
