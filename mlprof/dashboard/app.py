"""Entry point of the dashboard (``mlprof dashboard`` runs ``streamlit run`` on this file).

Reads the store named by ``MLPROF_STORE`` (read-only) and routes to a page from the
URL's ``page`` parameter; pages take only integer run ids from the URL.
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from mlprof.dashboard import data
from mlprof.dashboard.views import compare, nav, run, runs
from mlprof.errors import MlprofError
from mlprof.untrusted import md_code, md_text

st.set_page_config(page_title="mlprof runs", layout="wide")

location = data.current_store()
url = location.url.render_as_string(hide_password=False)
page = nav.current_page()
with st.sidebar:
    st.title("mlprof")
    st.caption(md_code(location.display()))
    titles = {"runs": "Runs", "run": "Run", "compare": "Compare"}
    st.session_state["nav_page"] = page
    st.radio("Page", list(titles), format_func=titles.get, key="nav_page", on_change=nav.on_page_change)

try:
    data.cached_check(url)
except (MlprofError, SQLAlchemyError) as exc:
    st.error(f"cannot read the run store {md_code(location.display())}: {md_text(exc)}")
    st.stop()

if page == "run":
    run.render(url, nav.param_int("run"))
elif page == "compare":
    compare.render(url, nav.param_int("a"), nav.param_int("b"))
else:
    runs.render(url)
