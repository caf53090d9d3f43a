"""``mlprof ingest``: record a run in the run store."""

from __future__ import annotations

from pathlib import Path

import typer

from mlprof.untrusted import plain


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest_command(
        path: Path = typer.Argument(
            ..., help="A trace file, a run folder from mlprof.profile, or a directory of per-rank traces."
        ),
        name: str | None = typer.Option(
            None, "--name", help="Run name (default: meta.json 'run', else the file name)."
        ),
        tag: list[str] | None = typer.Option(
            None, "--tag", help="A key=value tag; repeatable (adds to meta.json tags)."
        ),
        store: str | None = typer.Option(
            None, "--store", help="Store file path or database URL (default $MLPROF_STORE, else ~/.mlprof/mlprof.db)."
        ),
        config: Path | None = typer.Option(None, "--config", help="Thresholds file, as for mlprof analyze."),
        gpu_hours: float | None = typer.Option(
            None, "--gpu-hours", help="GPU-hours the whole job cost (default: recorded wall time x GPUs)."
        ),
        flops_per_step: float | None = typer.Option(
            None, "--flops-per-step", help="The model's FLOPs per training step, for MFU on the dashboard."
        ),
    ) -> None:
        """Analyse a trace and record the run (metadata, steps, findings, counters) in the run store.

        A run folder with several profiling cycles (cycles/<K>/) records one run per cycle.
        """
        from mlprof.commands._progress import read_progress as _progress
        from mlprof.store import ingest_runs, parse_tags

        with _progress() as on_progress:
            results = ingest_runs(
                path,
                name,
                parse_tags(tag),
                store,
                config_path=config,
                gpu_hours=gpu_hours,
                model_flops_per_step=flops_per_step,
                on_progress=on_progress,
            )
        for result in results:
            verb = "recorded" if result.created else "already recorded (same inputs)"
            print(plain(f"run {result.run_id} '{result.name}' {verb} in {result.store} ({result.seconds:.1f} s)"))
