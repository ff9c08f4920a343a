"""Who holds a run's lease, when a lease is free before it expires, and what renewing it brings back.

A lease owner is a string kept in the store. Besides a readable `host:pid:nonce`, it carries the
identity of the owning process on its machine: the kernel's boot id, the namespaces it sees
processes in (a container sharing the kernel, or even the host name, has others), its pid and
the process's start time (clock ticks since boot). With these, a process on the same machine can
tell that the owner is gone — its pid no longer exists, or now names a later process — and take
the run over at once instead of waiting for the lease to expire. Anything less certain (another
machine, another container, an owner string without the identity) waits for expiry.

Nothing here does I/O: the caller reads /proc and passes what it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A run whose lease its owner's heartbeat renewed, with what was set on it from outside since:
    a cancel asked for by another process, breakpoints changed on it (None: none asked, none set)."""

    run_id: str
    cancel_requested: str | None = None
    breakpoints: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Host:
    """Where a process runs: one boot of one kernel, seen from one set of namespaces."""

    boot_id: str
    namespaces: str  # e.g. "mnt:4026531841,pid:4026531836": pids mean something only within these


@dataclass(frozen=True, slots=True)
class Owner:
    """A lease owner, as parsed back from its string."""

    name: str  # host:pid:nonce, for people
    host: Host | None  # None: an owner that did not say (an older Tether, a system without /proc)
    pid: int | None
    start_ticks: int | None  # field 22 of /proc/PID/stat when the owner wrote it


def owner_string(name: str, host: Host | None, pid: int, start_ticks: int | None) -> str:
    """The lease owner string of a process; `owner_of` reads it back."""
    if host is None or start_ticks is None:
        return name
    return f"{name} boot={host.boot_id} ns={host.namespaces} pid={pid} start={start_ticks}"


def owner_of(text: str) -> Owner:
    """Parse a lease owner string; the identity fields are None when absent or malformed."""
    name, *fields = text.split(" ")
    values = dict(f.partition("=")[::2] for f in fields)
    boot, ns, pid, start = (values.get(k, "") for k in ("boot", "ns", "pid", "start"))
    if not (boot and ns and pid.isdigit() and start.isdigit()):
        return Owner(name, None, None, None)
    return Owner(name, Host(boot, ns), int(pid), int(start))


def owner_is_gone(owner: Owner, here: Host | None, start_ticks_now: int | None) -> bool:
    """Whether `owner`'s lease is free now, before it expires.

    `here` is the host of the process asking; `start_ticks_now` is the start time of the process
    that has the owner's pid here now (None: no such process). Only an owner on this very boot of
    this kernel, in the same namespaces, is known to be gone: its pid names no process, or names
    one that started at another time (the pid was reused). Otherwise it may be alive elsewhere.
    """
    if here is None or owner.host is None or owner.host != here or owner.start_ticks is None:
        return False
    return start_ticks_now is None or start_ticks_now != owner.start_ticks
