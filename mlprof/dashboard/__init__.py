"""The Streamlit dashboard over the run store: Runs, Run and Compare pages.

``app.py`` is the entry point ``mlprof dashboard`` hands to ``streamlit run``; pages
live in ``views/`` and stay thin: they read through :mod:`mlprof.dashboard.data`
(cached, read-only, parameterised SQL) and draw with :mod:`mlprof.dashboard.figures`
(plotly figures from plain frames). :mod:`mlprof.dashboard.timeline` downsamples event
tables for drawing; :mod:`mlprof.dashboard.run_diff` compares two stored runs.
"""
