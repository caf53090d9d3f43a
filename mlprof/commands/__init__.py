"""Subcommands beyond ``analyze``/``rules``/``explain``, one module each.

Every module here defines ``register(app)``, which adds its command(s) to the Typer
app; :func:`register_all` finds them, so a new command is a new file and ``cli.py``
does not grow. Modules import their heavy dependencies inside the command functions:
``mlprof --help`` must stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


def register_all(app: typer.Typer) -> None:
    """Import every command module of this package (in name order) and let it register its commands."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, no commands (``_store_table`` imports pandas)
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
