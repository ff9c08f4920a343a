"""The composition root: the services every face (CLI, HTTP server, Python) works with, built
from the operator configuration.

Interfaces never open a store, pick a dispatcher or build an agent themselves: they ask for
`Services` here and call them. Whatever face made a run, every face can act on it, because the
same resolvers are registered for all (e.g. `api:` for the runs `tether serve` made, rebuilt
from their stored settings with the operator's model backend and server-side tools).

The operator configuration is the file given with `--config`, else `$TETHER_CONFIG`, else the
environment's defaults (see docs/server.md).
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tether.domain.errors import ConfigError
from tether.engine.governor import BudgetGovernor
from tether.services.assistants.agents import ApiAgents
from tether.services.assistants.service import AssistantsService
from tether.services.assistants.thread_runs import ThreadRun
from tether.services.batches import BatchesService
from tether.services.dispatch import Dispatcher, InProcessDispatcher
from tether.services.events import RunEvents
from tether.services.operator import OperatorConfig, load_operator_config
from tether.services.runs import RunsService

CONFIG_ENV = "TETHER_CONFIG"


@dataclass(slots=True)
class Services:
    """What a face needs: the runs service, the dispatcher that advances runs in the background,
    run event subscriptions, the Assistants documents (and how an API run's agent is built, under
    the operator's grants), the operator configuration they were built from, and batches."""

    runs: RunsService
    dispatcher: Dispatcher
    events: RunEvents
    api_agents: ApiAgents
    assistants: AssistantsService[ThreadRun]
    operator: OperatorConfig
    database_url: str  # where the runs live (as configured: print it with `operator.shown_url`)
    batches: BatchesService


    async def close(self, grace_s: float = 5.0) -> None:
        """Stop the dispatcher (runs in flight get `grace_s`), then close the store."""
        try:
            await self.batches.close()  # batches run in the background stop first: no new case starts
            await self.dispatcher.close(grace_s)
        finally:
            close = getattr(self.runs.store, "close", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result


def operator_config(path: Path | str | None = None) -> OperatorConfig:
    """The operator configuration: the file at `path`, else the one `$TETHER_CONFIG` names, else
    the environment's defaults. A file that cannot be read is a ConfigError saying which."""
    if path is None:
        env = os.environ.get(CONFIG_ENV, "").strip()
        if env:
            try:
                return load_operator_config(env)
            except ConfigError as e:
                raise ConfigError(f"{e} (from ${CONFIG_ENV})") from None
    return load_operator_config(path)


def open_services(operator: OperatorConfig | None = None, *, lease_ttl_s: float | None = None,
                  database_url: str | None = None, documents: bool = False) -> Services:
    """The services on the store the configuration names (else $TETHER_DATABASE_URL, else the
    SQLite file in $TETHER_HOME). `lease_ttl_s` overrides the configuration's `[server] lease_ttl_s`;
    `documents`: the store must keep documents too (assistants, threads: the server needs them)."""
    from tether.adapters.store.sql import default_url, open_store

    operator = operator or operator_config()
    ttl = operator.server.lease_ttl_s if lease_ttl_s is None else lease_ttl_s
    if not 0 < ttl < math.inf:  # also refuses NaN
        raise ConfigError(f"--lease-ttl must be a positive number of seconds, not {ttl}")
    url = database_url or operator.database_url or default_url()
    store = open_store(url)
    if documents and not hasattr(store, "put_object"):
        raise ConfigError("the server needs a store with objects (SQLite or Postgres)")
    governor = BudgetGovernor(store, prices=operator.prices,
                              default_max_output_tokens=operator.default_max_output_tokens)
    return services_for(RunsService(store, lease_ttl_s=ttl, governor=governor), operator, database_url=url)


def services_for(runs: RunsService, operator: OperatorConfig | None = None, *, concurrency: int | None = None,
                 database_url: str = "") -> Services:
    """The services around a runs service made elsewhere (a test's, a user's own store)."""
    operator = operator or load_operator_config(None)
    # The operator's grants, built once. The Assistants service registers, for every face, how the
    # runs `tether serve` made are rebuilt (only when one is acted on) and what their forks get.
    api_agents = ApiAgents(operator.server_tools(), operator.models, operator.server.allow_file_models)
    assistants = AssistantsService(runs, api_agents, ThreadRun)
    assistants.register()
    dispatcher = InProcessDispatcher(runs, concurrency=concurrency or operator.server.concurrency)
    return Services(runs, dispatcher, RunEvents(runs, dispatcher.bus), api_agents, assistants, operator,
                    database_url, BatchesService(runs))


def tether_home() -> Path:
    """Tether's own folder: `$TETHER_HOME`, else `$XDG_DATA_HOME/tether`, else ~/.local/share/tether."""
    from tether.adapters.store.sql import tether_home as home

    return home()
