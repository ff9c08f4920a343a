"""`tether serve`: the server on uvicorn, with the checks a public address needs."""

from __future__ import annotations

import logging
import signal
import socket
import threading

from tether.domain.errors import ConfigError
from tether.interfaces.server.assistants import ServerConfig
from tether.interfaces.server.guard import allowed_host, is_loopback
from tether.interfaces.server.protocol import ConnectionLimits, protocol_class
from tether.services.compose import Services, open_services
from tether.services.operator import OperatorConfig

log = logging.getLogger("tether.server")


def serve(config: OperatorConfig, *, tune_gc: bool = False) -> None:
    """Run the server until SIGINT/SIGTERM (graceful: in-flight runs get a few seconds, then their
    leases are released for the next server). `tune_gc`: tune this process's garbage collector once
    started up (tether.runtime.tune_gc; `tether serve` owns its process, a caller's may not want it)."""
    config.require_set()  # the server uses every secret: an unset ${VAR} stops it now, not at a request
    settings, keys = config.server, config.api_keys
    host, port = settings.host, settings.port
    hosts = [allowed_host(h) for h in settings.allowed_hosts]  # checked with the settings: made canonical
    if not keys and not is_loopback(host):
        raise ConfigError(f"refusing to serve on {host} without API keys: anyone who can reach it could run "
                          "models and tools. Set TETHER_API_KEYS=key1,key2 or [server] api_keys (each key is a "
                          "tenant), or bind 127.0.0.1")
    import uvicorn

    from tether.interfaces.server.app import create_app

    services = open_services(config, documents=True)
    server_config = ServerConfig(api_keys=keys, concurrency=settings.concurrency, keepalive_s=settings.keepalive_s,
                                 allowed_hosts=hosts)
    limits = ConnectionLimits(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections,
                              settings.write_timeout_s)
    try:
        with socket.create_server((host, port), reuse_port=False) as probe:
            probe.close()
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per model call is noise
    app = create_app(services, server_config)
    _raise_file_limit(settings.max_connections)
    for line in summary(services, server_config, limits):
        log.info("%s", line)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again (the default handler would end
    # the process with -15): a graceful stop exits 0. Before uvicorn listens, SIGTERM just exits.
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        signal.signal(signal.SIGTERM, _exit_zero)
    if tune_gc:  # last before serving: what start-up made is frozen
        from tether.runtime import tune_gc as tune

        tune()
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10,
                http=protocol_class(limits))


def summary(services: Services, config: ServerConfig, limits: ConnectionLimits) -> list[str]:
    """What `tether serve` says when it starts: where, on which database and backend, with how many
    keys. Never a key, and no password of a URL."""
    operator, database_url, tools = services.operator, services.database_url, services.api_agents.tools
    host, port = operator.server.host, operator.server.port
    address = f"[{host}]" if ":" in host else host
    backend = operator.models.resolved()
    if backend.base_url:
        model_line = f"bare model names go to {operator.shown_url('models.base_url', backend.base_url)}"
    elif backend.api_key:
        model_line = "bare model names go to OpenAI's API (a key is set, no base URL)"
    else:
        model_line = "no model backend configured (set OPENAI_BASE_URL or [models] base_url)"
    n = len(config.api_keys)
    keys_line = (f"{n} API key{'s' if n != 1 else ''} (each a tenant)" if n else
                 "no API keys: loopback only, answering Host localhost, 127.0.0.1 or [::1]"
                 + (f" and {', '.join(config.allowed_hosts)}" if config.allowed_hosts else ""))
    offered = [name for name, grant in tools.grants.items() if grant.enabled]
    return [
        f"Tether serves the Assistants API at http://{address}:{port}/v1 (debug API under /v1/tether)",
        *([f"  configuration: {operator.source}"] if operator.source else []),
        f"  database: {operator.shown_url('store.url', database_url)}",
        f"  models: {model_line}",
        f"  keys: {keys_line}",
        f"  server-side tools: {', '.join(offered) or 'none'}; MCP servers: "
        f"{', '.join(sorted(tools.mcp_servers)) or 'none'}",
        "  file models (replay:, scripted:): " + ("allowed" if services.api_agents.allow_file_models else "refused"),
        f"  limits: {config.concurrency} runs at once; request headers within {limits.header_timeout_s:g} s, "
        f"bodies within {limits.body_timeout_s:g} s; a client reading nothing is dropped after "
        f"{limits.write_timeout_s:g} s; {limits.max_connections} connections",
    ]


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


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)
