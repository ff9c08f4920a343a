"""`tether serve`: the server on uvicorn, with the checks a public address needs."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
from pathlib import Path

from tether.domain.errors import ConfigError
from tether.interfaces.server.assistants import ServerConfig

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def keys_from_env() -> list[str]:
    return [k.strip() for k in os.environ.get("TETHER_API_KEYS", "").split(",") if k.strip()]


def serve(host: str = "127.0.0.1", port: int = 8000, *, concurrency: int = 16, allow_file_models: bool = False,
          mcp_config: Path | None = None, lease_ttl_s: float = 30.0, database_url: str | None = None) -> None:
    """Run the server until SIGINT/SIGTERM (graceful: in-flight runs get a few seconds, then their
    leases are released for the next server)."""
    import uvicorn

    from tether.interfaces.server.app import create_app
    from tether.services.runs import RunsService

    keys = keys_from_env()
    if not keys and not is_loopback(host):
        raise ConfigError(f"refusing to serve on {host} without API keys: anyone who can reach it could run "
                          "models and tools. Set TETHER_API_KEYS=key1,key2 (each key is a tenant), or bind "
                          "127.0.0.1")
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, not {concurrency}")
    if lease_ttl_s <= 0:
        raise ConfigError(f"--lease-ttl must be positive, not {lease_ttl_s}")
    mcp_servers = {}
    if mcp_config is not None:
        from tether.adapters.tools.mcp import import_mcp_json

        mcp_servers = {c.name: c for c in import_mcp_json(mcp_config)}
    from tether.adapters.store.sql import open_store

    store = open_store(database_url)
    if not hasattr(store, "put_object"):
        raise ConfigError("the server needs a store with objects (SQLite or Postgres)")
    service = RunsService(store, lease_ttl_s=lease_ttl_s)
    config = ServerConfig(api_keys=keys, allow_file_models=allow_file_models, concurrency=concurrency,
                          mcp_servers=mcp_servers, keepalive_s=_seconds("TETHER_SSE_KEEPALIVE_S", 10.0))
    try:
        with socket.create_server((host, port), reuse_port=False) as probe:
            probe.close()
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per model call is noise
    app = create_app(service, config)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again (the default handler would end
    # the process with -15): a graceful stop exits 0. Before uvicorn listens, SIGTERM just exits.
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        signal.signal(signal.SIGTERM, _exit_zero)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        seconds = float(value) if value else default
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from None
    if seconds <= 0:
        raise ConfigError(f"{name} must be positive, not {value!r}")
    return seconds


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)
