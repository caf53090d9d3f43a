"""A "ranks done" progress bar on stderr for multi-rank jobs (silent when stderr is not a terminal)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported when a bar is shown: ``mlprof analyze`` of one trace runs without it
    from rich.progress import Progress


class rank_progress:
    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task: object = None

    def __enter__(self) -> rank_progress:
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if total < 2 or not sys.stderr.isatty():
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("analysing ranks"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("ranks", total=total)
        self._bar.update(self._task, completed=done, total=total)  # type: ignore[arg-type]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
