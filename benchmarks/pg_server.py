"""A throwaway local PostgreSQL server for the benchmarks: `with throwaway_postgres() as url: ...`.

It runs initdb and pg_ctl (found on PATH or under /usr/lib/postgresql/*/bin; as root, the server runs
as the `postgres` user) in a temporary folder, on a free port of 127.0.0.1, with trust authentication,
and removes everything when the block ends. Unlike the tests' server (tests/pg.py), it keeps `fsync`
on by default: a commit costs what it costs on a real server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise SystemExit(f"{name} not found: install the PostgreSQL server (apt-get install postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_postgres(*, fsync: bool = True) -> Iterator[str]:
    """Start a server; yield the SQLAlchemy URL of its `postgres` database; stop and remove it."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="tether-bench-pg-"))
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if as_root else list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    if as_root:
        shutil.chown(folder, user="postgres")
    started = False
    try:
        run(_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync={'on' if fsync else 'off'}"
        run(_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            with contextlib.suppress(Exception):
                run(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
