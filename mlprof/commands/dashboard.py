"""``mlprof dashboard``: start the Streamlit app on the run store."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard_command(
        store: str | None = typer.Option(None, "--store", help="Store file path or database URL."),
        port: int = typer.Option(8501, "--port", help="Port to serve on."),
        address: str = typer.Option("127.0.0.1", "--address", help="Address to listen on (0.0.0.0 for a team)."),
        headless: bool = typer.Option(True, "--headless/--open-browser", help="Do not open a browser window."),
    ) -> None:
        """Start the dashboard (Runs, Run, Compare pages) over the run store; read-only towards it."""
        from mlprof.dashboard.launch import launch

        raise typer.Exit(launch(store, port, address, headless))
