"""Page state in the URL: ``?page=runs|run|compare&run=ID&a=ID&b=ID``, ids only, validated as ints."""

from __future__ import annotations

import streamlit as st

PAGES = ("runs", "run", "compare")


def param_int(name: str) -> int | None:
    """A positive int query parameter, or None when absent or not a number (never a path or text)."""
    raw = st.query_params.get(name)
    if raw is None:
        return None
    text = str(raw)
    return int(text) if text.isdigit() and len(text) < 12 else None


def current_page() -> str:
    page = str(st.query_params.get("page", "runs"))
    return page if page in PAGES else "runs"


def set_params(page: str, **ids: int) -> None:
    """Point the URL at ``page`` (for use in widget callbacks, which rerun by themselves)."""
    st.query_params.clear()
    st.query_params["page"] = page
    for key, value in ids.items():
        st.query_params[key] = str(int(value))


def go(page: str, **ids: int) -> None:
    """Switch page (and the ids it shows) and rerun."""
    set_params(page, **ids)
    st.rerun()


def on_page_change() -> None:
    """Sidebar page picker: keep the ids the URL already has."""
    ids = {k: v for k in ("run", "a", "b") if (v := param_int(k)) is not None}
    set_params(str(st.session_state["nav_page"]), **ids)
