"""The `python` tool: attacks are blocked or bounded with a clear tool error, the host and other runs
are unaffected, normal use works, the Monty backend works within its limits, and without real
isolation the tool refuses to run anything.

The subprocess-backend tests need bubblewrap and user namespaces (`scripts/setup-system.sh`
installs bubblewrap). Where isolation is not available they are skipped with the reason on a
developer machine, and fail under CI (`CI=true`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.adapters.store.memory import MemoryStore
from tether.adapters.tools.builtins import builtin
from tether.adapters.tools.sandbox import (
    FORCE_UNAVAILABLE_ENV,
    PythonTool,
    SandboxLimits,
    SubprocessBackend,
    isolation_available,
    python_tool,
    subprocess_backend,
)
from tether.domain.models import ModelRequest
from tether.domain.tools import ToolContext, ToolError
from tether.services.agents import Agent
from tether.services.runs import RunsService

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
ROOT = os.geteuid() == 0
# Small limits keep the attack suite fast; the defaults are checked separately.
FAST = {"cpu_s": 1, "wall_s": 3, "files_mb": 8, "max_files": 300}
# Time limits a loaded machine cannot trip: every test but those of a time limit uses these, so that
# only the limit a test names can stop its code, however slow the machine.
ROOMY = {**FAST, "cpu_s": 60, "wall_s": 120}


def require_isolation() -> None:
    reason = isolation_available()
    if reason:
        message = (f"the python sandbox is not available here: {reason}. Install bubblewrap "
                   "(scripts/setup-system.sh) and allow user namespaces to run these tests")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(FORCE_UNAVAILABLE_ENV, raising=False)
    return tmp_path / "home"


@pytest.fixture
def py(home: Path) -> PythonTool:
    require_isolation()
    return python_tool(**ROOMY)


@pytest.fixture
def roomy(home: Path) -> PythonTool:
    require_isolation()
    return python_tool(**ROOMY)


@pytest.fixture
def monty(home: Path) -> PythonTool:
    return python_tool("monty", **ROOMY)


async def run(tool: PythonTool, code: str, run_id: str = "run-1", call_id: str = "call-1") -> str:
    return await tool.call(tool.validate({"code": code}), ToolContext(run_id, call_id, 1))


async def fails(tool: PythonTool, code: str, run_id: str = "run-1") -> str:
    with pytest.raises(ToolError) as info:
        await run(tool, code, run_id)
    return str(info.value)


async def assert_host_fine(tool: PythonTool) -> None:
    """The test process can still start processes, and a new sandbox still works."""
    assert subprocess.run(["true"], timeout=10).returncode == 0
    assert await run(tool, "print('still here')", run_id="health-check") == "stdout:\nstill here"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- normal use ------------------------------------------------------------------------------------


async def test_prints_and_the_value_of_the_last_expression(py: PythonTool):
    assert await run(py, "print('hi')\n1 + 2") == "stdout:\nhi\n\nvalue:\n3"
    assert await run(py, "x = 1") == "(the code ran; it printed nothing and its last line has no value)"
    assert await run(py, "import sys\nprint('oops', file=sys.stderr)\nNone") == "stderr:\noops"
    assert await run(py, "[n * n for n in range(4)]") == "value:\n[0, 1, 4, 9]"


async def test_the_standard_library_works(py: PythonTool):
    code = ("import json, math, statistics, sqlite3, subprocess, hashlib\n"
            "db = sqlite3.connect(':memory:')\n"
            "db.execute('create table t (x)'); db.execute('insert into t values (2)')\n"
            "out = subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip()\n"
            "json.dumps([math.sqrt(16), statistics.mean([1, 2, 3]), db.execute('select x from t').fetchone()[0], out])")
    assert await run(py, code) == "value:\n'[4.0, 2, 2, \"child\"]'"


async def test_errors_come_back_as_a_tool_error_with_the_traceback_and_output(py: PythonTool):
    message = await fails(py, "print('before')\n1 / 0")
    assert message.startswith("the code raised an exception:\nTraceback")
    assert 'File "<code>", line 2' in message and "ZeroDivisionError: division by zero" in message
    assert "stdout:\nbefore" in message
    assert "SyntaxError" in await fails(py, "def f(:")
    assert await fails(py, "import sys; sys.exit(3)") == "the code called sys.exit(3)"
    assert await run(py, "import sys; print('bye'); sys.exit(0)") == "stdout:\nbye"
    assert "EOFError" in await fails(py, "input()")  # no standard input


async def test_the_working_folder_persists_across_calls_of_a_run_and_only_that_run(py: PythonTool, home: Path):
    assert await run(py, "import os\nopen('notes.txt', 'w').write('remember me')\nos.getcwd()") == "value:\n'/work'"
    assert await run(py, "open('notes.txt').read()") == "value:\n'remember me'"
    assert (home / "work" / "run-1" / "notes.txt").read_text() == "remember me"
    # a module written in one call is importable in the next
    await run(py, "open('helper.py', 'w').write('def twice(x):\\n    return 2 * x\\n')")
    assert await run(py, "import helper\nhelper.twice(21)") == "value:\n42"
    # variables do not survive: every call is a fresh interpreter
    await run(py, "x = 5", run_id="run-2")
    assert "NameError: name 'x' is not defined" in await fails(py, "x", run_id="run-2")
    # another run has a folder of its own and cannot reach this one
    assert "FileNotFoundError" in await fails(py, "open('notes.txt').read()", run_id="run-2")
    assert "FileNotFoundError" in await fails(py, "open('../run-1/notes.txt').read()", run_id="run-2")
    assert await run(py, "import os\nsorted(os.listdir('.'))", run_id="run-3") == "value:\n[]"


async def test_calls_of_one_run_are_serialised_and_of_different_runs_concurrent(py: PythonTool):
    code = ("import os, time\nopen('log', 'a').write('start ')\ntime.sleep(0.3)\nopen('log', 'a').write('end ')\n"
            "os.getuid()")
    started = time.monotonic()
    same = await asyncio.gather(run(py, code, "same"), run(py, code, "same"))
    assert await run(py, "open('log').read()", "same") == "value:\n'start end start end '"
    assert time.monotonic() - started > 0.6
    a, b = await asyncio.gather(py.run(code, "other-a"), py.run(code, "other-b"))
    assert a.ok and b.ok
    if ROOT:  # one unprivileged user per concurrent sandbox, so one run cannot starve another
        assert a.user and b.user and a.user != b.user
        assert a.user.startswith("tether-sbx-") and a.value != b.value and a.value != "0"
    assert all(r.startswith("value:\n") for r in same)


async def test_the_description_says_what_the_code_may_use(home: Path):
    tool = builtin("python")
    assert isinstance(tool, PythonTool) and tool.name == "python" and tool.backend.name == "subprocess"
    assert tool.limits == SandboxLimits()
    text = tool.description
    for phrase in ("full standard library", "No network", "/work", "working folder", "forked run",
                   "10 s of CPU time", "15 s of wall time", "256 MB of memory", "64 KB of printed output"):
        assert phrase in text, phrase
    assert tool.parameters["required"] == ["code"]
    assert tool.policy.timeout_s is not None and tool.policy.timeout_s > tool.limits.wall_s
    assert not tool.policy.idempotent
    with pytest.raises(ToolError, match="'code' is required"):
        tool.validate({})
    with pytest.raises(ToolError, match="not a parameter"):
        tool.validate({"code": "1", "timeout": 5})


# -- the attack suite ------------------------------------------------------------------------------


async def test_no_network(py: PythonTool):
    with socket.socket() as server:  # a real listener on the host's loopback
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = ("import socket\nresults = []\n"
                f"for target in [('127.0.0.1', {port}), ('1.1.1.1', 80), ('8.8.8.8', 53)]:\n"
                "    try:\n        socket.create_connection(target, timeout=1)\n        results.append('connected')\n"
                "    except OSError as e:\n        results.append(type(e).__name__)\n"
                "try:\n    socket.getaddrinfo('example.com', 80)\n    results.append('resolved')\n"
                "except OSError as e:\n    results.append(type(e).__name__)\nresults")
        out = await run(py, code)
    assert "connected" not in out and "resolved" not in out
    assert "OSError" in out or "ConnectionRefusedError" in out or "gaierror" in out
    message = await fails(py, "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)")
    assert "URLError" in message


async def test_no_host_files_no_repository_no_other_runs(py: PythonTool, home: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    token = secrets.token_hex(16)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    (home / "work" / "someone-else").mkdir(parents=True)
    (home / "work" / "someone-else" / "data.txt").write_text(token)
    monkeypatch.setenv("TETHER_TEST_SECRET", token)  # the host's environment does not leak in either
    attempts = {
        "/etc/passwd": "open('/etc/passwd').read()",
        "/etc/shadow": "open('/etc/shadow').read()",
        "repository": f"open({str(REPO / 'pyproject.toml')!r}).read()",
        "a host file": f"open({str(secret)!r}).read()",
        "another run": "open('/work/../someone-else/data.txt').read()",
        "via /proc": "open('/proc/1/root/etc/passwd').read()",
        "__import__": f"__import__('builtins').open({str(secret)!r}).read()",
        "__subclasses__": ("wrap = [c for c in object.__subclasses__() if c.__name__ == '_wrap_close'][0]\n"
                           f"print(wrap.__init__.__globals__['popen']('cat {secret} 2>&1').read())"),
        "a subprocess": f"import subprocess\nsubprocess.run(['cat', {str(secret)!r}], check=True)",
        "the home folder": "import os\nos.listdir(os.path.expanduser('~root'))",
    }
    for what, code in attempts.items():
        result = await py.run(code, "run-1")
        text = result.render()
        assert token not in text, what
        assert "No such file" in text, (what, text)
    listing = await run(py, "import os\nsorted(os.listdir('/'))")
    assert listing == "value:\n['bin', 'dev', 'lib', 'lib64', 'proc', 'sbin', 'tmp', 'usr', 'work']" or (
        "'etc'" not in listing and "'root'" not in listing and "'home'" not in listing)
    assert token not in await run(py, "import os\ndict(os.environ)")
    assert token not in await run(py, "import os\nprint(os.popen('env; ls -la /').read())")


async def test_nothing_is_written_outside_the_working_folder(py: PythonTool, home: Path):
    marker = f"escape-{secrets.token_hex(4)}"
    for code in (f"open('/usr/{marker}', 'w')", f"open('/{marker}', 'w')", f"open('/proc/{marker}', 'w')",
                 f"import os\nos.symlink('/usr', 'link')\nopen('link/{marker}', 'w')"):
        message = await fails(py, code)
        assert "Read-only file system" in message or "Permission denied" in message or "No such file" in message
    # /tmp and '..' are inside the sandbox: writable, and gone after the call
    assert await run(py, f"open('/tmp/{marker}', 'w').write('x')") == "value:\n1"
    assert "FileNotFoundError" in await fails(py, f"open('/tmp/{marker}').read()")
    assert not Path(f"/tmp/{marker}").exists() and not Path(f"/usr/{marker}").exists()
    assert not Path(f"/{marker}").exists() and not (home / "work" / marker).exists()
    # the symlink made in the folder points into the sandbox's /usr, read-only from the host's view too
    assert (home / "work" / "run-1" / "link").is_symlink()


async def test_a_fork_bomb_is_stopped_and_does_not_starve_other_runs(py: PythonTool):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    quiet = "import time\ntime.sleep(0.5)\nsum(range(10))"
    results = await asyncio.gather(fails(py, bomb, "bomb"), run(py, quiet, "neighbour"), return_exceptions=True)
    assert isinstance(results[0], str) and "too many processes or threads (limit 32)" in results[0], results[0]
    assert results[1] == "value:\n45"  # the other run ran at the same time, unaffected
    await assert_host_fine(py)


async def test_threads_count_towards_the_process_limit(py: PythonTool):
    message = await fails(py, "import threading, time\nfor _ in range(100):\n"
                              "    threading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()")
    assert "limit 32" in message


async def test_a_memory_bomb_is_stopped_and_the_host_is_unaffected(roomy: PythonTool):
    py = roomy
    before = rss_mb()
    message = await fails(py, "x = bytearray(10 ** 10)")
    assert message.startswith("the code ran out of memory (limit 256 MB)") and "MemoryError" in message
    message = await fails(py, "x = []\nwhile True:\n    x.append(bytearray(10 ** 6))")
    assert message.startswith("the code ran out of memory (limit 256 MB)")
    # many processes, each under its own limit, together over it: the parent's watch stops them
    message = await fails(py, "import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n"
                              "        x = bytearray(200 * 2 ** 20)\n        time.sleep(5)\n        os._exit(0)\n"
                              "time.sleep(5)")
    assert message.startswith("the code ran out of memory (limit 256 MB for all its processes together)")
    assert rss_mb() - before < 50
    await assert_host_fine(py)


async def test_an_infinite_loop_hits_the_cpu_limit(home: Path):
    require_isolation()
    py = python_tool(**{**ROOMY, "cpu_s": 1})  # the loop spins: only the CPU limit can stop it
    assert await fails(py, "while True:\n    pass") == \
        "the code used more than 1 s of CPU time (the limit) and was stopped"


async def test_sleeping_forever_hits_the_wall_time_limit(home: Path):
    require_isolation()
    py = python_tool(**{**ROOMY, "wall_s": 5})  # the code sleeps: only the wall time limit can stop it
    message = await fails(py, "import time\nprint('going to sleep')\ntime.sleep(3600)")
    assert message == "the code was killed after 5 s of wall time (the limit)\n\nstdout:\ngoing to sleep"


async def test_deep_recursion_is_bounded(py: PythonTool):
    message = await fails(py, "def f(n):\n    return f(n + 1)\nf(0)")
    assert "RecursionError: maximum recursion depth exceeded" in message
    # without Python's own bound, whichever limit comes first stops it (CPU time counts CPU, not load)
    bounded = python_tool(**{**ROOMY, "cpu_s": 2})
    message = await fails(bounded, "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1)\nf(0)")
    assert any(s in message for s in ("CPU time", "out of memory", "crashed", "MemoryError", "RecursionError",
                                      "SystemError")), message
    await assert_host_fine(py)


async def test_gigantic_output_is_cut_and_stops_the_code(py: PythonTool):
    for code in ("while True:\n    print('x' * 1000)", "import os\nos.system('yes')",
                 "import sys\nwhile True:\n    sys.stderr.write('e' * 10000)"):
        message = await fails(py, code)  # stopped by the output limit (the time limits are far away)
        assert message.startswith("output truncated at 64 KB: the code printed more than that")
        assert len(message) < 64 * 1024 + 1000
    value = await run(py, "'x' * 10 ** 6")
    assert value.endswith(f"... ({10 ** 6 + 2 - 64 * 1024} more characters)") and len(value) < 70_000


async def test_files_are_bounded(py: PythonTool, home: Path):
    message = await fails(py, "open('big.bin', 'wb').write(b'x' * (9 * 2 ** 20))")
    assert message.startswith("a file grew past the file size limit (8 MB)")
    message = await fails(py, "for i in range(400):\n    open(f'f{i}', 'w').close()")
    if ROOT:  # the kernel refuses the 301st file
        assert message.startswith("the working folder is full: /work, /tmp and /dev/shm hold at most 8 MB"), message
    else:
        assert "the working folder grew past 8 MB or 300 files" in message
    # the folder can be cleaned up again, though it is over the limit now
    assert await run(py, "import os\nfor f in os.listdir('.'):\n    os.remove(f)\nlen(os.listdir('.'))") == \
        "value:\n0"


def on_disk(folder: Path) -> tuple[int, int]:
    """(bytes on disk, entries) below folder, as the host sees them."""
    total = entries = 0
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            entries += 1
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total, entries


needs_root = pytest.mark.skipif(not ROOT, reason="the kernel bounds /work only as root (a tmpfs needs root)")
FILL = {  # each fills /work until the kernel says no
    "fallocate": "import os\nn = 0\nwhile True:\n    fd = os.open(f'f{n}', os.O_CREAT | os.O_WRONLY)\n"
                 "    os.posix_fallocate(fd, 0, 8 * 1024 * 1024 - 1)\n    os.close(fd)\n    n += 1",
    "writes": "n = 0\nwhile True:\n    open(f'w{n}', 'wb').write(b'x' * 2 ** 20)\n    n += 1",
    "small files": "n = 0\nwhile True:\n    open(f's{n}', 'w').write('x')\n    n += 1",
    "sparse": "n = 0\nwhile True:\n    with open(f'h{n}', 'wb') as f:\n        for i in range(0, 8 * 2 ** 20, 65536):\n"
              "            f.seek(i)\n            f.write(b'x')\n    n += 1",
}


@needs_root
@pytest.mark.parametrize("code", FILL.values(), ids=FILL.keys())
async def test_the_working_folder_is_bounded_by_the_kernel(roomy: PythonTool, home: Path, code: str):
    message = await fails(roomy, code)
    assert message.startswith("the working folder is full: /work, /tmp and /dev/shm hold at most 8 MB (files_mb) "
                              "and 300 files (max_files) together"), message
    size, entries = on_disk(home / "work" / "run-1")
    assert size <= 8 * 2 ** 20 and entries <= 300, (size, entries)
    total, _ = on_disk(home / "work")  # nothing else grew on the host: only the folder and its lock file
    assert total <= 8 * 2 ** 20 + 64 * 1024 and sorted(os.listdir(home / "work")) == [".run-1.lock", "run-1"], total
    # what was written before the limit tripped is kept (the folder is copied out after every call),
    # and can be deleted again
    assert await run(roomy, "import os\nn = len(os.listdir('.'))\nfor f in os.listdir('.'):\n    os.remove(f)\n"
                            "n > 0") == "value:\nTrue"
    assert on_disk(home / "work" / "run-1") == (0, 0)


@needs_root
async def test_the_working_folder_is_copied_in_and_out_whole(roomy: PythonTool, home: Path, tmp_path: Path):
    folder = home / "work" / "run-1"
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("host secret")
    folder.mkdir(parents=True)
    (folder / "host-link").symlink_to(secret)  # a link out of the folder, put there on the host
    message = await fails(roomy, "import os\nos.makedirs('d/e')\nopen('d/e/f.txt', 'w').write('deep')\n"
                                 "os.symlink('d/e/f.txt', 'rel')\nos.symlink('/etc/passwd', 'abs')\n"
                                 "open('x.sh', 'w').write('#!/bin/sh')\nos.chmod('x.sh', 0o750)\n"
                                 "os.link('x.sh', 'hard')\n"
                                 "open('before.txt', 'w').write('kept')\nopen('big', 'wb').write(b'x' * 6 * 2 ** 20)\n"
                                 "open('more', 'wb').write(b'x' * 6 * 2 ** 20)")  # this one trips the limit
    assert message.startswith("the working folder is full"), message
    # the host sees the files, symlinks as symlinks, hard links as one file; the sandbox user owns none
    assert (folder / "d" / "e" / "f.txt").read_text() == "deep" and (folder / "before.txt").read_text() == "kept"
    assert os.readlink(folder / "rel") == "d/e/f.txt" and os.readlink(folder / "abs") == "/etc/passwd"
    assert os.readlink(folder / "host-link") == str(secret)
    assert os.stat(folder / "x.sh").st_ino == os.stat(folder / "hard").st_ino
    assert {os.lstat(os.path.join(r, n)).st_uid for r, ds, fs in os.walk(folder) for n in (*ds, *fs)} == {0}
    # the next call sees it all as it was; the link out of the folder is not followed
    code = ("import os\n(open('rel').read(), os.readlink('abs'), os.stat('x.sh').st_mode & 0o777,\n"
            " os.stat('x.sh').st_ino == os.stat('hard').st_ino, os.path.islink('host-link'),\n"
            " os.path.exists('host-link/key'), open('before.txt').read(), os.path.getsize('big'))")
    expected = ('deep', '/etc/passwd', 0o750, True, True, False, 'kept', 6 * 2 ** 20)
    assert await run(roomy, code) == f"value:\n{expected!r}"


@needs_root
@pytest.mark.parametrize("where", ["copying", "swapping"])
async def test_a_copy_out_killed_midway_loses_nothing(roomy: PythonTool, home: Path, monkeypatch: pytest.MonkeyPatch,
                                                       where: str):
    folder = home / "work" / "run-1"
    await run(roomy, "for i in range(20):\n    open(f'old{i}', 'w').write(str(i))")
    old = {f"old{i}" for i in range(20)}
    copied: list[str] = []
    real_copy, real_rename = subprocess_backend._copy_file, os.rename

    def copy_dying(name: str, dir_fd: int, dst: str) -> None:  # like a kill -9 of the server halfway through
        if ".new-" in dst:  # copying out (not in)
            copied.append(name)
            if len(copied) > 5:
                raise OSError(errno.EIO, "killed halfway (simulated)")
        real_copy(name, dir_fd, dst)

    def rename_dying(src: object, dst: object, *args: object, **kw: object) -> None:  # between the two renames
        if ".new-" in str(src):
            raise OSError(errno.EIO, "killed halfway (simulated)")
        real_rename(src, dst, *args, **kw)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        if where == "copying":
            patch.setattr(subprocess_backend, "_copy_file", copy_dying)
        else:
            patch.setattr(os, "rename", rename_dying)
        message = await fails(roomy, "import os\nfor f in os.listdir('.'):\n    os.remove(f)\n"
                                     "for i in range(20):\n    open(f'new{i}', 'w').write('new')")
    assert "killed halfway (simulated)" in message
    leftovers = [name for name in os.listdir(home / "work") if ".new-" in name or ".old-" in name]
    assert leftovers  # what a killed copy-out leaves
    assert await run(roomy, "import os\nsorted(os.listdir('.'))") == f"value:\n{sorted(old)!r}"
    assert set(os.listdir(folder)) == old and (folder / "old7").read_text() == "7"
    assert sorted(os.listdir(home / "work")) == [".run-1.lock", "run-1"]  # the leftovers are gone


@needs_root
async def test_no_tmpfs_stays_mounted_on_the_host_and_a_stale_one_is_unmounted(home: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    require_isolation()
    state = Path(f"/run/tether-sandbox-test-{secrets.token_hex(4)}")  # leases of its own, traversable
    monkeypatch.setenv(subprocess_backend.STATE_DIR_ENV, str(state))
    monkeypatch.setenv(subprocess_backend.POOL_SIZE_ENV, "1")
    try:
        stale = state / "calls" / "0"
        stale.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stale", str(stale)], check=True)  # a killed server's
        assert os.path.ismount(stale)
        tool = python_tool(**ROOMY)
        assert await run(tool, "open('a', 'w').write('x')") == "value:\n1"
        assert not os.path.ismount(stale)
        assert str(state) not in Path("/proc/self/mountinfo").read_text()
    finally:
        for _ in range(3):
            subprocess.run(["umount", "--lazy", str(state / "calls" / "0")], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


async def test_background_processes_die_with_the_call(py: PythonTool, home: Path):
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        while True:\n            open('/work/alive', 'a').write('.')\n            time.sleep(0.05)\n"
            "    os._exit(0)\ntime.sleep(0.3)\nprint('main done')")
    assert await run(py, code) == "stdout:\nmain done"
    alive = home / "work" / "run-1" / "alive"
    size = alive.stat().st_size
    await asyncio.sleep(0.4)
    assert alive.stat().st_size == size


async def test_the_sandbox_cannot_signal_the_host_or_nest_namespaces(py: PythonTool):
    out = await run(py, "import os, signal\nos.kill(1, signal.SIGKILL)\n"
                        "print(os.getppid(), sorted(p for p in os.listdir('/proc') if p.isdigit())[:3])")
    assert out.startswith("stdout:\n1 ['1', '2'")  # its own pid namespace: pid 1 is the sandbox's init
    message = await run(py, "import subprocess\nsubprocess.run(['unshare', '--user', 'true']).returncode")
    assert message.endswith("value:\n1")
    await assert_host_fine(py)


async def test_a_cancelled_call_kills_its_sandbox(py: PythonTool, home: Path):
    task = asyncio.ensure_future(run(py, "import time\nwhile True:\n    open('/work/tick', 'a').write('.')\n"
                                          "    time.sleep(0.05)", run_id="cancelled"))
    tick = home / "work" / "cancelled" / "tick"
    for _ in range(100):  # as root the folder is copied out only once the call ended: then 1 s
        if tick.exists() or (ROOT and _ == 20):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    size = tick.stat().st_size
    await asyncio.sleep(0.3)
    assert tick.stat().st_size == size


# Lists every mount of the sandbox: (mount point, writable?, file system type, super options).
MOUNTS = ("mounts = []\nfor line in open('/proc/self/mountinfo'):\n    left, right = line.split(' - ')\n"
          "    f = left.split()\n    fstype, _source, opts = right.split()\n"
          "    mounts.append((f[4], 'rw' in f[5].split(','), fstype, opts))\nmounts")


async def test_every_writable_place_in_the_sandbox_is_bounded(roomy: PythonTool):
    mounts = eval((await run(roomy, MOUNTS)).removeprefix("value:\n"))
    devices = {f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom", "tty")}
    writable = {point: (fstype, opts) for point, rw, fstype, opts in mounts
                if rw and point not in devices and fstype != "proc"}  # /proc/sys and friends are read-only
    assert sorted(writable) == ["/dev/shm", "/tmp", "/work"], writable
    for place in ("/tmp", "/dev/shm", *(["/work"] if ROOT else [])):  # in host memory: sized
        fstype, opts = writable[place]
        assert fstype == "tmpfs" and "size=8192k" in opts.split(","), (place, opts)
    # /dev itself, the root and the rest are read-only; no devpts, no mqueue
    for code in ("open('/dev/big', 'wb')", "import os\nos.mkdir('/dev/pts/x')", "open('/big', 'wb')",
                 "open('/dev/mqueue/q', 'wb')"):
        message = await fails(roomy, code)
        assert "Read-only file system" in message or "No such file" in message, (code, message)


async def test_tmp_and_dev_shm_are_bounded_by_files_mb_and_max_files(roomy: PythonTool):
    for place in ("/dev/shm", "/tmp"):
        message = await fails(roomy, f"for i in range(4):\n    open('{place}/f%d' % i, 'wb').write(b'x' * 3 * 2 ** 20)")
        if ROOT:  # one tmpfs holds /work, /tmp and /dev/shm
            assert message.startswith("the working folder is full: /work, /tmp and /dev/shm hold at most"), message
        else:
            assert message.startswith("the sandbox's ") and place in message.split(" full")[0], message
        assert "8 MB (files_mb)" in message and "Errno 28" in message, message
    # the write stopped at the bound: no more than 8 MB of host memory
    stored = await run(roomy, "import os\nwritten = 0\ntry:\n    with open('/dev/shm/big', 'wb') as f:\n"
                              "        for _ in range(64):\n            f.write(b'x' * 2 ** 20)\n"
                              "            f.flush()\n            written += 1\nexcept OSError:\n    pass\n"
                              "st = os.statvfs('/dev/shm')\n(written, st.f_blocks * st.f_frsize)")
    written, size = eval(stored.removeprefix("value:\n"))
    assert written <= 8 and size <= 8 * 2 ** 20, stored
    # /tmp and /dev/shm together, and the number of files, count against the same limits
    together = ("import time\nopen('/tmp/a', 'wb').write(b'x' * 5 * 2 ** 20)\n"
                "open('/dev/shm/b', 'wb').write(b'x' * 5 * 2 ** 20)\ntime.sleep(2)")
    many = "import time\nfor i in range(400):\n    open(f'/tmp/f{i}', 'w').close()\ntime.sleep(2)"
    for code, bound in ((together, "8 MB"), (many, "300 files")):
        message = await fails(roomy, code)
        assert bound in message and ("full" in message or "grew past" in message), message
    await assert_host_fine(roomy)


async def test_kernel_ipc_objects_cannot_hold_memory(roomy: PythonTool):
    # SysV shared memory, semaphores and message queues, memfd files and POSIX message queues live
    # in kernel memory outside every watch: they are refused
    code = ("import ctypes, errno, os\nlibc = ctypes.CDLL(None, use_errno=True)\nout = {}\n"
            "for name, call in [('shmget', lambda: libc.shmget(0, 2 ** 20, 0o1600)),\n"
            "                   ('semget', lambda: libc.semget(0, 10, 0o1600)),\n"
            "                   ('msgget', lambda: libc.msgget(0, 0o1600)),\n"
            "                   ('mq_open', lambda: libc.mq_open(b'/q', os.O_CREAT | os.O_RDWR, 0o600, None))]:\n"
            "    ctypes.set_errno(0)\n    out[name] = (call(), errno.errorcode.get(ctypes.get_errno()))\n"
            "try:\n    os.memfd_create('x')\n    out['memfd'] = 'made'\n"
            "except OSError as e:\n    out['memfd'] = errno.errorcode[e.errno]\nout")
    out = eval((await run(roomy, code)).removeprefix("value:\n"))
    assert out == {"shmget": (-1, "EPERM"), "semget": (-1, "EPERM"), "msgget": (-1, "EPERM"),
                   "mq_open": (-1, "EMFILE"), "memfd": "EPERM"}, out


async def test_multiprocessing_and_shared_memory_still_work(roomy: PythonTool):
    code = ("import multiprocessing as mp\nfrom multiprocessing import shared_memory\n"
            "shm = shared_memory.SharedMemory(create=True, size=1024)\nshm.buf[0] = 7\nshm.close()\nshm.unlink()\n"
            "lock = mp.Lock()\nwith lock:\n    pass\n"
            "if __name__ == '__main__':\n    with mp.get_context('fork').Pool(2) as pool:\n"
            "        squares = pool.map(abs, [-1, -2, -3])\nsquares")
    assert await run(roomy, code) == "value:\n[1, 2, 3]"


async def test_the_sandbox_does_not_show_host_paths(roomy: PythonTool, home: Path):
    code = ("import os\ntexts = []\nfor pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    for what in ('cmdline', 'environ'):\n        try:\n"
            "            texts.append(open(f'/proc/{pid}/{what}', 'rb').read().decode(errors='replace'))\n"
            "        except OSError:\n            pass\n"
            "texts.append(open('/proc/self/mountinfo').read())\nprint('\\n'.join(texts))")
    seen = await run(roomy, code)
    # Not root, the /work mount's own line names the folder's path within its host file system (the
    # kernel prints a bind mount's root so): everything else must not. As root /work is a tmpfs.
    work_line = [line for line in seen.splitlines() if " /work " in line]
    assert len(work_line) == 1
    rest = seen if ROOT else seen.replace(work_line[0], "")
    if ROOT:
        assert str(home / "work") not in seen and "/run-1 " not in work_line[0], work_line
    hidden = [str(home), str(home.parent), str(REPO), os.getcwd(), "/run/tether-sandbox", sys.prefix]
    assert not [path for path in hidden if path in rest], [path for path in hidden if path in rest]
    assert "bwrap\0--args" in seen  # pid 1 (a copy of bwrap) read its options from a pipe


# -- isolation unavailable ----------------------------------------------------------------------------


async def test_without_isolation_the_tool_refuses_and_runs_nothing(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(FORCE_UNAVAILABLE_ENV, "1")
    assert isolation_available() == f"isolation is switched off by {FORCE_UNAVAILABLE_ENV}=1"
    for tool in (python_tool(), python_tool("monty")):
        message = await fails(tool, "open('ran.txt', 'w').write('ran')")
        assert message.startswith("the python tool cannot run code here: isolation is switched off by")
        assert "never runs without a sandbox" in message
        assert not (home / "work" / "run-1" / "ran.txt").exists()


async def test_an_interpreter_the_sandbox_cannot_use_means_a_refusal(home: Path):
    missing = PythonTool(SubprocessBackend(interpreter="/nonexistent/python3"))
    assert missing.backend.unavailable() is not None
    message = await fails(missing, "print(1)")
    assert "there is no Python interpreter at /nonexistent/python3" in message
    if ROOT and not os.path.realpath(sys.executable).startswith("/usr/"):
        require_isolation()  # bubblewrap works; only the interpreter is out of the sandbox user's reach
        private = PythonTool(SubprocessBackend(interpreter=sys.executable))  # e.g. under /root/.pyenv
        message = await fails(private, "print(1)")
        assert message.startswith("the python tool cannot run code here:") and "the code was not run" in message.lower()


# -- the Monty backend -----------------------------------------------------------------------------------


async def test_monty_basics_and_its_working_folder(monty: PythonTool, home: Path):
    assert monty.backend.name == "monty" and "subset of Python" in monty.description
    assert await run(monty, "print('hi')\n1 + 2") == "stdout:\nhi\n\nvalue:\n3"
    assert await run(monty, "import json, math\njson.dumps({'r': math.sqrt(16)})") == "value:\n'{\"r\": 4.0}'"
    assert await run(monty, "open('notes.txt', 'w').write('kept')") == "value:\n4"
    assert await run(monty, "open('notes.txt').read()") == "value:\n'kept'"
    assert (home / "work" / "run-1" / "notes.txt").read_text() == "kept"
    assert "FileNotFoundError" in await fails(monty, "open('notes.txt').read()", run_id="run-2")
    await run(monty, "x = 1", run_id="run-3")
    assert "NameError" in await fails(monty, "x", run_id="run-3")
    assert "ZeroDivisionError" in await fails(monty, "1 / 0")


async def test_monty_blocks_and_bounds(monty: PythonTool):
    assert "PermissionError" in await fails(monty, "open('/etc/passwd').read()")
    assert "ModuleNotFoundError" in await fails(monty, "import socket")
    assert "ModuleNotFoundError" in await fails(monty, "import subprocess")
    assert "NameError" in await fails(monty, "__import__('os')")
    assert "AttributeError" in await fails(monty, "().__class__.__subclasses__()")
    assert (await fails(monty, "x = 'a' * 10 ** 9")).startswith("the code ran out of memory (limit 256 MB)")
    spinning = python_tool("monty", **{**ROOMY, "cpu_s": 1})
    assert (await fails(spinning, "while True:\n    pass")).startswith(
        "the code ran past the 1 s execution time limit and was stopped")
    message = await fails(monty, "for _ in range(1000):\n    print('x' * 1000)")
    assert message.startswith("output truncated at 64 KB") and len(message) < 70_000
    assert "RecursionError" in await fails(monty, "def f(n):\n    return f(n + 1)\nf(0)")
    assert (await fails(monty, "open('big', 'w').write('x' * (9 * 2 ** 20))")).startswith(
        "the code wrote more than 8 MB to files")


# -- end to end ----------------------------------------------------------------------------------------------


async def test_an_agent_runs_python_and_answers_with_the_result(home: Path):
    require_isolation()

    def script(request: ModelRequest):
        results = [m.text for m in request.messages if m.role == "tool"]
        if not results:
            return call_tool("python", {"code": "import math\nprint('computing')\nmath.factorial(10)"})
        return reply(f"The tool said: {results[-1]}")

    agent = Agent("coder", ScriptedModel(script), tools=["python"])
    result = await RunsService(MemoryStore()).start(agent, "What is 10 factorial?")
    assert result.status == "completed"
    assert result.output == "The tool said: stdout:\ncomputing\n\nvalue:\n3628800"
    assert [s.type for s in result.steps] == ["model", "tool", "model"]
