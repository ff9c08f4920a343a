"""Run `tether serve` as a subprocess for black-box tests (stdlib only).

This module is imported from environments that have only `openai` and `pytest` installed (the SDK
version matrix), so it must not import tether or any third-party package. The server itself runs
under the interpreter named by the environment variable TETHER_PYTHON (default: this interpreter),
which must have tether installed.

    with TetherServer(model_base_url=fake.base_url, api_keys=["key-a", "key-b"]) as server:
        client = openai.OpenAI(api_key="key-a", base_url=server.base_url)
        ...
        server.stderr_text()   # what the server printed so far (for failure messages)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerFailedToStart(RuntimeError):
    pass


class TetherServer:
    """`python -m tether.interfaces.cli.app serve` on a free loopback port, with its own TETHER_HOME."""

    def __init__(self, *, model_base_url: str, api_keys: Iterable[str] = (), database_url: str | None = None,
                 home: str | os.PathLike[str] | None = None, port: int | None = None,
                 python: str | None = None, extra_args: Iterable[str] = (),
                 extra_env: Mapping[str, str] | None = None, startup_timeout_s: float = 60.0) -> None:
        self._own_home = home is None
        self.home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="tether-sdk-"))
        self.database_url = database_url or f"sqlite:///{self.home / 't.db'}"
        self.model_base_url = model_base_url
        self.api_keys = list(api_keys)
        self.port = port or free_port()
        self.python = python or os.environ.get("TETHER_PYTHON") or sys.executable
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr = bytearray()
        self._stdout = bytearray()
        self._readers: list[threading.Thread] = []

    # -- addresses --

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    # -- output --

    def stderr_text(self) -> str:
        return self._stderr.decode(errors="replace")

    def stdout_text(self) -> str:
        return self._stdout.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_text()

    def output_tail(self, chars: int = 4000) -> str:
        """The end of what the server printed (stderr, then stdout), for assertion messages."""
        out = self.stderr_text()[-chars:]
        so = self.stdout_text()[-chars // 4:]
        return f"--- server stderr (tail) ---\n{out}" + (f"\n--- server stdout (tail) ---\n{so}" if so else "")

    # -- lifecycle --

    def command(self) -> list[str]:
        return [self.python, "-m", "tether.interfaces.cli.app", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("TETHER_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "TETHER_API_KEYS",
                            "COLUMNS", "FORCE_COLOR")}
        env.update({
            "TETHER_DATABASE_URL": self.database_url,
            "TETHER_HOME": str(self.home),
            "OPENAI_BASE_URL": self.model_base_url,
            "OPENAI_API_KEY": "fake",
            "TETHER_API_KEYS": ",".join(self.api_keys),
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def _pump(self, stream: Any, sink: bytearray) -> None:
        try:
            for chunk in iter(lambda: stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536), b""):
                sink.extend(chunk)
        except (OSError, ValueError):
            pass

    def start(self) -> TetherServer:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.proc = subprocess.Popen(self.command(), env=self.environment(), cwd=str(self.home),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for stream, sink in ((self.proc.stdout, self._stdout), (self.proc.stderr, self._stderr)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True, name="tether-serve-output")
            t.start()
            self._readers.append(t)
        try:
            self.wait_ready(self.startup_timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Until `GET /v1/assistants` gets any HTTP answer (401 included)."""
        deadline = time.monotonic() + timeout_s
        url = f"{self.base_url}/assistants"
        key = self.api_keys[0] if self.api_keys else "none"
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                self._join_readers()
                raise ServerFailedToStart(f"`{' '.join(self.command())}` exited with {code} before answering\n"
                                          + self.output_tail())
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}",
                                                       "OpenAI-Beta": "assistants=v2"})
            try:
                with urllib.request.urlopen(req, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # any status means it is listening and answering
            except (OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ServerFailedToStart(f"`{' '.join(self.command())}` did not answer {url} within "
                                          f"{timeout_s:.0f}s\n" + self.output_tail())
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _join_readers(self) -> None:
        for t in self._readers:
            t.join(timeout=2)

    def kill(self) -> int | None:
        """SIGKILL, and wait for it to be gone."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        code = self.proc.wait(timeout=30)
        self._join_readers()
        return code

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait for the exit (SIGKILL if it takes longer than `timeout_s`). Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._join_readers()
        return self.proc.returncode

    def close(self) -> None:
        try:
            self.terminate(timeout_s=10)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr) if self.proc else ():
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if self._own_home:
                shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> TetherServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
