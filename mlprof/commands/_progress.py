"""A "reading trace" progress bar on stderr for large inputs (silent for small ones and non-terminals)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported when a bar is shown: ``mlprof analyze`` of a small trace runs without it
    from rich.progress import Progress

PROGRESS_MIN_BYTES = 16 << 20


def shows_progress(total: int) -> bool:
    """Whether reading an input of ``total`` bytes shows the bar: a large one, to a terminal."""
    return total >= PROGRESS_MIN_BYTES and sys.stderr.isatty()


class read_progress:
    """A progress bar on stderr for large inputs, silent for small ones and non-terminals."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task: object = None

    def __enter__(self) -> read_progress:
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if not shows_progress(total):
                return
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("reading trace"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("read", total=total)
        self._bar.update(self._task, completed=done, total=total)  # type: ignore[arg-type]

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
