"""Fixtures for the black-box Assistants API suite: one `tether serve` and one fake model per module.

Imports only the standard library, pytest, openai and the two stdlib helpers (`server.py` here and
`tests/fake_openai.py`), so it runs in a bare `openai + pytest` environment (see tests/test_sdk_matrix.py).
The server runs under TETHER_PYTHON (default: this interpreter), which must have tether installed;
TETHER_SDK_DATABASE_URL points it at another store (default: a SQLite file in its temporary TETHER_HOME).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
for _p in (HERE, HERE.parent):  # tests/sdk (server.py) and tests/ (fake_openai.py)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import openai  # noqa: E402
from chat import last_user_text  # noqa: E402
from server import TetherServer  # noqa: E402

from fake_openai import FakeOpenAI, FakeReply  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)

KEY_A = "sk-tether-tenant-a"
KEY_B = "sk-tether-tenant-b"
MODEL = "gpt-test"
BASE_INSTRUCTIONS = "You are the SDK suite's assistant."


def pytest_configure(config: pytest.Config) -> None:
    # Every Assistants method of the SDK warns that the API is deprecated (in every version tested).
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning")


# -- the fake model's script: replies chosen by a marker found in the request's messages --





class Script:
    """Scripted replies per test, keyed by a unique marker the test puts in its thread's messages.

    Requests that carry no registered marker (or whose marker has no reply left) are answered with
    `echo: <last user message>`, so concurrent runs are answered deterministically by content.
    """

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self._lock = threading.Lock()
        self._replies: dict[str, deque[FakeReply | str]] = {}

    @staticmethod
    def marker(label: str = "t") -> str:
        return f"<<{label}-{uuid.uuid4().hex[:10]}>>"

    def add(self, marker: str, *replies: FakeReply | str) -> str:
        with self._lock:
            self._replies.setdefault(marker, deque()).extend(replies)
        return marker

    def left(self, marker: str) -> int:
        with self._lock:
            return len(self._replies.get(marker, ()))

    def __call__(self, body: dict[str, Any]) -> FakeReply | str:
        text = json.dumps(body.get("messages") or [])
        with self._lock:
            for marker, replies in self._replies.items():
                if marker in text and replies:
                    return replies.popleft()
        return "echo: " + last_user_text(body)

    def requests(self, marker: str) -> list[dict[str, Any]]:
        """The chat-completions bodies the fake model received whose messages carry `marker`."""
        with self.fake._lock:
            bodies = list(self.fake.requests)
        return [b for b in bodies if marker in json.dumps(b.get("messages") or [])]


# -- fixtures --

@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as f:
        yield f


@pytest.fixture(scope="module")
def script(fake: FakeOpenAI) -> Script:
    s = Script(fake)
    fake.respond_with(s)
    return s


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI, script: Script, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("tether-serve")
    with TetherServer(model_base_url=fake.base_url, api_keys=[KEY_A, KEY_B], home=home,
                      database_url=os.environ.get("TETHER_SDK_DATABASE_URL")) as srv:
        yield srv
        if not srv.running:
            pytest.fail(f"the server died during the module (exit {srv.returncode})\n{srv.output_tail()}")


def make_client(server: TetherServer, key: str = KEY_A, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0,
                         _strict_response_validation=True, timeout=kw.pop("timeout", 30), **kw)


def make_async_client(server: TetherServer, key: str = KEY_A, **kw: Any) -> openai.AsyncOpenAI:
    """Make it inside the coroutine that uses it (each `asyncio.run` has its own loop)."""
    return openai.AsyncOpenAI(api_key=key, base_url=server.base_url, max_retries=0,
                              _strict_response_validation=True, timeout=kw.pop("timeout", 30), **kw)


@pytest.fixture(scope="module")
def client_factory(server: TetherServer):
    """`client_factory(key)`: a sync client of the server with that API key (closed at the module's end)."""
    made: list[openai.OpenAI] = []

    def make(key: str = KEY_A, **kw: Any) -> openai.OpenAI:
        made.append(make_client(server, key, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="module")
def async_client_factory(server: TetherServer):
    """`async_client_factory(key)`: an AsyncOpenAI client; make it inside the coroutine that uses it."""
    return lambda key=KEY_A, **kw: make_async_client(server, key, **kw)


@pytest.fixture(scope="module")
def client(server: TetherServer):
    c = make_client(server, KEY_A)
    yield c
    c.close()


@pytest.fixture(scope="module")
def client_b(server: TetherServer):
    c = make_client(server, KEY_B)
    yield c
    c.close()


@pytest.fixture(scope="module")
def assistant(client: openai.OpenAI):
    """A plain assistant of tenant A (no tools)."""
    return client.beta.assistants.create(model=MODEL, name="sdk-suite", instructions=BASE_INSTRUCTIONS)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A failing test's report gets the tail of what the server printed."""
    rep = yield
    srv = getattr(item, "funcargs", {}).get("server")
    if rep.when == "call" and rep.failed and isinstance(srv, TetherServer):
        rep.sections.append(("tether serve output", srv.output_tail(3000)))
    return rep
