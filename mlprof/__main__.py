"""The ``mlprof`` process: ``python -m mlprof`` and the ``mlprof`` console script.

Standard library only until the command runs: ``mlprof analyze`` of a small trace file forks
the process that reads it (:mod:`mlprof.trace.prefetch`) here, once the reader (numpy, msgspec)
is imported and before typer or pandas are, so the read overlaps the command's other imports on
a second core.

The plain forms of ``mlprof analyze`` (one path, known options with ordinary values) are
parsed here too (:func:`analyze_arguments`) and run without typer: typer, click, rich and the
pydantic that typer converts values with cost ~0.08-0.1 s of CPU, a sixth of the analysis
of a 35 MB trace. Anything else (``--help``, another command, an unusual value, an error to
report) goes to typer, which says what typer always said.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mlprof.cores import load_leaves_a_core

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
    if setting != "1" and not load_leaves_a_core():
        return None
    try:
        workers = None if jobs is None else int(jobs)
    except ValueError:  # typer will say
        return None
    return paths[0], workers


ANALYZE_FORMATS = frozenset({"text", "json", "markdown", "html"})
"""The values of ``--format`` (``mlprof.cli.OutputFormat``; a test checks them)."""
_ANALYZE_NAMES = {
    **{"--format": "fmt", "-f": "fmt", "--rank": "rank", "--steps": "steps", "--step-marker": "step_marker"},
    **{"--output": "output", "-o": "output", "--config": "config", "--set": "settings", "--counters": "counters"},
    **{"--fail-on": "fail_on", "--jobs": "jobs", "-j": "jobs", "--engine": "engine", "--scheduler": "scheduler"},
    **{"--top": "top", "--force": "force", "--low-memory": "low_memory"},
}
_REPEATABLE = frozenset({"settings", "counters", "fail_on"})
_PATHS = frozenset({"output", "config", "counters"})
_INTEGERS = frozenset({"rank", "jobs", "top"})


def analyze_arguments(args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of :func:`mlprof.commands._analyze.run_analyze` for ``mlprof analyze ARGS``,
    or None where typer should parse them.

    Only forms whose meaning is plain are taken: one non-empty path, each option of analyze
    at most once (``--set``, ``--counters``, ``--fail-on`` repeatable) as ``--opt VALUE``,
    ``--opt=VALUE`` or ``-f VALUE``, values that are non-empty and do not start with ``-``,
    formats spelled as ``--format`` lists them, and whole numbers in ASCII digits (``--top``
    1..1000). The values are what typer passes (paths as :class:`~pathlib.Path`, lists only
    when given; a test compares the two on many command lines). Anything else, ``--help``
    and every error included, returns None.
    """
    if not args or args[0] != "analyze":
        return None
    values: dict[str, Any] = {}
    paths: list[str] = []
    rest = iter(args[1:])
    for token in rest:
        if token == "--":
            paths.extend(rest)
            break
        name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        key = _ANALYZE_NAMES.get(name) if token.startswith("-") else None
        if key is None:
            if token.startswith("-"):
                return None  # an option this scan does not take (-fjson, --help, a typo): typer will say
            paths.append(token)
            continue
        if key in ("force", "low_memory"):
            if eq:
                return None
            values[key] = True
            continue
        if not eq:
            value = next(rest, "")
        if not value or value.startswith("-") or (key in values and key not in _REPEATABLE):
            return None
        if key in _PATHS:
            converted: Any = Path(value)
        elif key in _INTEGERS:
            if not (value.isascii() and value.isdigit()) or (key == "top" and not 1 <= int(value) <= 1000):
                return None
            converted = int(value)
        elif key == "fmt" and value not in ANALYZE_FORMATS:
            return None
        else:
            converted = value
        if key in _REPEATABLE:
            values.setdefault(key, []).append(converted)
        else:
            values[key] = converted
    if len(paths) != 1 or not paths[0] or paths[0] == "-":
        return None
    return {"path": Path(paths[0]), **values}


def one_blas_thread() -> None:
    """numpy's OpenBLAS with one thread in this process (and the ones it starts), unless the user set a number.

    mlprof's only linear algebra is a least-squares line through a few memory samples (MEM001/MEM002).
    OpenBLAS starts a thread per core when numpy is imported, before any of it runs: that import took
    91-113 ms of CPU against 47-66 ms with one thread (10 alternating pairs on the 2-core VM at load 3),
    on the critical path of every command that reads a trace. ``OMP_NUM_THREADS`` (which OpenBLAS
    also reads) or ``OPENBLAS_NUM_THREADS`` set by the user are left as they are.
    """
    if "OPENBLAS_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


