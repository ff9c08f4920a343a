"""The operator configuration: one TOML file for what whoever runs `tether serve` decides.

Where to listen, the API keys, the database, the model backend, the MCP servers, and every
server-side tool's options and caps. Flags override the file; the file overrides the environment
variables that were the only way before (`TETHER_API_KEYS`, `TETHER_DATABASE_URL`,
`OPENAI_BASE_URL`, `OPENAI_API_KEY`, `TETHER_SSE_KEEPALIVE_S`), which stay the defaults. Secrets are
written as `${ENV}` references; `redacted_toml()` (what `tether config show` prints) never shows
one. A secret's variable that is unset is an error where the value is used (`tether serve` uses
them all, `tether runs cancel` none: see `OperatorConfig.unset`). An unknown key is an error that
names it. See docs/server.md.

    [server]
    host = "127.0.0.1"
    port = 8000
    api_keys = ["${TETHER_KEY_TEAM_A}", "${TETHER_KEY_TEAM_B}"]

    [store]
    url = "postgresql+psycopg://tether:${PGPASSWORD}@db/tether"

    [models]
    base_url = "http://127.0.0.1:11434/v1"

    [mcp_servers.time]
    command = "uvx"
    args = ["mcp-server-time"]

    [tools.python]
    work_root = "/srv/tether/work"
    memory_mb = 256
    client_options = ["cpu_s", "wall_s", "memory_mb"]
    caps = { memory_mb = 512 }

    [budgets]
    default_max_output_tokens = 4096   # a call's output cap when it sets none and a budget covers it

    [prices."qwen2.5:7b"]              # USD per million tokens, for a model reference as agents name it
    input = 0.10
    output = 0.40

    [batches]
    max_concurrency = 32
    max_cost_usd = 5.0
    max_cases = 10000
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tether.adapters.config_files import expand_env, read_text
from tether.adapters.models.refs import ModelBackend
from tether.domain.errors import ConfigError
from tether.domain.governor import DEFAULT_MAX_OUTPUT_TOKENS, Price
from tether.domain.hosts import allowed_host
from tether.domain.redact import redact_url
from tether.services.server_tools import ServerTools, ToolGrant


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """`[server]`: how the HTTP server listens and whom it serves."""

    host: str = "127.0.0.1"
    port: int = 8000
    concurrency: int = 16
    lease_ttl_s: float = 30.0
    allow_file_models: bool = False
    keepalive_s: float = 10.0
    api_keys: tuple[str, ...] | None = field(default=None, repr=False)  # None: from TETHER_API_KEYS
    allowed_hosts: tuple[str, ...] = ()  # Host names a keyless server answers besides loopback ("*": any)
    header_timeout_s: float = 10.0  # a client sends a request's headers within this, or is closed
    body_timeout_s: float = 30.0  # ... and its body within this once its headers are in
    max_connections: int = 1000  # open connections at most; more are answered 503 and closed
    write_timeout_s: float = 30.0  # a client that reads nothing of a response for this long is dropped

    def check(self, flags: bool = False) -> None:
        """Raise ConfigError for a setting out of range, named as in the file (or as its flag)."""

        def called(name: str) -> str:
            return "--" + re.sub(r"_s$", "", name).replace("_", "-") if flags else f"[server] {name}"

        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{called('port')} must be between 0 and 65535, not {self.port}")
        for name in ("concurrency", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{called(name)} must be at least 1, not {getattr(self, name)}")
        for name in ("lease_ttl_s", "keepalive_s", "header_timeout_s", "body_timeout_s", "write_timeout_s"):
            if not 0 < getattr(self, name) < math.inf:  # also refuses nan
                raise ConfigError(f"{called(name)} must be a positive number of seconds, not {getattr(self, name)}")
        if not self.host.strip():
            raise ConfigError(f"{called('host')} must not be empty")
        for host in self.allowed_hosts:
            try:
                allowed_host(host)
            except ValueError as e:
                raise ConfigError(f"{called('allowed_hosts')}: {e}") from None
        if self.api_keys is not None and not all(k.strip() for k in self.api_keys):
            raise ConfigError("[server] api_keys holds an empty key (an unset ${VARIABLE}?)")


@dataclass(frozen=True, slots=True)
class BatchCaps:
    """`[batches]`: the most a tenant may ask of a batch over HTTP (a request above a cap is refused,
    never lowered in silence). None: no cap."""

    max_concurrency: int | None = None
    max_cost_usd: float | None = None  # a batch's budget; with a cap, every batch must set one
    max_cases: int | None = None

    def check(self) -> None:
        for name in ("max_concurrency", "max_cases"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"[batches] {name} must be at least 1, not {value}")
        if self.max_cost_usd is not None and not 0 < self.max_cost_usd < math.inf:
            raise ConfigError(f"[batches] max_cost_usd must be a positive number of dollars, not {self.max_cost_usd}")


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    """Everything the operator decides, from the file, flags and environment."""

    server: ServerSettings = field(default_factory=ServerSettings)
    # None: TETHER_DATABASE_URL, else the SQLite file in TETHER_HOME (a URL may hold a password: no repr)
    database_url: str | None = field(default=None, repr=False)
    models: ModelBackend = field(default_factory=ModelBackend)
    mcp_servers: Mapping[str, Any] = field(default_factory=dict, repr=False)  # name -> McpServerConfig
    tools: Mapping[str, ToolGrant] = field(default_factory=dict)
    source: Path | None = None  # the file it was read from
    # "models.base_url" -> as written, ${VAR}s kept (a literal secret too: no repr)
    written: Mapping[str, str] = field(default_factory=dict, repr=False)
    # What uses a `${VAR}` whose variable is unset ("[server] api_keys", "[models]", "[mcp_servers.NAME]")
    # -> its error. Raised where the value is read (`api_keys`, `models.resolved()`, an MCP server's
    # start), and all at once by `require_set()`: a command that uses none of them runs without them.
    unset: Mapping[str, str] = field(default_factory=dict)
    # `[prices."REF"]`: the price of a model reference (USD per token), for budgets and recorded costs;
    # it wins over what the model itself says (genai-prices for OpenAI's endpoint).
    prices: Mapping[str, Price] = field(default_factory=dict)
    # `[budgets] default_max_output_tokens`: the output cap a call under a token or cost budget carries
    # when it sets none, so that its reserved worst case holds.
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    batches: BatchCaps = field(default_factory=BatchCaps)

    def require_set(self) -> None:
        """Raise the error of the first `${VAR}` whose variable is unset (`tether serve` uses every value)."""
        for error in self.unset.values():
            raise ConfigError(error)

    def shown_url(self, key: str, value: str) -> str:
        """A URL fit to print: as the file wrote it (its ${VAR} references, never their values), else
        `value` with its password and secret-looking query values hidden."""
        return redact_url(self.written.get(key, value))

    @property
    def api_keys(self) -> list[str]:
        if "[server] api_keys" in self.unset:
            raise ConfigError(self.unset["[server] api_keys"])
        if self.server.api_keys is not None:
            return list(self.server.api_keys)
        return [k.strip() for k in os.environ.get("TETHER_API_KEYS", "").split(",") if k.strip()]

    def server_tools(self) -> ServerTools:
        return ServerTools(self.tools, self.mcp_servers)

    def with_server(self, **changes: Any) -> OperatorConfig:
        """This configuration with `[server]` settings changed (the flags that were given)."""
        server = replace(self.server, **{k: v for k, v in changes.items() if v is not None})
        server.check(flags=True)
        return replace(self, server=server)

    def with_mcp_json(self, path: Path) -> OperatorConfig:
        """This configuration plus the servers of an `mcpServers` JSON file (`--mcp-config`)."""
        from tether.adapters.tools.mcp import import_mcp_json

        added = {c.name: c for c in import_mcp_json(path)}
        clash = sorted(set(added) & set(self.mcp_servers))
        if clash:
            raise ConfigError(f"{path}: MCP server {', '.join(map(repr, clash))} is also in {self.source}'s "
                              "[mcp_servers]; name each server once")
        return replace(self, mcp_servers={**self.mcp_servers, **added})

    def redacted_toml(self) -> str:
        """The effective configuration as TOML, every secret replaced by `***`: what `tether serve`
        would use, so an unset `${VAR}` is an error here too."""
        self.require_set()
        keys = self.api_keys
        where = "the configuration" if self.server.api_keys is not None else "$TETHER_API_KEYS"
        lines = [f"# the effective operator configuration{f' (from {self.source})' if self.source else ''}",
                 "# secrets are shown as ***", "", "[server]"]
        for f in fields(ServerSettings):
            if f.name != "api_keys":
                lines.append(f"{f.name} = {_toml(getattr(self.server, f.name))}")
        lines.append(f"api_keys = {_toml(['***'] * len(keys))}  # {len(keys)} from {where}"
                     + ("; none: the server binds loopback only" if not keys else ""))
        database = self.database_url or os.environ.get("TETHER_DATABASE_URL") or None
        backend = self.models.resolved()
        lines += ["", "[store]", _line("url", database and self.shown_url("store.url", database),
                                       "the SQLite file in TETHER_HOME"),
                  "", "[models]", _line("base_url", backend.base_url and self.shown_url("models.base_url",
                                                                                      backend.base_url),
                                        "none: only openai:NAME models, with a key"),
                  _line("api_key", backend.api_key and "***", "none")]
        for name, server in sorted(self.mcp_servers.items()):
            lines += ["", f"[mcp_servers.{_key(name)}]"]
            for key, value in server.redacted().to_dict().items():
                if key != "name":
                    lines.append(f"{key} = {_toml(value)}")
        tools = self.server_tools()
        for name, grant in tools.grants.items():
            lines += ["", f"[tools.{name}]", f"enabled = {_toml(grant.enabled)}"]
            lines += [f"{k} = {_toml(v)}" for k, v in sorted(grant.options.items())]
            limits = tools.limits(name)
            lines.append(f"client_options = {_toml(sorted(limits))}")
            if limits:
                caps = ", ".join(f"{k} = {_toml(cap)}" for k, (_, cap) in limits.items())
                lines.append(f"caps = {{ {caps} }}")
        lines += ["", "[budgets]", f"default_max_output_tokens = {self.default_max_output_tokens}"]
        for ref, price in sorted(self.prices.items()):
            lines += ["", f"[prices.{_toml(ref)}]", f"input = {price.input_usd * 1e6:g}",
                      f"output = {price.output_usd * 1e6:g}"]
        lines += ["", "[batches]"]
        for f in fields(BatchCaps):
            value = getattr(self.batches, f.name)
            lines.append(f"{f.name} = {_toml(value)}" if value is not None else f"# {f.name}: no cap")
        return "\n".join(lines) + "\n"


def load_operator_config(path: Path | str | None = None) -> OperatorConfig:
    """The operator configuration: the environment's defaults, and the file at `path` over them.
    Raises ConfigError naming what is wrong."""
    if path is None:
        return OperatorConfig(_server_defaults())
    p = Path(path)
    try:
        data = tomllib.loads(read_text(p, "configuration file"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    try:
        return _parse(data, p)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


_TOP = {"server", "store", "models", "mcp_servers", "mcp_config", "tools", "budgets", "prices", "batches"}


class _Unset:
    """The `${VAR}`s whose variable is unset, by what uses them: each is an error only where that is used."""

    def __init__(self, path: Path) -> None:
        self.path, self.errors = path, dict[str, str]()

    def expand(self, value: str, where: str, user: str) -> str | None:
        """`value` expanded, or None when a variable in it is unset (recorded as `user`'s error)."""
        try:
            return expand_env(value, where)
        except ConfigError as e:  # the one error expand_env raises
            self.record(user, e)
            return None

    def record(self, user: str, error: ConfigError) -> None:
        self.errors.setdefault(user, f"{self.path}: {error}")  # worded as load_operator_config words errors


def _parse(data: dict[str, Any], path: Path) -> OperatorConfig:
    _only(data, _TOP, "the file", "top-level")
    unset = _Unset(path)
    server_table = _table(data, "server")
    known = {f.name: f for f in fields(ServerSettings)}
    _only(server_table, {*known, "api_keys_file"}, "[server]")
    values: dict[str, Any] = {}
    for name, value in server_table.items():
        if name == "api_keys_file":
            keys_file = unset.expand(_typed(value, str, "[server] api_keys_file"), "[server] api_keys_file",
                                     "[server] api_keys")
            keys_read = () if keys_file is None else _keys_file(path.parent / keys_file)
            values["api_keys"] = (*values.get("api_keys", ()), *keys_read)
        elif name == "allowed_hosts":
            if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
                raise ConfigError("[server] allowed_hosts must be a list of host names, e.g. [\"tether.internal\"]")
            values[name] = tuple(value)
        elif name == "api_keys":
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                raise ConfigError("[server] api_keys must be a list of strings, e.g. [\"${TETHER_KEY_A}\"]")
            expanded = (unset.expand(k, f"[server] api_keys[{i}]", "[server] api_keys") for i, k in enumerate(value))
            keys = tuple(k for k in expanded if k is not None)
            values[name] = (*keys, *values.get(name, ()))
        else:
            values[name] = _typed(value, type(getattr(ServerSettings(), name)), f"[server] {name}")
    server = replace(_server_defaults(), **values)
    server.check()

    store = _table(data, "store")
    _only(store, {"url"}, "[store]")
    written = {f"store.{k}": v for k, v in store.items() if isinstance(v, str)}
    database_url = expand_env(_typed(store["url"], str, "[store] url"), "[store] url") if "url" in store else None
    if database_url is not None and _in_folder(database_url, path.parent) != database_url:
        database_url = _in_folder(database_url, path.parent)
        written["store.url"] = _in_folder(written["store.url"], path.parent)  # shown as it is opened

    models = _table(data, "models")
    _only(models, {"base_url", "api_key"}, "[models]")
    written.update({f"models.{k}": v for k, v in models.items() if isinstance(v, str)})
    base_url, api_key = (unset.expand(_typed(models[k], str, f"[models] {k}"), f"[models] {k}", "[models]")
                         if k in models else None for k in ("base_url", "api_key"))
    backend = ModelBackend(base_url, api_key, unset.errors.get("[models]"))
    if backend.base_url is not None and not re.match(r"https?://", backend.base_url):
        shown = redact_url(backend.base_url)
        raise ConfigError(f"[models] base_url must start with http:// or https://, not {shown!r}")

    mcp_servers: dict[str, Any] = {}
    if "mcp_servers" in data:
        from tether.adapters.tools.mcp import configs_from_tables

        mcp_servers = {c.name: c for c in configs_from_tables(data["mcp_servers"])}
        for c in mcp_servers.values():  # an unset ${VARIABLE} is found now (serve checks), not at the first call
            try:
                c.expanded_env()
                c.expanded_headers()
            except ConfigError as e:  # an unset variable, the one error these raise
                where = f"[mcp_servers.{c.name}]"
                unset.record(where, ConfigError(f"{where} {e}"))  # "[mcp_servers.time] env.TOKEN uses ${…}"
    grants = _grants(_table(data, "tools"), path.parent)
    budgets = _table(data, "budgets")
    _only(budgets, {"default_max_output_tokens"}, "[budgets]")
    cap = _typed(budgets.get("default_max_output_tokens", DEFAULT_MAX_OUTPUT_TOKENS), int,
                 "[budgets] default_max_output_tokens")
    if cap < 1:
        raise ConfigError(f"[budgets] default_max_output_tokens must be at least 1, not {cap}")
    config = OperatorConfig(server, database_url, backend, mcp_servers, grants, path, written, unset.errors,
                            _prices(_table(data, "prices")), cap, _batch_caps(_table(data, "batches")))
    if "mcp_config" in data:
        json_path = Path(expand_env(_typed(data["mcp_config"], str, "mcp_config"), "mcp_config"))
        config = config.with_mcp_json(json_path if json_path.is_absolute() else path.parent / json_path)
    config.server_tools()  # checks every grant now
    return config


def _grants(tables: dict[str, Any], base: Path) -> dict[str, ToolGrant]:
    """`[tools.NAME]` tables; a relative `work_root` is relative to the file, like `mcp_config`."""
    grants = {}
    for name, table in tables.items():
        where = f"[tools.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table of options")
        options = dict(table)
        enabled = _typed(options.pop("enabled", True), bool, f"{where} enabled")
        caps = options.pop("caps", {})
        if not isinstance(caps, dict):
            raise ConfigError(f"{where} caps must be a table, e.g. caps = {{ memory_mb = 512 }}")
        client_options = options.pop("client_options", None)
        if client_options is not None and (not isinstance(client_options, list)
                                           or not all(isinstance(o, str) for o in client_options)):
            raise ConfigError(f"{where} client_options must be a list of option names, e.g. [\"cpu_s\"]")
        if "work_root" in options:
            root = Path(expand_env(_typed(options["work_root"], str, f"{where} work_root"), f"{where} work_root"))
            options["work_root"] = str(base.absolute() / root)  # an absolute root stays as it is
        grants[name] = ToolGrant(enabled, options, caps,
                                 None if client_options is None else frozenset(client_options))
    return grants


