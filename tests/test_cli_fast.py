"""The fast path of ``mlprof analyze`` (mlprof.__main__.analyze_arguments): typer's values, without typer.

The truth for every command line is typer's own parse of it: :func:`mlprof.cli.main` runs
with the command's body replaced by a recorder, and the fast path must give the same
keyword arguments or leave the command line to typer.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

import mlprof.commands._analyze as analyze_body
from mlprof.__main__ import _ANALYZE_NAMES, ANALYZE_FLAGS, ANALYZE_FORMATS, ANALYZE_VALUE_OPTIONS, analyze_arguments
from mlprof.cli import OutputFormat, app, main

from conftest import SAMPLES

REPO = Path(__file__).resolve().parents[1]
RUN_ANALYZE = analyze_body.run_analyze
HEALTHY = str(SAMPLES / "synthetic" / "healthy.json.gz")
STARVED = str(SAMPLES / "synthetic" / "data_starvation.json.gz")

TAKEN = [
    ["t.json"],
    ["t.json", "-f", "json"],
    ["--format", "markdown", "t.json"],
    ["t.json", "--format=html", "-o", "out.html", "--force"],
    ["t.json", "-o", "r.md", "--top", "7", "--steps", "16-18"],
    ["t.json", "--top", "1000", "--rank", "0", "--jobs", "3"],
    ["t.json", "--top=1", "-j", "1", "--rank=12"],
    ["t.json", "--top", "007"],
    ["dir", "--set", "DATA001.min_share=0.5", "--set=SYNC001.min_ms=2", "--fail-on", "any>=1.25"],
    ["dir", "--fail-on", "any>=1.25", "--fail-on=DATA001", "--set", "DATA001.min_share=0.1"],
    ["t.json", "--counters", "a.csv", "--counters=b.csv", "--config", "mlprof.toml", "--low-memory"],
    ["t.json", "--engine", "dask", "--scheduler", "tcp://h:8786", "--step-marker", "Step#\\d+"],
    ["t.json", "--step-marker", "a=b", "--steps", "17-"],
    ["--", "t.json"],
    ["--force", "--", "-odd.json"],
    ["a b.json", "--engine", "LOCAL"],
    ["t\udcff.json", "-o", "o\udcff.json"],
    ["~/t.json", "--force", "--force"],
]
DECLINED = [
    [],
    ["t.json", "--help"],
    ["t.json", "-fjson"],
    ["t.json", "-f=json"],
    ["t.json", "--format", "JSON"],
    ["t.json", "--rank", "-1"],
    ["t.json", "--rank=-1"],
    ["t.json", "--top", "0"],
    ["t.json", "--top", "1001"],
    ["t.json", "--top", " 5"],
    ["t.json", "--top", "+5"],
    ["t.json", "--top", "5_0"],
    ["t.json", "--jobs", "\u0663"],
    ["t.json", "--set", "--force"],
    ["t.json", "-o", "-"],
    ["t.json", "-f", "json", "-f", "html"],
    ["t.json", "--steps", ""],
    ["t.json", "--steps="],
    ["t.json", "--force=1"],
    ["t.json", "-f"],
    ["t.json", "--bogus"],
    ["t.json", "u.json"],
    ["-"],
    [""],
    ["--", "t.json", "-f", "json"],
]


def _typer_values(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[int, dict[str, Any] | None]:
    """Exit code of ``mlprof.cli.main(["analyze", *args])`` and the values typer passed to the command's body."""
    seen: dict[str, Any] = {}

    def record(path: Path, **kwargs: Any) -> None:
        seen.update(path=path, **kwargs)

    monkeypatch.setattr(analyze_body, "run_analyze", record)
    code = main(["analyze", *args])
    return code, (seen or None)


def _with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(RUN_ANALYZE).parameters
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **values}