def run() -> None:
    """Run the command line; at exit the objects are frozen rather than collected.

    The interpreter's last garbage collections walk every object the command made (pandas,
    the analysis): 0.05-0.15 s of a 0.7 s ``mlprof analyze`` of a small trace. The process
    ends right after, so nothing is lost; exit handlers and file closing still run. The fast
    path of ``mlprof analyze`` also skips the interpreter's teardown (:func:`_end_now`).
    """
    from mlprof.interrupts import (
        EXIT_INTERRUPTED,
        EXIT_TERMINATED,
        Terminated,
        interrupts_kept,
        terminate_as_exception,
    )

    one_blas_thread()
    try:
        # A reader may be running: Ctrl-C or SIGTERM while importing is one line too (also one that
        # Python drops in an import's weakref callback), and the command runs inside, so none lands
        # between this block and the command's own handlers.
        with terminate_as_exception(), interrupts_kept():
            request = read_ahead_request(sys.argv[1:])
            if request is not None:
                from mlprof.commands._progress import shows_progress
                from mlprof.trace import prefetch

                prefetch.start(*request, shows_progress=shows_progress)
            fast = analyze_arguments(sys.argv[1:])
            if fast is None:
                from mlprof.cli import main

                code = main()
            else:
                code = _analyze(fast)
    except (KeyboardInterrupt, Terminated) as stop:
        from mlprof.interrupts import clear_unhandled_interrupt_mark

        clear_unhandled_interrupt_mark()
        interrupted = isinstance(stop, KeyboardInterrupt)
        print(f"mlprof: error: {'interrupted' if interrupted else 'terminated'}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED if interrupted else EXIT_TERMINATED) from None
    import gc

    gc.freeze()
    if fast is not None:
        _end_now(code)
    raise SystemExit(code)


def _end_now(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown where nothing needs it; else return.

    After the command, Python's finalization clears every module and frees every object one by
    one (pandas, pyarrow, the analysis's tables): 15-20 ms of a ~0.5 s ``mlprof analyze`` of a
    35 MB trace. The exit handlers (the read-ahead's clean-up, weakref finalizers such as
    temporary folders') run here as they would there and stdout and stderr are flushed; then the
    process ends. Left to the interpreter: under a tracer or profiler (coverage and cProfile
    write their results at its exit), while another non-daemon thread runs (Python waits for
    it), and when a flush fails (Python reports it).
    """
    import threading

    if sys.gettrace() is not None or sys.getprofile() is not None:
        return
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: coverage's sys.monitoring core
    if monitoring is not None and any(monitoring.get_tool(tool) is not None for tool in range(6)):
        return
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    import atexit

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        return
    run_exit_handlers()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        return
    os._exit(code)


def _analyze(arguments: dict[str, Any]) -> int:
    """``mlprof analyze`` from :func:`analyze_arguments`, run as :func:`mlprof.cli.main` runs a command."""
    from mlprof.commands._analyze import run_analyze
    from mlprof.commands._run import raise_on_closed_pipe_in_rich, run_command

    text_to_stdout = arguments.get("output") is None and arguments.get("fmt", "text") == "text"
    if text_to_stdout or sys.stderr.isatty():  # rich writes there: a text report, progress bars
        raise_on_closed_pipe_in_rich()

    def command() -> None:
        _import_without_collections(arrow=needs_arrow(arguments))
        run_analyze(**arguments)

    return run_command(command)


def needs_arrow(arguments: dict[str, Any]) -> bool:
    """Whether ``mlprof analyze`` with these :func:`analyze_arguments` may use pyarrow: the ``--low-memory``
    spill is Parquet, and another engine than ``local`` (Dask) has its own uses; the plain analysis has none."""
    return bool(arguments.get("low_memory")) or arguments.get("engine", "local") != "local" or "scheduler" in arguments


def _import_without_collections(arrow: bool = True) -> None:
    """Import the command's modules with the cyclic garbage collector off, then freeze what they made.

    Without ``arrow`` (:func:`needs_arrow`) the process runs as if pyarrow were not installed: pandas 3
    imports pyarrow when it is (~0.05 s of CPU and ~45 MB of memory on every ``mlprof analyze``), for its
    default string storage, which the analysis does not need (its text columns are categoricals; the few
    ``str`` columns it makes hold the same values in pandas' own storage, and pandas' string methods follow
    Python's ``re`` either way). pyarrow stays unimportable for the rest of the process (``import pyarrow``
    raises ImportError, as where it is not installed), so pandas and every other library see one state.

    Ctrl-C and SIGTERM are held back over the imports and the objects they make are frozen
    (:func:`mlprof.lazy.imports_held`): ~0.03-0.04 s of a ~0.6 s ``mlprof analyze`` of a 35 MB trace was the
    collector walking them. What the imports leave as garbage is kept (~1 MB).
    """
    from mlprof.commands._analyze import import_modules
    from mlprof.lazy import imports_held

    if not arrow and "pandas" not in sys.modules:
        sys.modules.setdefault("pyarrow", None)  # type: ignore[arg-type]  # ImportError on import (see above)
    with imports_held(freeze=True):
        import_modules()


if __name__ == "__main__":
    run()