def _prices(tables: dict[str, Any]) -> dict[str, Price]:
    """`[prices."REF"]` tables: `input` and `output`, USD per million tokens."""
    prices = {}
    for ref, table in tables.items():
        where = f"[prices.{_toml(ref)}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table, e.g. {{ input = 0.15, output = 0.60 }} (USD per million "
                              "tokens)")
        _only(table, {"input", "output"}, where)
        figures = []
        for key in ("input", "output"):
            if key not in table:
                raise ConfigError(f"{where} needs {key} (USD per million {key} tokens)")
            value = _typed(table[key], float, f"{where} {key}")
            if not 0 <= value < math.inf:
                raise ConfigError(f"{where} {key} must be a price of 0 or more (USD per million tokens), not {value}")
            figures.append(value)
        prices[ref] = Price.per_million(*figures)
    return prices


def _batch_caps(table: dict[str, Any]) -> BatchCaps:
    known = {f.name: f for f in fields(BatchCaps)}
    _only(table, set(known), "[batches]")
    kinds = {"max_concurrency": int, "max_cases": int, "max_cost_usd": float}
    caps = BatchCaps(**{k: _typed(v, kinds[k], f"[batches] {k}") for k, v in table.items()})
    caps.check()
    return caps


def _in_folder(url: str, folder: Path) -> str:
    """A SQLite URL with its relative file path made relative to `folder` (the configuration file's,
    as for `mcp_config`), not to whichever folder a command runs in. Other URLs are as they are."""
    m = re.fullmatch(r"(sqlite(?:\+\w+)?:///)([^?]*)(.*)", url, re.DOTALL)
    if m is None:
        return url
    scheme, file, query = m.groups()
    if not file or file == ":memory:" or file.startswith(("file:", "~")) or Path(file).is_absolute():
        return url
    return f"{scheme}{folder.absolute() / file}{query}"


