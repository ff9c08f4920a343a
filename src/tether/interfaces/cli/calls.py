"""What every `tether` command does around its work: open the services, run it on an event loop,
close them; print JSON for `--json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tether.services.compose import Services
    from tether.services.operator import OperatorConfig

T = TypeVar("T")


def services_call(operator: OperatorConfig, fn: Callable[[Services], Awaitable[T]], *,
                  lease_ttl_s: float | None = None) -> T:
    """Open the services the operator configuration names, run `fn` with them on an event loop, and
    close them."""
    from tether.services.compose import open_services
    from tether.services.runs import run_blocking

    async def go() -> T:
        services = open_services(operator, lease_ttl_s=lease_ttl_s)
        try:
            return await fn(services)
        finally:
            await services.close()

    return run_blocking(go())


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
