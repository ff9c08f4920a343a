"""Server-side tools: what the operator offers, and the little an API client may choose.

The operator (whoever starts the server) configures every server-side tool in the operator
configuration: whether it is offered, its options (host paths, backends, limits) and, for each
limit, a cap. An API client names a tool and may set only the limits the operator lists in
`client_options`, each to a value at or below its cap (lowering a limit is always fine). A host
path, a backend or a raised limit can never come from a request: anything else is an
`InvalidRequest` naming the field. Agent files are local and trusted; they do not pass through here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.adapters.tools.builtins import BUILTINS, BuiltinSpec, builtin
from tether.domain.errors import ConfigError, InvalidRequest


@dataclass(frozen=True, slots=True)
class ToolGrant:
    """What the operator allows for one built-in tool.

    - `options`: what every run gets when its client asks for nothing (the tool's defaults otherwise).
    - `caps`: the most a client may ask for each limit; a limit without a cap cannot be raised
      above the value in `options` (or the tool's default).
    - `client_options`: the limits a client may set at all (None: every limit).
    """

    enabled: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    caps: Mapping[str, float] = field(default_factory=dict)
    client_options: frozenset[str] | None = None


class ServerTools:
    """The server-side tools a server offers: the built-ins under the operator's grants, and the
    MCP servers the operator configured (a client names one; it never supplies a command)."""

    def __init__(self, grants: Mapping[str, ToolGrant] | None = None,
                 mcp_servers: Mapping[str, Any] | None = None) -> None:
        grants = dict(grants or {})
        unknown = sorted(set(grants) - set(BUILTINS))
        if unknown:
            raise ConfigError(f"[tools]: unknown tool {', '.join(map(repr, unknown))}; the server's built-in tools "
                              f"are {', '.join(sorted(BUILTINS))} (MCP servers go in [mcp_servers])")
        self.grants = {name: grants.get(name, ToolGrant()) for name in BUILTINS}
        for name, grant in self.grants.items():
            _check_grant(name, BUILTINS[name], grant)
        self.mcp_servers = dict(mcp_servers or {})  # name -> McpServerConfig

    def limits(self, name: str) -> dict[str, tuple[float, float]]:
        """Each limit a client may set for tool `name`: (the value a run gets, the cap)."""
        spec, grant = BUILTINS[name], self.grants[name]
        allowed = grant.client_options if grant.client_options is not None else set(spec.limit_types())
        out = {}
        for option in sorted(allowed):
            value = grant.options.get(option, spec.limit_types()[option][1])
            out[option] = (value, grant.caps.get(option, value))
        return out

    def builtin(self, tool: str, options: Mapping[str, Any] | None, param: str, **operator: Any) -> Any:
        """The built-in `tool` as the operator configured it, narrowed by a client's `options`
        (`param` names them in errors); `operator` adds options of the server's own (a name)."""
        spec, grant = BUILTINS.get(tool), self.grants.get(tool)
        if spec is None or grant is None:
            raise InvalidRequest(f"Invalid value for '{param}': there is no server-side tool {tool!r}", param)
        if not grant.enabled:
            raise InvalidRequest(f"The {tool} tool is not offered by this server (its operator switched it off).",
                                 param)
        chosen = self._client_options(tool, spec, grant, options, f"{param}.options")
        try:
            return builtin(tool, {**grant.options, **chosen, **operator})
        except ConfigError as e:
            raise InvalidRequest(f"Invalid value for '{param}.options': {e}", f"{param}.options") from None

    def mcp(self, server: str | None, options: Mapping[str, Any] | None, param: str) -> Any:
        """The configuration of the MCP server a client names."""
        config = self.mcp_servers.get(server or "")
        if config is None:
            offered = ", ".join(sorted(self.mcp_servers)) or "none"
            raise InvalidRequest(f"Unknown MCP server {server!r}: this server offers {offered} (its operator "
                                 "configures them).", f"{param}.server")
        if options:
            raise InvalidRequest(f"Invalid value for '{param}.options': an MCP server takes no options from a "
                                 "request; its operator configures it.", f"{param}.options")
        return config

    def _client_options(self, name: str, spec: BuiltinSpec, grant: ToolGrant, options: Mapping[str, Any] | None,
                        param: str) -> dict[str, Any]:
        if options is None:
            return {}
        if not isinstance(options, Mapping):
            raise InvalidRequest(f"Invalid value for '{param}': expected an object of limits.", param)
        allowed = self.limits(name)
        types = spec.limit_types()
        chosen = {}
        for key, value in options.items():
            where = f"{param}.{key}"
            if key in spec.operator_options:
                raise InvalidRequest(f"Invalid value for '{where}': the {name} tool's {key!r} is set by the server's "
                                     "operator, never by a request.", where)
            if key not in types:
                raise InvalidRequest(f"Invalid value for '{where}': the {name} tool has no option {key!r}; "
                                     f"{_settable(allowed)}.", where)
            if key not in allowed:
                raise InvalidRequest(f"Invalid value for '{where}': this server does not let a request set the "
                                     f"{name} tool's {key!r}; {_settable(allowed)}.", where)
            problem = _limit_problem(value, types[key][0])
            if problem:
                raise InvalidRequest(f"Invalid value for '{where}': {problem}.", where)
            cap = allowed[key][1]
            if value > cap:
                raise InvalidRequest(f"Invalid value for '{where}': {value} is above this server's cap of "
                                     f"{_num(cap)}.", where)
            chosen[key] = value
        return chosen


def _check_grant(name: str, spec: BuiltinSpec, grant: ToolGrant) -> None:
    """The operator's own grant must make sense: known options, caps and client options on limits."""
    where = f"[tools.{name}]"
    unknown = sorted(set(grant.options) - spec.options)
    if unknown:
        takes = ", ".join(sorted(spec.options)) or "no options"
        raise ConfigError(f"{where}: unknown option {', '.join(map(repr, unknown))}; the {name} tool takes {takes}")
    types = spec.limit_types()
    for label, keys in (("caps", set(grant.caps)), ("client_options", set(grant.client_options or ()))):
        not_limits = sorted(keys - set(types))
        if not_limits:
            raise ConfigError(f"{where} {label}: {', '.join(map(repr, not_limits))} "
                              f"{'is' if len(not_limits) == 1 else 'are'} not a limit of the {name} tool; its limits "
                              f"are {', '.join(sorted(types)) or 'none'}")
    for key, value in [*grant.options.items(), *(("caps." + k, v) for k, v in grant.caps.items())]:
        kind = types.get(key.removeprefix("caps."))
        problem = kind and _limit_problem(value, kind[0])
        if problem:
            raise ConfigError(f"{where} {key}: {problem}")
    for key, cap in grant.caps.items():
        value = grant.options.get(key, types[key][1])
        if cap < value:
            raise ConfigError(f"{where} caps.{key} = {_num(cap)} is below the value runs get ({_num(value)}); "
                              f"lower `{key}` too, or raise the cap")
    if grant.enabled:
        try:  # made once now, so a bad option stops the server at start, not a request later
            builtin(name, dict(grant.options))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _limit_problem(value: Any, kind: type) -> str | None:
    """What is wrong with `value` as a limit of type `kind` (None: nothing): a limit is a finite
    positive number, a whole one where the limit counts things (megabytes, files, processes)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected {'an integer' if kind is int else 'a number'}, got {_shown(value)}"
    if kind is int and not isinstance(value, int):
        return f"expected an integer, got {_shown(value)}"
    if not math.isfinite(value) or value <= 0:
        return f"expected a positive number, got {_shown(value)}"
    return None


def _settable(allowed: Mapping[str, tuple[float, float]]) -> str:
    if not allowed:
        return "a request may set none of its options"
    return "a request may set " + ", ".join(f"{k} (up to {_num(cap)})" for k, (_, cap) in allowed.items())


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
