"""Where the run store lives: `$TETHER_DATABASE_URL`, else a SQLite file under Tether's home folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tether.domain.errors import ConfigError

if TYPE_CHECKING:
    from tether.adapters.store.memory import MemoryStore
    from tether.adapters.store.sql.store import SqlStore


def tether_home() -> Path:
    """`$TETHER_HOME`, else `$XDG_DATA_HOME/tether`, else `~/.local/share/tether` (not created here)."""
    home = os.environ.get("TETHER_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "tether"


def default_url() -> str:
    """`$TETHER_DATABASE_URL`, else the SQLite file `tether.db` in `tether_home()`."""
    url = os.environ.get("TETHER_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{tether_home() / 'tether.db'}"


def open_store(url: str | None = None) -> SqlStore | MemoryStore:
    """The store at `url` (default: `default_url()`); `memory://` gives a `MemoryStore`.

    `TETHER_SQLITE_SYNCHRONOUS=FULL` makes SQLite commits survive power loss, not only a killed
    process (the default, NORMAL).
    """
    from tether.adapters.store.memory import MemoryStore
    from tether.adapters.store.sql.store import SqlStore  # here: the store's database imports this module

    url = url or default_url()
    if url.startswith("memory://"):
        return MemoryStore()
    mode = os.environ.get("TETHER_SQLITE_SYNCHRONOUS", "NORMAL")
    if mode.upper() not in ("NORMAL", "FULL"):
        raise ConfigError(f"TETHER_SQLITE_SYNCHRONOUS must be NORMAL or FULL, not {mode!r}")
    return SqlStore(url, synchronous=mode.upper())  # type: ignore[arg-type]


def normalise_url(url: str) -> str:
    """The URL SQLAlchemy should open: plain `postgresql://` would make it look for psycopg2; Tether
    uses psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
