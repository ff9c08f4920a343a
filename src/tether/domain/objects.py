"""Documents kept beside the runs for the HTTP interface: assistants, threads, messages, and the
Assistants-API settings of each run.

The runs themselves stay in the run log; these rows hold only what the log does not: objects
that are not runs, what a client set on a run (its assistant, tools, metadata), and the
messages a client added to a thread. Each row belongs to a tenant (an API key's hash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# "projection": through which run a thread's finished runs have their messages projected as message
# rows; "message_override": a change to a message a run wrote (see services/thread_messages.py);
# "batch_agent": the settings of a batch made over HTTP (services/assistants/agents.py).
# At most 16 characters (the column's width).
ObjectKind = Literal["assistant", "thread", "message", "run", "projection", "message_override", "batch_agent"]


@dataclass(slots=True)
class StoredObject:
    id: str
    kind: ObjectKind
    tenant: str
    created_at: float
    data: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None  # the thread of a message or a run
