"""`tether serve`: the server on uvicorn, with the checks a public address needs."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
import threading
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from tether.domain.errors import ConfigError
from tether.interfaces.server.assistants import ServerConfig
from tether.interfaces.server.guard import allowed_host, is_loopback
from tether.interfaces.server.protocol import ConnectionLimits, protocol_class

log = logging.getLogger("tether.server")


def keys_from_env() -> list[str]:
    return [k.strip() for k in os.environ.get("TETHER_API_KEYS", "").split(",") if k.strip()]


def serve(host: str = "127.0.0.1", port: int = 8000, *, concurrency: int = 16, allow_file_models: bool = False,
          mcp_config: Path | None = None, lease_ttl_s: float = 30.0, database_url: str | None = None,
          allowed_hosts: list[str] | None = None, header_timeout_s: float = 10.0, body_timeout_s: float = 30.0,
          max_connections: int = 1000) -> None:
    """Run the server until SIGINT/SIGTERM (graceful: in-flight runs get a few seconds, then their
    leases are released for the next server)."""
    keys = keys_from_env()
    try:
        hosts = [allowed_host(h) for h in allowed_hosts or []]
    except ValueError as e:
        raise ConfigError(f"--allowed-hosts: {e}") from None
    for flag, seconds in (("--header-timeout", header_timeout_s), ("--body-timeout", body_timeout_s)):
        if not 0 < seconds < math.inf:  # also refuses nan
            raise ConfigError(f"{flag} must be a positive number of seconds, not {seconds}")
    if max_connections < 1:
        raise ConfigError(f"--max-connections must be at least 1, not {max_connections}")
    if not keys and not is_loopback(host):
        raise ConfigError(f"refusing to serve on {host} without API keys: anyone who can reach it could run "
                          "models and tools. Set TETHER_API_KEYS=key1,key2 (each key is a tenant), or bind "
                          "127.0.0.1")
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, not {concurrency}")
    if lease_ttl_s <= 0:
        raise ConfigError(f"--lease-ttl must be positive, not {lease_ttl_s}")
    import uvicorn

    from tether.interfaces.server.app import create_app
    from tether.services.runs import RunsService

    mcp_servers = {}
    if mcp_config is not None:
        from tether.adapters.tools.mcp import import_mcp_json

        mcp_servers = {c.name: c for c in import_mcp_json(mcp_config)}
    from tether.adapters.store.sql import default_url, open_store

    database_url = database_url or default_url()
    store = open_store(database_url)
    if not hasattr(store, "put_object"):
        raise ConfigError("the server needs a store with objects (SQLite or Postgres)")
    service = RunsService(store, lease_ttl_s=lease_ttl_s)
    config = ServerConfig(api_keys=keys, allow_file_models=allow_file_models, concurrency=concurrency,
                          mcp_servers=mcp_servers, keepalive_s=_seconds("TETHER_SSE_KEEPALIVE_S", 10.0),
                          allowed_hosts=hosts)
    limits = ConnectionLimits(header_timeout_s, body_timeout_s, max_connections)
    try:
        with socket.create_server((host, port), reuse_port=False) as probe:
            probe.close()
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per model call is noise
    app = create_app(service, config)
    _raise_file_limit(max_connections)
    for line in summary(host, port, database_url, config, limits):
        log.info("%s", line)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again (the default handler would end
    # the process with -15): a graceful stop exits 0. Before uvicorn listens, SIGTERM just exits.
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        signal.signal(signal.SIGTERM, _exit_zero)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10,
                http=protocol_class(limits))


def summary(host: str, port: int, database_url: str, config: ServerConfig, limits: ConnectionLimits) -> list[str]:
    """What `tether serve` says when it starts: where, on which database and backend, with how many
    keys. Never a key, and no password of a URL."""
    address = f"[{host}]" if ":" in host else host
    backend = os.environ.get("OPENAI_BASE_URL")
    if backend:
        model_line = f"bare model names go to {redact_url(backend)} (OPENAI_BASE_URL)"
    elif os.environ.get("OPENAI_API_KEY"):
        model_line = "bare model names go to OpenAI's API (OPENAI_API_KEY is set, OPENAI_BASE_URL is not)"
    else:
        model_line = "no model backend configured (set OPENAI_BASE_URL, or OPENAI_API_KEY for OpenAI)"
    n = len(config.api_keys)
    keys_line = (f"{n} API key{'s' if n != 1 else ''} (each a tenant)" if n else
                 "no API keys: loopback only, answering Host localhost, 127.0.0.1 or [::1]"
                 + (f" and {', '.join(config.allowed_hosts)}" if config.allowed_hosts else ""))
    return [
        f"Tether serves the Assistants API at http://{address}:{port}/v1 (debug API under /v1/tether)",
        f"  database: {redact_url(database_url)}",
        f"  models: {model_line}",
        f"  keys: {keys_line}",
        f"  MCP servers: {', '.join(sorted(config.mcp_servers)) or 'none'}",
        "  file models (replay:, scripted:): " + ("allowed" if config.allow_file_models else "refused"),
        f"  limits: {config.concurrency} runs at once; request headers within {limits.header_timeout_s:g} s, "
        f"bodies within {limits.body_timeout_s:g} s; {limits.max_connections} connections",
    ]


_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|sig|auth", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` fit for a log: its password and secret-looking query values replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that could not be parsed, not shown)"
    out = url  # edited in place: unsplitting would turn sqlite:////abs/path into sqlite://abs/path
    if "@" in parts.netloc:
        userinfo, _, where = parts.netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        out = out.replace(parts.netloc, f"{user}:***@{where}" if colon else f"***@{where}", 1)  # a lone
        # userinfo may be a token
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(_SECRET_PARAM.search(k) for k, _ in query):
        hidden = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in query], safe="*")
        out = out.replace("?" + parts.query, "?" + hidden, 1)
    return out


def _raise_file_limit(max_connections: int) -> None:
    """Let the process open `max_connections` sockets besides its files (the soft limit is often 1024)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            new = soft
        if new < wanted:
            log.warning("the process may open only %d files: fewer than --max-connections %d allows", new,
                        max_connections)


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
