"""The ``mlprof`` process: ``python -m mlprof`` and the ``mlprof`` console script.

Standard library only until the command runs: ``mlprof analyze`` of a small trace file forks
the process that reads it (:mod:`mlprof.trace.prefetch`) here, before typer, numpy or pandas
are imported, so the read overlaps all of the command's imports on a second core and the
fork copies a small single-threaded process.
"""

from __future__ import annotations

import os
import sys

ANALYZE_VALUE_OPTIONS = frozenset(
    {
        *("--format", "-f", "--rank", "--steps", "--step-marker", "--output", "-o", "--config"),
        *("--set", "--counters", "--fail-on", "--jobs", "-j", "--engine", "--scheduler", "--top"),
    }
)
"""The options of ``mlprof analyze`` that take a value (a test checks them against the command)."""
ANALYZE_FLAGS = frozenset({"--force", "--low-memory"})
"""Its options that take none."""


def trace_to_read_ahead(args: list[str]) -> str | None:
    """The trace file of ``mlprof analyze ARGS`` worth reading ahead, or None (see :func:`read_ahead_request`)."""
    request = read_ahead_request(args)
    return None if request is None else request[0]


def read_ahead_request(args: list[str]) -> tuple[str, int | None] | None:
    """The trace file of ``mlprof analyze ARGS`` worth reading ahead and its ``--jobs`` (None: not given), or None.

    None for anything but ``analyze`` with one path, for an option this scan does not know
    (``--help``, ``-fjson``, a typo: typer will say), ``--low-memory``, ``--jobs 1`` (one
    process asked for), and, unless ``MLPROF_READ_AHEAD=1``, when no core is idle (1-minute
    load average above the cores less one half: a second process then only adds work) or
    ``MLPROF_READ_AHEAD=0``.
    """
    setting = os.environ.get("MLPROF_READ_AHEAD", "auto")
    if not args or args[0] != "analyze" or setting == "0":
        return None
    paths: list[str] = []
    jobs = None
    rest = iter(args[1:])
    for token in rest:
        if token == "--":
            paths.extend(rest)
        elif token in ANALYZE_FLAGS:
            if token == "--low-memory":
                return None
        elif token in ANALYZE_VALUE_OPTIONS:
            value = next(rest, "")
            jobs = value if token in ("--jobs", "-j") else jobs
        elif token.startswith("-") and token != "-":
            name, eq, value = token.partition("=")
            if not eq or name not in ANALYZE_VALUE_OPTIONS:
                return None
            jobs = value if name in ("--jobs", "-j") else jobs
        else:
            paths.append(token)
    if len(paths) != 1 or (jobs is not None and jobs.strip() == "1"):
        return None
    if setting != "1" and not _idle_core():
        return None
    try:
        workers = None if jobs is None else int(jobs)
    except ValueError:  # typer will say
        return None
    return paths[0], workers


def _idle_core() -> bool:
    """Whether the 1-minute load average leaves a core idle (False where there is none: Windows)."""
    getloadavg = getattr(os, "getloadavg", None)
    if getloadavg is None:
        return False
    try:
        return bool(getloadavg()[0] <= (os.cpu_count() or 1) - 0.5)
    except OSError:
        return False


def run() -> None:
    """Run the command line; at exit the objects are frozen rather than collected.

    The interpreter's last garbage collections walk every object the command made (pandas,
    the analysis): 0.05-0.15 s of a 0.7 s ``mlprof analyze`` of a small trace. The process
    ends right after, so nothing is lost; exit handlers and file closing still run.
    """
    from mlprof.interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_as_exception

    try:
        with terminate_as_exception():  # a reader may be running: Ctrl-C or SIGTERM while importing is one line too
            request = read_ahead_request(sys.argv[1:])
            if request is not None:
                from mlprof.trace import prefetch

                prefetch.start(*request)
            from mlprof.cli import main
    except (KeyboardInterrupt, Terminated) as stop:
        from mlprof.interrupts import clear_unhandled_interrupt_mark

        clear_unhandled_interrupt_mark()
        interrupted = isinstance(stop, KeyboardInterrupt)
        print(f"mlprof: error: {'interrupted' if interrupted else 'terminated'}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED if interrupted else EXIT_TERMINATED) from None
    code = main()
    import gc

    gc.freeze()
    raise SystemExit(code)


if __name__ == "__main__":
    run()
