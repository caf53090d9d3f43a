"""``mlprof runs``: the runs in the store, in the terminal."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("runs")
    def runs_command(
        tag: list[str] | None = typer.Option(None, "--tag", help="Only runs with this key=value tag; repeatable."),
        since: str | None = typer.Option(None, "--since", help="Only runs started on or after this date (YYYY-MM-DD)."),
        gpu: str | None = typer.Option(None, "--gpu", help="Only runs whose GPU name contains this text."),
        sort: str = typer.Option("date", "--sort", help="date, step_time, gpu_busy, speedup, name or ingested."),
        limit: int = typer.Option(50, "--limit", help="Show at most this many runs."),
        store: str | None = typer.Option(None, "--store", help="Store file path or database URL."),
    ) -> None:
        """List recorded runs: step time, GPU busy, the top finding and its expected speedup."""
        import sys

        from rich.console import Console

        from mlprof.commands._store_table import print_runs

        print_runs(Console(width=None if sys.stdout.isatty() else 200), tag, since, gpu, sort, limit, store)