def _keys_file(path: Path) -> tuple[str, ...]:
    """API keys from a file (a mounted secret): one a line; blank lines and `#` comments skipped."""
    text = read_text(path, "[server] api_keys_file")
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        raise ConfigError(f"[server] api_keys_file: {path} holds no key (one a line)")
    return keys


def _server_defaults() -> ServerSettings:
    """`[server]` as the environment sets it without a file."""
    value = os.environ.get("TETHER_SSE_KEEPALIVE_S")
    try:
        keepalive_s = float(value) if value else 10.0
    except ValueError:
        raise ConfigError(f"TETHER_SSE_KEEPALIVE_S must be a number of seconds, not {value!r}") from None
    if keepalive_s <= 0:
        raise ConfigError(f"TETHER_SSE_KEEPALIVE_S must be positive, not {value!r}")
    return ServerSettings(keepalive_s=keepalive_s)


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _only(table: Mapping[str, Any], known: set[str], where: str, kind: str = "") -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"unknown {kind + ' ' if kind else ''}key {', '.join(map(repr, unknown))} in {where}; "
                          f"it takes {', '.join(sorted(known))}")


def _typed(value: Any, kind: type, where: str) -> Any:
    names: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{where} must be {names.get(kind, kind.__name__)}, not {value!r}")
    return value


def _line(key: str, value: str | None, unset: str) -> str:
    return f"{key} = {_toml(value)}" if value else f'{key} = ""  # {unset}'


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml(name)


def _toml(value: Any) -> str:
    converters: dict[type, Callable[[Any], str]] = {
        bool: lambda v: "true" if v else "false",
        str: lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"',
    }
    for kind, convert in converters.items():
        if isinstance(value, kind):
            return convert(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)
