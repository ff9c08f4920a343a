"""A throwaway PostgreSQL server for tests.

`postgres_server()` starts one server per test session (lazily, the first time a test asks for
it) in a temporary directory, on a free port on 127.0.0.1, with trust authentication, and stops it
when the session ends. `server.new_database()` gives each test a fresh database and returns its
SQLAlchemy URL (`postgresql+psycopg://postgres@127.0.0.1:PORT/test_N`).

Use it from a test module with:

    from pg import postgres, postgres_url  # fixtures: the server, a fresh database a test

When the Postgres binaries (initdb, pg_ctl) are missing the tests are skipped with a hint on
installing them, except under CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found; install them to run the Postgres "
    "tests: `apt-get install postgresql` (Debian/Ubuntu), `brew install postgresql` (macOS), or put "
    "a PostgreSQL bin directory on PATH"
)


def _find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    candidates += sorted(glob.glob(f"/usr/local/pgsql/bin/{name}"))
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.port = _free_port()
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="tether-pg-"))
        self.data = self.dir / "data"
        self._counter = itertools.count(1)
        self._started = False

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    def start(self) -> None:
        if self.as_root:  # initdb refuses to run as root: the server runs as the postgres user
            shutil.chown(self.dir, user="postgres")
        self._run(self.initdb, "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync")  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w",
                  "start")  # fmt: skip
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"test_{next(self._counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


_server: PostgresServer | None = None
_lock = threading.Lock()


def postgres_server() -> PostgresServer:
    """The session's server, started on first use (skips, or fails under CI, without binaries)."""
    global _server
    with _lock:
        if _server is None:
            initdb, pg_ctl = _find_bin("initdb"), _find_bin("pg_ctl")
            if initdb is None or pg_ctl is None:
                if os.environ.get("CI", "").lower() == "true":
                    pytest.fail(INSTALL_HINT)
                pytest.skip(INSTALL_HINT)
            server = PostgresServer(initdb, pg_ctl)
            try:
                server.start()
            except Exception:
                server.stop()
                raise
            atexit.register(server.stop)  # in case the session fixture's teardown never runs
            _server = server
        return _server


def stop_postgres_server() -> None:
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's Postgres server, stopped when the session ends."""
    yield postgres_server()
    stop_postgres_server()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's Postgres server."""
    return postgres.new_database()
