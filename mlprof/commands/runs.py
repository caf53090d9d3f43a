"""``mlprof runs``: the runs in the store, in the terminal; ``mlprof runs delete``: remove some."""

from __future__ import annotations

import typer

from mlprof.untrusted import plain


def register(app: typer.Typer) -> None:
    runs_app = typer.Typer(help="List recorded runs, or delete some (mlprof runs delete ID...).")

    @runs_app.callback(invoke_without_command=True)
    def runs_command(
        ctx: typer.Context,
        tag: list[str] | None = typer.Option(None, "--tag", help="Only runs with this key=value tag; repeatable."),
        since: str | None = typer.Option(None, "--since", help="Only runs started on or after this date (YYYY-MM-DD)."),
        gpu: str | None = typer.Option(None, "--gpu", help="Only runs whose GPU name contains this text."),
        sort: str = typer.Option("date", "--sort", help="date, step_time, gpu_busy, speedup, name or ingested."),
        limit: int = typer.Option(50, "--limit", help="Show at most this many runs."),
        store: str | None = typer.Option(None, "--store", help="Store file path or database URL."),
    ) -> None:
        """List recorded runs: step time, GPU busy, the top finding and its expected speedup."""
        if ctx.invoked_subcommand is not None:
            return
        import sys

        from rich.console import Console

        from mlprof.commands._store_table import print_runs

        print_runs(Console(width=None if sys.stdout.isatty() else 200), tag, since, gpu, sort, limit, store)

    @runs_app.command("delete")
    def delete_command(
        run_ids: list[str] = typer.Argument(
            ..., metavar="ID...", help="Run ids as `mlprof runs` lists them (12 or run:12)."
        ),
        store: str | None = typer.Option(None, "--store", help="Store file path or database URL."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask; required when stdin is not a terminal."),
    ) -> None:
        """Delete runs from the store: their rows (in one transaction) and their cached event tables."""
        import sys

        from mlprof.errors import UsageError
        from mlprof.store.delete import delete_runs, find_runs, parse_run_ids

        ids = parse_run_ids(run_ids)
        runs = find_runs(ids, store)
        listed = ", ".join(f"{r.run_id} '{plain(r.name)}'" for r in runs)
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"would delete run(s) {listed}; pass --yes to delete when stdin is not a terminal")
            for r in runs:
                print(plain(f"run {r.run_id} '{r.name}' from {r.source_path}"))
            if not typer.confirm(f"Delete {len(runs)} run(s) and their cached tables?", default=False):
                print("nothing deleted")
                return
        for r in delete_runs(ids, store):
            print(plain(f"deleted run {r.run_id} '{r.name}'"))

    app.add_typer(runs_app, name="runs")
