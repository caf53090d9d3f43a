"""Start ``streamlit run`` on the dashboard app with the store passed in the environment.

The store URL travels in ``MLPROF_STORE`` (not on the command line, where a password
would show in ``ps``); the Parquet cache folder in ``MLPROF_CACHE``. The store is
checked first, so a missing or unreadable store is one error line, not a broken page.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlprof.errors import UsageError

APP = Path(__file__).with_name("app.py")


def launch(store: str | None, port: int, address: str, headless: bool) -> int:
    from mlprof.store import resolve_store
    from mlprof.store.engine import open_engine, store_errors
    from mlprof.store.schema import check_readable

    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: choose a port between 1 and 65535")
    location = resolve_store(store)
    engine = open_engine(location, read_only=True)
    try:
        with store_errors(location), engine.connect() as conn:
            check_readable(conn)
    finally:
        engine.dispose()
    env = dict(os.environ)
    env["MLPROF_STORE"] = location.url.render_as_string(hide_password=False)
    env["MLPROF_CACHE"] = str(location.cache_dir)
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
    ]
    print(f"mlprof dashboard on http://{address}:{port} over {location.display()} (Ctrl-C to stop)", flush=True)
    return run_child(cmd, env)


def run_child(cmd: list[str], env: dict[str, str], grace_s: float = 10.0) -> int:
    """Run the server until it exits; whatever ends mlprof (Ctrl-C, SIGTERM, an error) ends it too.

    Ctrl-C reaches Streamlit from the terminal as well (same process group), so it is
    given ``grace_s`` to stop on its own; on SIGTERM (raised here as
    :class:`~mlprof.interrupts.Terminated`) it is sent SIGTERM, then killed if it lingers.
    """
    child = subprocess.Popen(cmd, env=env)
    try:
        return child.wait()
    except KeyboardInterrupt:
        _stop(child, grace_s, send_term=False)
        return 0
    except BaseException:
        _stop(child, grace_s, send_term=True)
        raise


def _stop(child: subprocess.Popen[bytes], grace_s: float, *, send_term: bool) -> None:
    for step in ("wait", "term", "kill"):
        if child.poll() is not None:
            return
        if step == "term" or (step == "wait" and send_term):
            child.terminate()
        elif step == "kill":
            child.kill()
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting politely
            child.kill()
            child.wait()
            return
