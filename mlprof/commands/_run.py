"""How a command runs: its errors as one line and an exit code, whichever door it came in by.

Shared by :func:`mlprof.cli.main` (every command, parsed by typer) and the fast path of
:mod:`mlprof.__main__` (the plain forms of ``mlprof analyze``), so the two cannot drift.
Nothing here imports typer or rich: click's and typer's exceptions are told by their shape.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlprof.errors import MlprofError

if TYPE_CHECKING:
    from rich.console import Console


def run_command(body: Callable[[], object]) -> int:
    """Run ``body`` and turn what it raises into one error line and an exit code.

    0 when it returns (or its int result: typer's invoke returns a command's exit code), the
    error's own code for an :class:`~mlprof.errors.MlprofError`, 130/143 on Ctrl-C/SIGTERM, the
    closed-pipe code when stdout is gone, 3 for a bug (a traceback with ``MLPROF_DEBUG=1``).
    """
    from mlprof.interrupts import (
        EXIT_INTERRUPTED,
        EXIT_TERMINATED,
        Terminated,
        clear_unhandled_interrupt_mark,
        interrupts_kept,
        pipe_closed,
        terminate_as_exception,
    )

    try:
        with terminate_as_exception(), interrupts_kept():
            result = body()
    except MlprofError as exc:
        error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        clear_unhandled_interrupt_mark()
        error("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        error("terminated")
        return EXIT_TERMINATED
    except BrokenPipeError:
        return pipe_closed()
    except MemoryError:
        error("out of memory while reading the trace")
        return 2
    except Exception as exc:
        code = cli_framework_error(exc)
        if code is not None:
            return code
        if os.environ.get("MLPROF_DEBUG"):  # a bug in mlprof: still no traceback for the user
            raise
        error(f"internal error: {type(exc).__name__}: {exc} (set MLPROF_DEBUG=1 for a traceback; please report it)")
        return 3
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def raise_on_closed_pipe_in_rich() -> None:
    """Make rich's consoles raise :class:`BrokenPipeError` on a closed pipe, for :func:`run_command`.

    rich's own handler exits 1, which is the gate code; a command that prints through rich
    (a text report to stdout, a progress bar) calls this first.
    """
    from rich.console import Console

    Console.on_broken_pipe = _pipe_closed_in_rich  # type: ignore[method-assign]


def _pipe_closed_in_rich(self: Console) -> None:
    self.quiet = True
    raise BrokenPipeError(32, "stdout closed")


def cli_framework_error(exc: Exception) -> int | None:
    """Exit code for click/typer's own exceptions (typer may vendor click, so match by shape)."""
    name = type(exc).__name__
    if name == "Exit":
        return int(getattr(exc, "exit_code", 0) or 0)
    if name == "Abort":
        error("aborted")
        return 130
    if name == "NoArgsIsHelpError":
        return 2  # the help text was already printed
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        ctx = getattr(exc, "ctx", None)
        names = []  # the subcommand path under the root, e.g. "runs delete"
        while ctx is not None and getattr(ctx, "parent", None) is not None:
            names.append(str(ctx.info_name))
            ctx = ctx.parent
        command = " ".join(reversed(names))
        hint = f" (see 'mlprof {command} --help')" if command else ""
        error(f"{exc.format_message()}{hint}")
        return int(exc.exit_code)
    return None


def error(message: str) -> None:
    """``mlprof: error: MESSAGE`` on stderr, one line, control characters and escapes removed."""
    from mlprof.untrusted import plain

    print(f"mlprof: error: {' '.join(plain(message).split())}", file=sys.stderr)  # paths may hold escapes
