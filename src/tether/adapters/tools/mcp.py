"""MCP servers as tools, through the official `mcp` SDK (the optional extra `tether[mcp]`).

A server is described by an agent file's `[mcp_servers.NAME]` table or by an entry of the
common `{"mcpServers": {NAME: {...}}}` JSON: `command`/`args`/`env` runs it as a subprocess
over stdio, `url` reaches it over streamable HTTP.

Names. Each tool of server NAME is offered to the model as `NAME__TOOL`: the server name
with every run of characters outside `[A-Za-z0-9-]` turned into one `_` (so it never
contains `__`), two underscores, then the tool name with characters outside `[A-Za-z0-9_-]`
turned into `_`. Server names are unique, so two servers cannot collide. A name longer than
64 characters (OpenAI's limit) is cut to 55 and given `_` plus 8 hex digits of a hash of the
full name.

Sessions. `McpServer` holds at most one live session. The session is owned by a background
task that enters and exits `async with Client(...)` (the SDK's task groups and cancel scopes
must be entered and left in one task); calls are made from the callers' own tasks, so the
calls of one turn run concurrently over one session. The session starts on first use. A call
that finds the server gone (end of file, a dead process, a dropped connection) or that gets
no answer within `timeout_s` raises `ToolError` and retires the session: it is closed once
its other calls are done (killing the process if it does not exit), and the next call starts
a new one. `close()` ends the session; the server object stays usable and reconnects on the
next call, so a run that pauses can close its servers and a resumed run gets them back.

Secrets. `env` and `headers` values may name environment variables as `${VAR}`; they are
expanded only when connecting and never stored expanded. `redacted()` replaces every `env`
and `headers` value (and a password in the URL) with `***`, for recording. Expanded values
are replaced by `***` in error messages too (such as a server's last stderr lines).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from tether.adapters.config_files import expand_env, read_text
from tether.domain.errors import ConfigError
from tether.domain.redact import redact_url
from tether.domain.tools import ToolContext, ToolError, ToolPolicy

logger = logging.getLogger("tether.mcp")

MAX_TOOL_NAME = 64
_TABLE_KEYS = {"command", "args", "env", "cwd", "url", "headers", "type", "transport", "timeout_s",
               "startup_timeout_s"}
_STDIO_TYPES = {"stdio"}
_HTTP_TYPES = {"http", "streamable-http", "streamable_http", "streamablehttp"}
_CLOSE_TIMEOUT_S = 10.0


# -- configuration ------------------------------------------------------------------------------


@dataclass(slots=True)
class McpServerConfig:
    """How to reach one MCP server: `command` (stdio subprocess) or `url` (streamable HTTP).

    `timeout_s` bounds each call (a server that does not answer in time is restarted on the
    next call); `startup_timeout_s` bounds starting the server and the MCP handshake.
    """

    name: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_s: float = 60.0
    startup_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        where = f"MCP server {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("an MCP server needs a non-empty name")
        if not re.search(r"[A-Za-z0-9]", self.name):
            raise ConfigError(f"{where}: the name must contain a letter or a digit")
        if (self.command is None) == (self.url is None):
            raise ConfigError(f"{where}: give exactly one of `command` (a program run over stdio) "
                              "or `url` (a streamable HTTP endpoint such as \"http://127.0.0.1:8000/mcp\")")
        if self.command is not None and (not isinstance(self.command, str) or not self.command.strip()):
            raise ConfigError(f"{where}: `command` must be a non-empty string")
        if self.url is not None:
            if not isinstance(self.url, str) or not re.match(r"https?://", self.url):
                raise ConfigError(f"{where}: `url` must start with http:// or https://, got {self.url!r}")
            if self.args or self.env or self.cwd:
                raise ConfigError(f"{where}: `args`, `env` and `cwd` apply to a `command`, not to a `url`")
        elif self.headers:
            raise ConfigError(f"{where}: `headers` apply to a `url`, not to a `command`")
        if not isinstance(self.args, list) or not all(isinstance(a, str) for a in self.args):
            raise ConfigError(f"{where}: `args` must be a list of strings")
        for key in ("env", "headers"):
            value = getattr(self, key)
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in value.items()):
                raise ConfigError(f"{where}: `{key}` must map names to strings (quote numbers: PORT = \"8080\")")
        if self.cwd is not None and not isinstance(self.cwd, str):
            raise ConfigError(f"{where}: `cwd` must be a string")
        for key in ("timeout_s", "startup_timeout_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{where}: `{key}` must be a positive number of seconds, got {value!r}")

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> McpServerConfig:
        """From an agent file's `[mcp_servers.NAME]` table."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"[mcp_servers.{name}] must be a table with `command` or `url`")
        unknown = set(table) - _TABLE_KEYS
        if unknown:
            raise ConfigError(f"[mcp_servers.{name}]: unknown keys {sorted(unknown)}; "
                              f"an MCP server has {sorted(_TABLE_KEYS)}")
        _check_type(name, table)
        kwargs = {k: _copy(table[k]) for k in _TABLE_KEYS - {"type", "transport"} if k in table}
        return cls(name=name, **kwargs)

    def redacted(self) -> McpServerConfig:
        """This configuration with every `env`/`headers` value and any URL password as `***`."""
        return replace(self, env={k: "***" for k in self.env}, headers={k: "***" for k in self.headers},
                       url=None if self.url is None else redact_url(self.url, keep_user=False),
                       args=list(self.args))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, without defaults; record `redacted().to_dict()`, never this one's own."""
        out: dict[str, Any] = {"name": self.name}
        for key in ("command", "args", "env", "cwd", "url", "headers"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.timeout_s != 60.0:
            out["timeout_s"] = self.timeout_s
        if self.startup_timeout_s != 30.0:
            out["startup_timeout_s"] = self.startup_timeout_s
        return out

    def expanded_env(self) -> dict[str, str]:
        """`env` with `${VAR}` expanded from the environment (ConfigError if a variable is unset)."""
        return {k: self._expand(v, f"env.{k}") for k, v in self.env.items()}

    def expanded_headers(self) -> dict[str, str]:
        return {k: self._expand(v, f"headers.{k}") for k, v in self.headers.items()}

    def secrets(self) -> list[str]:
        """The expanded values that must never appear in a message (best effort)."""
        values = []
        for raw in (*self.env.values(), *self.headers.values()):
            with contextlib.suppress(ConfigError):
                values.append(self._expand(raw, ""))
        return [v for v in values if len(v) >= 4]

    def _expand(self, value: str, where: str) -> str:
        return expand_env(value, where)


def configs_from_tables(tables: Mapping[str, Any]) -> list[McpServerConfig]:
    """All servers of an agent file's `[mcp_servers]` table."""
    if not isinstance(tables, Mapping):
        raise ConfigError("[mcp_servers] must be a table of servers, e.g. [mcp_servers.time] command = \"uvx\"")
    configs = [McpServerConfig.from_table(str(name), table) for name, table in tables.items()]
    _check_prefixes(configs)
    return configs


def import_mcp_json(source: str | Path | Mapping[str, Any]) -> list[McpServerConfig]:
    """Servers from the common `{"mcpServers": {NAME: {command, args, env} | {url, headers}}}` JSON.

    `source` is a path or the parsed JSON. VS Code's `{"servers": {...}}` is read too; entries
    with `"disabled": true` are skipped, and keys other clients add (`alwaysAllow`, ...) ignored.
    """
    if isinstance(source, Mapping):
        data: Any = source
        origin = "the MCP configuration"
    else:
        p = Path(source)
        origin = str(p)
        try:
            data = json.loads(read_text(p, "MCP configuration file"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}") from None
    servers = data.get("mcpServers", data.get("servers")) if isinstance(data, Mapping) else None
    if not isinstance(servers, Mapping):
        raise ConfigError(f"{origin}: expected {{\"mcpServers\": {{\"NAME\": {{\"command\": ..., \"args\": [...]}}}}}}")
    configs = []
    for name, entry in servers.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{origin}: server {name!r} must be an object with \"command\" or \"url\"")
        if entry.get("disabled") is True:
            continue
        _check_type(str(name), entry)
        configs.append(McpServerConfig(
            name=str(name), command=entry.get("command"), args=_copy(entry.get("args") or []),
            env=_copy(entry.get("env") or {}), url=entry.get("url"), headers=_copy(entry.get("headers") or {}),
            cwd=entry.get("cwd"),
        ))
    _check_prefixes(configs)
    return configs


def _copy(value: Any) -> Any:
    """A list or table copied (so a config never shares the caller's), anything else as it is."""
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _check_type(name: str, table: Mapping[str, Any]) -> None:
    kind = table.get("type", table.get("transport"))
    if kind is None:
        return
    kind = str(kind).lower()
    if kind == "sse":
        raise ConfigError(f"MCP server {name!r}: the old SSE transport is not supported; "
                          "use the server's streamable HTTP endpoint (usually .../mcp) as `url`")
    if kind in _STDIO_TYPES and "command" not in table:
        raise ConfigError(f"MCP server {name!r}: type \"stdio\" needs a `command`")
    if kind in _HTTP_TYPES and "url" not in table:
        raise ConfigError(f"MCP server {name!r}: type {kind!r} needs a `url`")
    if kind not in _STDIO_TYPES | _HTTP_TYPES:
        raise ConfigError(f"MCP server {name!r}: unknown type {kind!r}; use \"stdio\" or \"http\"")


def _check_prefixes(configs: Sequence[McpServerConfig]) -> None:
    seen: dict[str, str] = {}
    for c in configs:
        prefix = server_prefix(c.name)
        if prefix in seen:
            raise ConfigError(f"MCP servers {seen[prefix]!r} and {c.name!r} would give their tools the same "
                              f"prefix {prefix + '__'!r}; rename one of them")
        seen[prefix] = c.name


# -- names --------------------------------------------------------------------------------------


def server_prefix(server: str) -> str:
    """The server part of a tool name: runs of characters outside `[A-Za-z0-9-]` become `_`."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", server).strip("_") or "server"


def mcp_tool_name(server: str, tool: str) -> str:
    """`SERVER__TOOL`, limited to `[A-Za-z0-9_-]` and 64 characters (see the module docstring)."""
    full = f"{server_prefix(server)}__{re.sub(r'[^A-Za-z0-9_-]', '_', tool) or 'tool'}"
    if len(full) <= MAX_TOOL_NAME:
        return full
    digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:8]
    return f"{full[:MAX_TOOL_NAME - 9]}_{digest}"


# -- results ------------------------------------------------------------------------------------


class McpResult(NamedTuple):
    """A tool call's outcome: the text content joined, the structured content, and `is_error`."""

    text: str
    structured: Any
    is_error: bool


def result_text(result: McpResult) -> str:
    """What the model sees: the text, and the structured content as JSON unless the text is it."""
    if result.structured is None:
        return result.text
    encoded = json.dumps(result.structured, ensure_ascii=False, default=str)
    if not result.text.strip():
        return encoded
    try:
        parsed: Any = json.loads(result.text)
    except ValueError:
        parsed = result.text
    wrapped = isinstance(result.structured, dict) and list(result.structured) == ["result"]
    if parsed == result.structured or (wrapped and result.structured["result"] in (parsed, result.text)):
        return result.text  # the text already says it (servers often send both, or wrap a value as "result")
    return f"{result.text}\n{encoded}"


def _content_text(block: Any) -> str:
    kind = getattr(block, "type", None)
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        size = len(getattr(block, "data", "") or "") * 3 // 4
        return f"[{kind}: {getattr(block, 'mime_type', '?')}, about {size} bytes]"
    if kind == "resource_link":
        return f"[resource: {block.uri}]"
    if kind == "resource":
        res = block.resource
        text = getattr(res, "text", None)
        return str(text) if text is not None else f"[resource: {res.uri} ({getattr(res, 'mime_type', None) or '?'})]"
    dump = getattr(block, "model_dump", None)
    return json.dumps(dump(mode="json", exclude_none=True) if dump else str(block), ensure_ascii=False)


def _to_result(result: Any) -> McpResult:
    text = "\n".join(_content_text(b) for b in (result.content or []))
    return McpResult(text, result.structured_content, bool(result.is_error))


# -- servers and sessions -----------------------------------------------------------------------


class _StartFailed(Exception):
    """The server could not be started; the message is ready for the user."""


class _StderrTail:
    """A stdio server's stderr: the last lines kept for error messages, all of it logged at DEBUG."""

    def __init__(self, server: str) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        r, w = os.pipe()
        self.file = os.fdopen(w, "w")
        reader = os.fdopen(r, "rb")
        log = logging.getLogger(f"tether.mcp.{server_prefix(server)}")

        def pump() -> None:
            with reader:
                for raw in reader:
                    line = raw.decode("utf-8", "replace").rstrip()
                    if line:
                        self.lines.append(line)
                        log.debug("%s", line)

        threading.Thread(target=pump, name=f"mcp-stderr-{server}", daemon=True).start()

    def close_writer(self) -> None:
        """Close our end once the process has it, so the reader ends when the process does."""
        with contextlib.suppress(OSError):
            self.file.close()

    def tail(self, n: int = 8) -> str:
        return "\n".join(list(self.lines)[-n:])


class _Session:
    """One connection to the server, owned by a task that holds `async with Client(...)` open."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.client: Any = None
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(lambda f: None if f.cancelled() else f.exception())  # never "unretrieved"
        self.stop = asyncio.Event()
        self.ended = asyncio.Event()
        self.inflight = 0
        self.retired = False
        self.closed_by_us = False
        self.closing = False  # a close is under way (or done)
        self.stderr = _StderrTail(server.name) if server.config.command is not None else None
        self.task = self.loop.create_task(self._own(), name=f"mcp-session-{server.name}")

    async def _own(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                self.client = await self.server._open(stack, self.stderr)
                if self.stderr is not None:
                    self.stderr.close_writer()
                self.ready.set_result(None)
                await self.stop.wait()
        except asyncio.CancelledError:
            if not self.ready.done():
                self.ready.set_exception(ConnectionAbortedError("closed before it was ready"))
            raise
        except Exception as e:  # the owner reports through `ready`; it never crashes the loop
            error = _unwrap(e)
            if not self.ready.done():
                self.ready.set_exception(error if isinstance(error, Exception) else RuntimeError(str(error)))
            else:
                logger.debug("MCP session with %r ended: %r", self.server.name, error)
        finally:
            self.client = None
            if self.stderr is not None:
                self.stderr.close_writer()
            self.ended.set()

    def usable(self) -> bool:
        """Connected, and the connection has not ended (a server that died while idle is noticed
        here, so the next call restarts it instead of failing)."""
        if self.client is None or self.ended.is_set():
            return False
        dispatcher = getattr(getattr(self.client, "_session", None), "_dispatcher", None)
        return not getattr(dispatcher, "_closed", False)  # SDK internals, read defensively

    async def close(self) -> None:
        """End the session: stop the owner (which stops the process) and wait, killing if it hangs."""
        self.closed_by_us = True
        self.stop.set()
        if not self.ready.done():
            self.task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(self.ended.wait()), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            self.task.cancel()  # the SDK's shutdown is shielded and bounded: it still kills the process
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.ended.wait()), _CLOSE_TIMEOUT_S)


class McpServer:
    """One MCP server and its (lazily started, automatically restarted) session."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.name = config.name
        self.prefix = server_prefix(config.name)
        self.sessions_started = 0  # how often the server was (re)connected
        self.tools: list[McpTool] = []
        self._session: _Session | None = None
        self._retired: set[_Session] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        target = self.config.command or self.config.url
        return f"<MCP server {self.name!r}: {target}>"

    @property
    def connected(self) -> bool:
        s = self._session
        return s is not None and s.usable()

    async def list_tools(self) -> list[McpTool]:
        """Start the server if needed and list its tools (every page). Raises ConfigError."""
        try:
            session = await self._get_session()
        except _StartFailed as e:
            raise ConfigError(str(e)) from None

        async def fetch(client: Any) -> list[Any]:
            tools: list[Any] = []
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    return tools

        try:
            listed = await self._request(session, "tools/list", fetch, self.config.timeout_s, then="")
        except ToolError as e:
            raise ConfigError(str(e)) from None
        self.tools = [McpTool(self, t) for t in listed]
        return list(self.tools)

    async def call(self, tool_name: str, arguments: dict[str, Any], timeout_s: float | None = None) -> McpResult:
        """Call one tool. Raises ToolError when the server cannot be reached, crashes or hangs."""
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        try:
            session = await self._get_session()
        except _StartFailed as e:
            raise ToolError(f"{e}; it will be tried again on the next call") from None
        result = await self._request(session, tool_name, lambda client: client.call_tool(tool_name, arguments),
                                     timeout)
        return _to_result(result)

    async def close(self) -> None:
        """End the session (and any retired ones). The server reconnects if called again."""
        sessions = [s for s in (self._session, *self._retired) if s is not None]
        self._session = None
        self._retired.clear()
        loop = asyncio.get_running_loop()
        here = [s for s in sessions if s.loop is loop]
        for s in sessions:
            if s.loop is not loop and not s.loop.is_closed():  # started under another event loop
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(s.close(), s.loop)
        await asyncio.gather(*(s.close() for s in here), *list(self._closers), return_exceptions=True)

    # -- internals --------------------------------------------------------------------------------

    async def _get_session(self) -> _Session:
        loop = asyncio.get_running_loop()
        s = self._session
        if s is not None and s.loop is loop and s.usable():
            return s
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            s = self._session
            if s is not None and (s.loop is not loop or (s.ready.done() and not s.usable())):
                self._retire(s)
                s = None
            if s is None:
                s = self._session = _Session(self)
                self.sessions_started += 1
            try:
                await asyncio.wait_for(asyncio.shield(s.ready), self.config.startup_timeout_s)
            except TimeoutError:
                self._retire(s)
                raise _StartFailed(self._scrub(
                    f"MCP server {self.name!r} did not start within {self.config.startup_timeout_s:g} s"
                    + _tail_note(s))) from None
            except Exception as e:
                self._retire(s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(s.ended.wait()), 5)
                await asyncio.sleep(0.05)  # let the stderr reader catch the last lines
                raise _StartFailed(self._scrub(
                    f"MCP server {self.name!r} could not start: {_describe(e, self.config)}" + _tail_note(s)
                )) from None
            return s

    async def _open(self, stack: contextlib.AsyncExitStack, stderr: _StderrTail | None) -> Any:
        """Connect (inside the owner task) and return the entered `mcp.Client`."""
        try:
            await asyncio.to_thread(importlib.import_module, "mcp")  # a slow first import, off the event loop
            from mcp import Client, Implementation, StdioServerParameters
            from mcp.client.stdio import stdio_client
            from mcp.client.streamable_http import streamable_http_client
        except ImportError:
            raise ConfigError("MCP servers need the `mcp` package: pip install 'tether[mcp]'") from None
        c = self.config
        transport: Any
        if c.command is not None:
            env = c.expanded_env()
            path = env.get("PATH", os.environ.get("PATH"))
            if os.sep not in c.command and shutil.which(c.command, path=path) is None:
                raise ConfigError(f"command not found: {c.command}")
            params = StdioServerParameters(command=c.command, args=list(c.args), env=env or None, cwd=c.cwd)
            assert stderr is not None
            transport = stdio_client(params, errlog=stderr.file)
        else:
            assert c.url is not None
            from mcp.shared._httpx_utils import create_mcp_http_client

            http = await stack.enter_async_context(create_mcp_http_client(headers=c.expanded_headers() or None))
            transport = streamable_http_client(c.url, http_client=http)
        client = Client(transport, cache=None, client_info=Implementation(name="tether", version=_version()))
        return await stack.enter_async_context(client)

    async def _request(self, session: _Session, what: str, fn: Callable[[Any], Awaitable[Any]], timeout: float,
                       then: str = "; it will be restarted on the next call") -> Any:
        """`fn(client)` within `timeout`; a hang or a lost connection retires the session."""
        session.inflight += 1
        try:
            async with asyncio.timeout(timeout):
                return await fn(session.client)
        except TimeoutError:
            self._retire(session)
            raise ToolError(f"MCP server {self.name!r} did not answer {what} within {timeout:g} s{then}") from None
        except Exception as e:
            if session.closed_by_us:
                raise ToolError(f"the session with MCP server {self.name!r} was closed while {what} "
                                "was running") from None
            if _connection_lost(e) or not session.usable():
                self._retire(session)
                raise ToolError(self._scrub(f"MCP server {self.name!r} crashed: {_describe(e, self.config)}"
                                            f"{then}")) from None
            raise ToolError(self._scrub(f"MCP server {self.name!r} could not run {what}: "
                                        f"{_describe(e, self.config)}")) from None
        finally:
            session.inflight -= 1
            if session.retired and session.inflight == 0:
                self._close_later(session)

    def _retire(self, session: _Session) -> None:
        """Stop using `session`: new calls get a new one; it closes when its last call is done."""
        if self._session is session:
            self._session = None
        if not session.retired:
            session.retired = True
            self._retired.add(session)
        if session.inflight == 0:
            self._close_later(session)

    def _close_later(self, session: _Session) -> None:
        self._retired.discard(session)
        if session.closing:
            return
        session.closing = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if session.loop is not loop:
            return
        task = loop.create_task(session.close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _scrub(self, text: str) -> str:
        for secret in self.config.secrets():
            text = text.replace(secret, "***")
        return text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tether")
    except PackageNotFoundError:
        return "0"


def _tail_note(session: _Session) -> str:
    tail = session.stderr.tail() if session.stderr is not None else ""
    if not tail:
        return ""
    if len(tail) > 1500:
        tail = "…" + tail[-1500:]
    return f"; its last output:\n{tail}"


def _unwrap(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def _connection_lost(e: BaseException) -> bool:
    """Whether `e` means the session is gone (as opposed to one call failing)."""
    import anyio
    import httpx2
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED

    e = _unwrap(e)
    if isinstance(e, MCPError):
        return e.code == CONNECTION_CLOSED
    return isinstance(e, OSError | EOFError | anyio.ClosedResourceError | anyio.BrokenResourceError
                      | anyio.EndOfStream | httpx2.TransportError)


def _describe(e: BaseException, config: McpServerConfig | None = None) -> str:
    e = _unwrap(e)
    if isinstance(e, ConfigError):
        return str(e)
    if isinstance(e, FileNotFoundError) and config is not None:
        return f"command not found: {config.command}" if config.command else str(e)
    if isinstance(e, PermissionError) and config is not None and config.command:
        return f"permission denied running {config.command}"
    if isinstance(e, ConnectionAbortedError):
        return str(e)
    from mcp.shared.exceptions import MCPError

    if isinstance(e, MCPError):
        from mcp_types import CONNECTION_CLOSED

        code = e.code
        if code == CONNECTION_CLOSED:
            if config is not None and config.command:
                return "its process exited or closed the connection"
            return "the connection was closed"
        return f"{e.message} (MCP error {code})"
    name = type(e).__name__
    if name == "ConnectError" and config is not None and config.url:
        return f"cannot connect to {redact_url(config.url, keep_user=False)} ({e})"
    text = str(e)
    return f"{name}: {text}" if text else name


# -- tools --------------------------------------------------------------------------------------


class McpTool:
    """One tool of an MCP server, as a Tether tool (see the module docstring for its name)."""

    kind = "mcp"
    cancellable = True

    def __init__(self, server: McpServer, tool: Any) -> None:
        self.server = server
        self.tool_name: str = tool.name
        self.name = mcp_tool_name(server.name, tool.name)
        text = (tool.description or getattr(tool, "title", None) or "").strip()
        self.description = f"[{server.name}] {text}" if text else f"[{server.name}] {tool.name}"
        schema = dict(tool.input_schema or {})
        schema.setdefault("type", "object")
        if schema["type"] == "object":
            schema.setdefault("properties", {})
        self.parameters: dict[str, Any] = schema
        ann = getattr(tool, "annotations", None)
        self.annotations: dict[str, Any] = ann.model_dump(exclude_none=True) if ann is not None else {}
        idempotent = bool(ann is not None and (ann.read_only_hint or ann.idempotent_hint))
        # The server call has its own timeout (McpServerConfig.timeout_s), so the policy has none.
        self.policy = ToolPolicy(timeout_s=None, idempotent=idempotent)
        self._validator: Any = None

    def __repr__(self) -> str:
        return f"<MCP tool {self.name}>"

    def validate(self, arguments: dict[str, Any]) -> Any:
        validator = self._get_validator()
        if validator is not None:
            errors = sorted(validator.iter_errors(arguments), key=lambda e: [str(p) for p in e.absolute_path])
            if errors:
                problems = []
                for err in errors[:5]:
                    where = ".".join(str(p) for p in err.absolute_path)
                    problems.append(f"'{where}': {err.message}" if where else err.message)
                more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
                raise ToolError(f"invalid arguments for {self.name}: " + "; ".join(problems) + more)
        return dict(arguments)

    async def call(self, validated: Any, ctx: ToolContext) -> Any:
        result = await self.server.call(self.tool_name, dict(validated))
        if result.is_error:
            raise ToolError(result.text or f"{self.name} reported an error")
        return result_text(result)

    def _get_validator(self) -> Any:
        if self._validator is None:
            from jsonschema import SchemaError
            from jsonschema.validators import validator_for

            cls = validator_for(self.parameters)
            try:
                cls.check_schema(self.parameters)
            except SchemaError:
                logger.warning("MCP tool %s has an invalid input schema; its arguments are not checked", self.name)
                self._validator = False
            else:
                self._validator = cls(self.parameters)
        return self._validator or None


# -- opening and closing many -------------------------------------------------------------------


async def open_mcp_tools(configs: Iterable[McpServerConfig]) -> tuple[list[McpTool], list[McpServer]]:
    """Start every server and list its tools, in parallel.

    Raises ConfigError (after closing whatever started) when a server cannot start or list its
    tools, or when two tools would have the same name.
    """
    configs = list(configs)
    _check_prefixes(configs)
    servers = [McpServer(c) for c in configs]
    results = await asyncio.gather(*(s.list_tools() for s in servers), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await close_mcp_servers(servers)
        for r in errors:
            if not isinstance(r, Exception):
                raise r
        messages = [str(r) if isinstance(r, ConfigError) else f"{type(r).__name__}: {r}" for r in errors]
        raise ConfigError("\n".join(messages))
    tools: list[McpTool] = []
    seen: dict[str, McpTool] = {}
    for server_tools in results:
        assert isinstance(server_tools, list)
        for t in server_tools:
            if t.name in seen:
                other = seen[t.name]
                await close_mcp_servers(servers)
                raise ConfigError(f"MCP tools {other.server.name}/{other.tool_name} and {t.server.name}/{t.tool_name} "
                                  f"would both be named {t.name!r}")
            seen[t.name] = t
            tools.append(t)
    return tools, servers


async def close_mcp_servers(servers: Iterable[McpServer]) -> None:
    """Close every server's session (in parallel); they reconnect if called again."""
    await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)


def mcp_tool_changes(recorded: Iterable[Any], tools: Iterable[Any]) -> list[str]:
    """How the MCP tools now listed differ from a run's recorded tool specs, one line per change.

    `recorded` holds `ToolSpec`s (name, schema_hash, kind); `tools` the tools listed now.
    Empty when nothing changed.
    """
    from tether.adapters.tools.function import schema_hash

    before = {s.name: s.schema_hash for s in recorded if getattr(s, "kind", None) == "mcp"}
    now = {t.name: schema_hash(t.name, t.description, t.parameters) for t in tools
           if getattr(t, "kind", None) == "mcp"}
    changes = [f"MCP tool {n} is no longer offered" for n in sorted(before.keys() - now.keys())]
    changes += [f"MCP tool {n} is new" for n in sorted(now.keys() - before.keys())]
    changes += [f"MCP tool {n} changed its description or schema" for n in sorted(before.keys() & now.keys())
                if before[n] != now[n]]
    return changes
