"""``python -m mlprof``."""

from mlprof.cli import main

raise SystemExit(main())
