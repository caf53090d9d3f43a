"""A throwaway PostgreSQL server for tests: Debian's binaries, a temp data dir, loopback, a free port.

Run as root (CI and this VM), the server runs as the ``postgres`` OS user
(``runuser -u postgres --``), since PostgreSQL refuses to run as root. Any failure to
start gives a reason string the tests skip with.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PgServer:
    port: int
    data_dir: Path
    bin_dir: Path
    as_user: list[str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server() -> PgServer | str:
    """A running server, or the reason none could be started."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    found = shutil.which("initdb")
    initdb = Path(bins[-1]) if bins else Path(found) if found else None
    if initdb is None:
        return "no PostgreSQL server binaries (initdb) installed"
    bin_dir = initdb.parent
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            return "running as root and runuser is missing: cannot start PostgreSQL as the postgres user"
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run the server"
        as_user = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="mlprof-pg-"))
    data = root / "data"
    if as_user:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    os.chmod(root, 0o700)
    init = subprocess.run(
        [*as_user, str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return f"initdb failed: {init.stderr.strip()[-300:]}"
    for _attempt in range(3):
        port = _free_port()
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        start = subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if start.returncode == 0:
            server = PgServer(port, data, bin_dir, as_user)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        return server
                except OSError:
                    time.sleep(0.2)
            server.stop()
            return "PostgreSQL started but does not accept connections on loopback"
    log = (root / "log").read_text()[-300:] if (root / "log").exists() else start.stderr[-300:]
    shutil.rmtree(root, ignore_errors=True)
    return f"pg_ctl start failed: {log.strip()}"
