"""What this process can see of itself and of others on its machine, from Linux's /proc.

Used to name a lease owner precisely (see `tether.domain.leases`) and to check whether the owner
of a lease still exists. Elsewhere (no /proc) every answer is None, and leases simply expire.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from tether.domain.leases import Host

PROC = Path("/proc")


@functools.cache  # read once: a process's boot and namespaces do not change (a recovery asks per run)
def this_host() -> Host | None:
    """This boot of the kernel, and the namespaces this process sees pids and /proc in."""
    try:
        boot_id = (PROC / "sys/kernel/random/boot_id").read_text().strip()
        namespaces = ",".join(f"{ns}:{os.stat(PROC / 'self/ns' / ns).st_ino}" for ns in ("mnt", "pid"))
    except OSError:
        return None
    return Host(boot_id, namespaces) if boot_id else None


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot; None when there is no such process.

    Raises PermissionError when the process exists but its start time cannot be read (/proc
    mounted with hidepid hides other users' processes): the caller must not think it gone.
    """
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the pid exists
        except ProcessLookupError:
            return None
        raise PermissionError(f"process {pid} exists, but its start time cannot be read") from None
    # Fields after the command name, which is in parentheses and may itself contain ") ".
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[22 - 3])  # field 22 (starttime); fields[0] is field 3
