"""The table ``mlprof runs`` prints (kept out of the command module so imports stay lazy)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from mlprof.errors import UsageError
from mlprof.untrusted import plain, term

NAME_CHARS = 200
"""Run names, tags and GPU names longer than this are shortened in the table (``…``)."""
COLUMNS = (
    ("id", "right", 0),
    ("name", "left", 0),
    ("started (UTC)", "left", 0),
    ("tags", "left", 1),
    ("GPU", "left", 4),
    ("ranks", "right", 3),
    ("step ms (median)", "right", 0),
    ("GPU busy %", "right", 2),
    ("top finding", "left", 0),
    ("speedup", "right", 0),
    ("all fixes", "right", 0),
)
"""Columns in order, with the order in which a narrow terminal drops them (1 first; 0: always shown)."""
TEXT_COLUMNS = ("name", "tags", "GPU")
TEXT_MIN = 12
"""Text columns shorten (with …) down to this many characters; headers and numbers are never cut."""


SHORT_LABELS = {"started (UTC)": "started", "step ms (median)": "step ms", "top finding": "top fix"}
"""Headers on a narrow terminal (the line under the table says what each figure is)."""


def fit_columns(rows: list[dict[str, str]], width: int) -> dict[str, tuple[str, int]]:
    """The columns that fit ``width``: each one's header and width, dropping the least scanned first.

    Headers and numbers keep their whole width; a text column needs at least ``TEXT_MIN``
    characters and takes what is left. Each column costs 3 more (padding and a rule).
    When even the columns always shown do not fit, shorter headers are used and the
    start date loses its time.
    """
    for short in (False, True):
        need: dict[str, tuple[str, int]] = {}
        for col, _j, _d in COLUMNS:
            label = SHORT_LABELS.get(col, col) if short else col
            values = [r[col][:10] if short and col == "started (UTC)" else r[col] for r in rows]
            size = TEXT_MIN if col in TEXT_COLUMNS else max([len(label), *(len(v) for v in values)])
            need[col] = (label, size)
        shown = [col for col, _j, _d in COLUMNS]
        for col, _j, _d in sorted((c for c in COLUMNS if c[2]), key=lambda c: c[2]):
            if sum(need[c][1] + 3 for c in shown) <= width:
                break
            shown.remove(col)
        if sum(need[c][1] + 3 for c in shown) <= width:
            break
    return {c: need[c] for c in shown}


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
    rows = []
    for r in runs.itertuples(index=False):
        rows.append(
            {
                "id": str(r.id),
                "name": plain(r.name, max_chars=NAME_CHARS),
                "started (UTC)": _date(r.started_at),
                "tags": plain(" ".join(f"{k}={v}" for k, v in r.tags.items()), max_chars=NAME_CHARS),
                "GPU": plain(r.gpu, max_chars=NAME_CHARS),
                "ranks": str(r.ranks),
                "step ms (median)": _num(r.step_ms_median, 2),
                "GPU busy %": _num(r.gpu_busy_pct, 1),
                "top finding": plain(r.top_rule) if isinstance(r.top_rule, str) else "-",
                "speedup": _x(r.top_speedup),
                "all fixes": _x(r.plan_speedup),
            }
        )
    shown = fit_columns(rows, console.width)
    table = Table(title=term(f"runs in {location.display()}"), title_justify="left", box=box.SIMPLE_HEAD)
    texts = [c for c in shown if c in TEXT_COLUMNS]
    spare = console.width - sum(size + 3 for c, (_l, size) in shown.items() if c not in TEXT_COLUMNS) - 2
    text_width = max(TEXT_MIN, spare // max(len(texts), 1) - 3)
    for col, justify, _drop in COLUMNS:
        if col in shown:
            label, size = shown[col]
            text = col in TEXT_COLUMNS
            table.add_column(
                label,
                justify=justify,  # type: ignore[arg-type]
                no_wrap=True,
                overflow="ellipsis",
                width=None if text else size,
                max_width=text_width if text else None,
            )
    for row in rows:
        table.add_row(*(term(row[col][: shown[col][1]] if col == "started (UTC)" else row[col]) for col in shown))
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
