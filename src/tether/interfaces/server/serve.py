"""`tether serve`: the server on uvicorn, with the checks a public address needs."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading

from tether.domain.errors import ConfigError
from tether.interfaces.server.assistants import ServerConfig
from tether.services.operator import OperatorConfig

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(config: OperatorConfig) -> None:
    """Run the server until SIGINT/SIGTERM (graceful: in-flight runs get a few seconds, then their
    leases are released for the next server)."""
    import uvicorn

    from tether.interfaces.server.app import create_app
    from tether.services.runs import RunsService

    settings, keys = config.server, config.api_keys
    host, port = settings.host, settings.port
    if not keys and not is_loopback(host):
        raise ConfigError(f"refusing to serve on {host} without API keys: anyone who can reach it could run "
                          "models and tools. Set TETHER_API_KEYS=key1,key2 or [server] api_keys (each key is a "
                          "tenant), or bind 127.0.0.1")
    tools = config.server_tools()
    from tether.adapters.store.sql import open_store

    store = open_store(config.database_url)
    if not hasattr(store, "put_object"):
        raise ConfigError("the server needs a store with objects (SQLite or Postgres)")
    service = RunsService(store, lease_ttl_s=settings.lease_ttl_s)
    server_config = ServerConfig(api_keys=keys, allow_file_models=settings.allow_file_models,
                                 concurrency=settings.concurrency, tools=tools, models=config.models,
                                 keepalive_s=settings.keepalive_s)
    try:
        with socket.create_server((host, port), reuse_port=False) as probe:
            probe.close()
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per model call is noise
    app = create_app(service, server_config)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again (the default handler would end
    # the process with -15): a graceful stop exits 0. Before uvicorn listens, SIGTERM just exits.
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        signal.signal(signal.SIGTERM, _exit_zero)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)
