"""``python -m mlprof``."""

from mlprof.cli import run

run()