@pytest.mark.parametrize("args", TAKEN, ids=lambda a: " ".join(a).encode("ascii", "replace").decode())
def test_the_fast_path_gives_typers_values(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    fast = analyze_arguments(["analyze", *args])
    assert fast is not None  # these forms are the fast path's to run
    code, typed = _typer_values(monkeypatch, args)
    assert code == 0 and typed is not None
    assert _with_defaults(fast) == typed
    assert {k: type(v) for k, v in _with_defaults(fast).items()} == {k: type(v) for k, v in typed.items()}


@pytest.mark.parametrize("args", DECLINED, ids=lambda a: " ".join(a) or "nothing")
def test_other_forms_are_left_to_typer(args: list[str]) -> None:
    assert analyze_arguments(["analyze", *args]) is None
    assert analyze_arguments(["rules"]) is None and analyze_arguments(["--version"]) is None


def test_the_fast_paths_tables_match_the_command() -> None:
    """Its option names, the parameters they fill and the formats are those of typer's ``analyze``."""
    command = typer.main.get_command(app).commands["analyze"]  # type: ignore[attr-defined]
    names = {opt: param.name for param in command.params for opt in param.opts if opt.startswith("-")}
    assert names == _ANALYZE_NAMES
    assert set(names) == ANALYZE_VALUE_OPTIONS | ANALYZE_FLAGS
    assert {f.value for f in OutputFormat} == ANALYZE_FORMATS
    run_analyze_parameters = set(inspect.signature(RUN_ANALYZE).parameters)
    assert run_analyze_parameters == {p.name for p in command.params}


CLI_FRAMEWORK = ("typer", "pydantic", "click", "rich.console")


def _fast_process(
    *args: str, modules: tuple[str, ...] = CLI_FRAMEWORK, cwd: Path | None = None, read_ahead: str = "0"
) -> subprocess.CompletedProcess[str]:
    """``mlprof ARGS`` through the process entry; stderr's last line (from an exit handler) lists which of
    ``modules`` it imported."""
    code = (
        "import atexit, sys\n"
        "from mlprof.__main__ import run\n"
        "def imported():\n"
        f"    heavy = sorted(m for m in {modules!r} if m in sys.modules)\n"
        "    print('IMPORTED', heavy, file=sys.stderr)\n"
        "atexit.register(imported)\n"
        f"sys.argv = ['mlprof', *{list(args)!r}]\n"
        "run()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLPROF_READ_AHEAD": read_ahead}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=cwd)


