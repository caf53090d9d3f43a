"""The table ``mlprof runs`` prints (kept out of the command module so imports stay lazy)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
from rich.console import Console
from rich.table import Table

from mlprof.errors import UsageError
from mlprof.untrusted import term

NAME_CHARS = 200
"""Run names, tags and GPU names longer than this are shortened in the table (``…``)."""


def parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: write a date as YYYY-MM-DD (or an ISO date and time)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def print_runs(
    console: Console,
    tag: list[str] | None,
    since: str | None,
    gpu: str | None,
    sort: str,
    limit: int,
    store: str | None,
) -> None:
    from mlprof.store import parse_tags, resolve_store
    from mlprof.store.engine import open_engine, store_errors
    from mlprof.store.queries import SORT_KEYS, list_runs
    from mlprof.store.schema import check_readable

    if sort not in SORT_KEYS:
        raise UsageError(f"--sort {sort}: choose one of {', '.join(SORT_KEYS)}")
    if limit < 1:
        raise UsageError("--limit: must be 1 or more")
    tags = parse_tags(tag)
    since_dt = parse_date(since) if since else None
    location = resolve_store(store)
    engine = open_engine(location, read_only=True)
    try:
        with store_errors(location), engine.connect() as conn:
            check_readable(conn)
            runs = list_runs(conn, tags=tags, since=since_dt, gpu=gpu, sort=sort, limit=limit)
    finally:
        engine.dispose()
    if len(runs) == 0:
        console.print(term(f"no runs match in {location.display()}"))
        return
    table = Table(title=term(f"runs in {location.display()}"), title_justify="left")
    for col, justify in (
        ("id", "right"),
        ("name", "left"),
        ("started (UTC)", "left"),
        ("tags", "left"),
        ("GPU", "left"),
        ("ranks", "right"),
        ("step ms (median)", "right"),
        ("GPU busy %", "right"),
        ("top finding", "left"),
        ("speedup", "right"),
        ("all fixes", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in runs.itertuples(index=False):
        table.add_row(
            str(r.id),
            term(r.name, max_chars=NAME_CHARS),
            _date(r.started_at),
            term(" ".join(f"{k}={v}" for k, v in r.tags.items()), max_chars=NAME_CHARS),
            term(r.gpu, max_chars=NAME_CHARS),
            str(r.ranks),
            _num(r.step_ms_median, 2),
            _num(r.gpu_busy_pct, 1),
            term(r.top_rule) if isinstance(r.top_rule, str) else "-",
            _x(r.top_speedup),
            _x(r.plan_speedup),
        )
    console.print(table)
    console.print(
        "step ms: median step time over the analysed steps (mean over ranks); speedup: the top finding's expected "
        "speedup; all fixes: the plan's cumulative speedup (mlprof analyze explains both)."
    )


def _date(value: object) -> str:
    return "-" if value is None or pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


def _num(value: object, digits: int) -> str:
    return "-" if value is None or pd.isna(value) else f"{float(value):,.{digits}f}"  # type: ignore[arg-type]


def _x(value: object) -> str:
    return "-" if value is None or pd.isna(value) else f"{float(value):.2f}x"  # type: ignore[arg-type]
