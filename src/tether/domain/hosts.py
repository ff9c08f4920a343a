"""Host names and addresses as a server sees them in a `Host` header, and as an operator allows them.

Pure functions (no I/O): the server's guard against DNS rebinding and the operator configuration
both use them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re

# Names that never reach DNS (RFC 6761 and the usual /etc/hosts entries): a page cannot own them.
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_PORT = re.compile(r"[0-9]{0,5}")
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


def is_loopback(host: str) -> bool:
    """A loopback name or address (`[::1]` with or without brackets), compared case-insensitively."""
    host = host.lower().removesuffix(".")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def host_of(authority: str) -> str | None:
    """The host of a Host header (`name[:port]`, `[v6][:port]`), lowercased without a trailing dot;
    None if it is not a valid Host value (userinfo, a bad port, an unbracketed IPv6 address...)."""
    value = authority.strip().lower()
    if value.startswith("["):
        inside, bracket, port = value[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            return None
    else:
        host, _, port = value.partition(":")
        host = host.removesuffix(".")
        if not _NAME.fullmatch(host):
            return None
    if not _PORT.fullmatch(port) or (port and int(port) > 65535):
        return None
    return host


def allowed_host(name: str) -> str:
    """An operator's allowed host in the form `host_of` gives: lowercase, no trailing dot, an IPv6
    address without brackets in its short form; `*` allows any. ValueError if it is not a host."""
    value = name.strip().lower()
    if value == "*":
        return value
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv6Address(value.removeprefix("[").removesuffix("]")))
    host = host_of(value)
    if host is None or ":" in value:
        raise ValueError(f"{name!r} is not a host name or address (give one like api.example.com, "
                         "without a scheme or port, or * for any)")
    return host