def test_the_fast_path_imports_no_cli_framework_and_writes_the_same_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc = _fast_process("analyze", HEALTHY, "--format", "json", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "IMPORTED []\n"
    assert main(["analyze", HEALTHY, "--format", "json", "--top", "3"]) == 0  # typer's path, this process
    assert proc.stdout == capsys.readouterr().out


ONLY_WHERE_USED = ("sqlite3", "html", "multiprocessing", "tomllib")
"""Imported only where used: the nsys/SQLite readers, HTML escaping, the what-if helper on a large graph, a config
file (~10 ms of start-up together, none of it needed by a plain analysis of a small trace to JSON)."""


@pytest.mark.parametrize("read_ahead", ["0", "1"])
def test_a_plain_analysis_imports_only_what_it_uses(tmp_path: Path, read_ahead: str) -> None:
    proc = _fast_process(
        "analyze", HEALTHY, "--format", "json", modules=ONLY_WHERE_USED, cwd=tmp_path, read_ahead=read_ahead
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "IMPORTED []\n"
    html = _fast_process("analyze", HEALTHY, "--format", "html", modules=ONLY_WHERE_USED, cwd=tmp_path)
    assert html.returncode == 0 and html.stderr == "IMPORTED ['html']\n", html.stderr
    (tmp_path / "mlprof.toml").write_text("min_speedup = 1.05\n")
    configured = _fast_process("analyze", HEALTHY, "--format", "json", modules=ONLY_WHERE_USED, cwd=tmp_path)
    assert configured.returncode == 0 and configured.stderr == "IMPORTED ['tomllib']\n", configured.stderr


def _arrow_state(*args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """``mlprof ARGS`` through the process entry, and what became of pyarrow in it (from an exit handler):
    ``blocked`` (None in ``sys.modules``: imports raise ImportError), ``imported`` or ``absent``."""
    read, write = os.pipe()
    code = (
        "import atexit, os, sys\n"
        "from mlprof.__main__ import run\n"
        "def state():\n"
        "    pa = sys.modules.get('pyarrow', 'absent')\n"
        f"    os.write({write}, b'blocked' if pa is None else b'absent' if pa == 'absent' else b'imported')\n"
        "atexit.register(state)\n"
        f"sys.argv = ['mlprof', *{list(args)!r}]\n"
        "run()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLPROF_READ_AHEAD": "0"}
    with os.fdopen(read, "rb") as out:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, pass_fds=(write,)
            )
        finally:
            os.close(write)
        return proc, out.read().decode()


@pytest.mark.parametrize("fmt", ["json", "html"])
def test_the_fast_path_runs_without_pyarrow_and_writes_the_same_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fmt: str
) -> None:
    """pandas 3 imports pyarrow for its string storage when it is installed (~0.05 s, ~45 MB): the plain analysis
    runs as if it were not (blocked for the whole process, __main__.needs_arrow) and writes the report that this
    process, with pyarrow, writes; --low-memory (a Parquet spill) keeps it."""
    assert "pyarrow" in sys.modules  # this process: pandas took it
    proc, state = _arrow_state("analyze", HEALTHY, "--format", fmt, "--top", "3")
    assert proc.returncode == 0, proc.stderr
    assert state == "blocked"
    assert main(["analyze", HEALTHY, "--format", fmt, "--top", "3"]) == 0
    assert proc.stdout == capsys.readouterr().out
    spilled = tmp_path / "spilled.json"
    proc, state = _arrow_state("analyze", HEALTHY, "--format", "json", "--low-memory", "-o", str(spilled))
    assert proc.returncode == 0, proc.stderr
    assert state == "imported"
    assert main(["analyze", HEALTHY, "--format", "json", "--low-memory"]) == 0
    assert spilled.read_text() == capsys.readouterr().out


def test_a_tripped_gate_and_an_error_say_what_typers_path_says(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gate = _fast_process("analyze", STARVED, "--fail-on", "DATA001", "-f", "markdown")
    assert gate.returncode == 1  # typer is imported for the exit, once the gate has tripped
    assert main(["analyze", STARVED, "--fail-on", "DATA001", "-f", "markdown"]) == 1
    typed = capsys.readouterr()
    assert gate.stdout == typed.out and gate.stderr.rsplit("IMPORTED", 1)[0] == typed.err
    bad = tmp_path / "bad.json"
    bad.write_text('{"traceEvents": [{"ph": "X",')
    error = _fast_process("analyze", str(bad), "-f", "json")
    assert main(["analyze", str(bad), "-f", "json"]) == 2
    typed = capsys.readouterr()
    assert error.returncode == 2 and error.stdout == "" == typed.out
    assert error.stderr.splitlines()[:-1] == typed.err.splitlines() and len(typed.err.splitlines()) == 1


def test_the_fast_path_ends_without_teardown_only_where_nothing_needs_it(tmp_path: Path) -> None:
    """Exit handlers run and the code is kept; a live non-daemon thread or a profiler gets the interpreter's exit."""
    script = (
        "import atexit, sys, threading, time\n"
        "from mlprof.__main__ import _end_now\n"
        "atexit.register(lambda: print('handler ran', flush=True))\n"
        "if sys.argv[1] == 'thread':\n"
        "    threading.Thread(target=lambda: (time.sleep(0.2), print('thread done', flush=True))).start()\n"
        "sys.stdout.write('unflushed ')\n"
        "_end_now(5)\n"
        "print('returned')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    alone = subprocess.run([sys.executable, "-c", script, "alone"], capture_output=True, text=True, env=env)
    assert (alone.returncode, alone.stdout) == (5, "unflushed handler ran\n")
    waiting = subprocess.run([sys.executable, "-c", script, "thread"], capture_output=True, text=True, env=env)
    assert waiting.returncode == 0 and waiting.stdout.split() == [
        "unflushed",
        "returned",
        "thread",
        "done",
        "handler",
        "ran",
    ]
    profiled = subprocess.run(
        [
            sys.executable,
            "-m",
            "cProfile",
            "-m",
            "mlprof",
            "analyze",
            HEALTHY,
            "-f",
            "json",
            "-o",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        env={**env, "MLPROF_READ_AHEAD": "0"},
        timeout=120,
    )
    assert profiled.returncode == 0 and "function calls" in profiled.stdout  # cProfile's table, written at exit


def test_the_fast_path_imports_with_the_collector_off_and_freezes_what_the_imports_made() -> None:
    """Collections counted by gc's own callbacks: a handful of young ones instead of ~170 (one full) on typer's path."""
    script = (
        "import atexit, gc, sys\n"
        "seen = [0, 0, 0]\n"
        "def count(phase, info):\n"
        "    if phase == 'stop':\n"
        "        seen[info['generation']] += 1\n"
        "gc.callbacks.append(count)\n"
        "atexit.register(lambda: print('GC', gc.isenabled(), *seen, file=sys.stderr))\n"
        "from mlprof.__main__ import run\n"
        "sys.argv = ['mlprof', *sys.argv[1:]]\n"
        "run()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLPROF_READ_AHEAD": "0"}

    def collections(*args: str) -> list[int]:
        proc = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        enabled, *counts = proc.stderr.split("GC ", 1)[1].split()
        assert enabled == "True"  # the collector is on again for the analysis
        return [int(c) for c in counts]

    fast = collections("analyze", HEALTHY, "-f", "json")
    typed = collections("analyze", HEALTHY, "-fjson")  # a form the fast path leaves to typer
    assert fast[2] == 0 and sum(fast) < 40, fast
    assert typed[2] >= 1 and sum(typed) > 100, typed


@pytest.mark.parametrize("fmt", ["json", "markdown", "html"])
def test_hostile_text_without_pyarrow_reads_as_with_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fmt: str
) -> None:
    """Without pyarrow pandas keeps ``str`` columns in its own storage: a trace whose names carry markup, escapes,
    bidi controls and invalid UTF-8 (the reader's surrogate-escaped repair) gives the report that a process with
    pyarrow gives, and is shown as literally (test_hostile checks what literally means, in this process)."""
    from test_hostile import HOSTILE, _hostile_doc

    trace = tmp_path / "hostile_bad_utf8.json"
    trace.write_bytes(json.dumps(_hostile_doc(HOSTILE)).encode().replace(b"[/red]", b"[/r\xffd]", 1))
    proc, state = _arrow_state("analyze", str(trace), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert state == "blocked"
    assert main(["analyze", str(trace), "--format", fmt]) == 0
    assert proc.stdout == capsys.readouterr().out
    assert "INJECTED" in proc.stdout  # the hostile names reach the report
    assert "\x1b" not in proc.stdout  # and their escapes never raw


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2, reason="needs Linux and 2+ cores"
)
@pytest.mark.parametrize(
    ("env", "threads"),
    [({}, 1), ({"OPENBLAS_NUM_THREADS": "2"}, 2), ({"OMP_NUM_THREADS": "2"}, 2)],
)
def test_the_cli_runs_numpy_with_one_blas_thread_unless_the_user_chose(env: dict[str, str], threads: int) -> None:
    # The truth is the kernel's count of the process's threads after numpy's import (OpenBLAS starts its
    # threads then): the mlprof entry point before numpy, as `mlprof` runs it.
    script = (
        "import os, sys; from mlprof.__main__ import one_blas_thread; one_blas_thread(); import numpy;"
        "print(len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    assert int(out[0]) == threads
    assert out[1] == env.get("OPENBLAS_NUM_THREADS", "1" if not env else "None")
