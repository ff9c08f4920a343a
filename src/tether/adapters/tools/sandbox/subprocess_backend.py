"""Full CPython in a subprocess, inside bubblewrap namespaces, as an unprivileged user, with OS limits.

One call, one fresh process tree:

    (root only, in the parent) mount -t tmpfs -o size=files_mb,nr_inodes=max_files+4 STATE/calls/<lease>
      with work/ (the run's folder copied in), tmp/ and shm/
    (root only) unshare --mount            a private mount namespace that dies with the call
      sh -c 'mount --bind STATE/calls/<lease> STATE/scratch; exec setpriv --reuid U --regid G ...'
        bwrap --args FD -- ...             options from a pipe: --unshare-all --unshare-user
              --disable-userns --die-with-parent --new-session --seccomp FD --ro-bind /usr --proc
              a read-only /dev (null, zero, full, random, urandom, tty), /tmp, /dev/shm and /work
              (as root: the call's tmpfs; otherwise two sized tmpfs and a bind of the run's folder) ...
          python3 -I -u -B -c RUNNER        sets rlimits, reads the code from stdin, runs it
    (root only, in the parent, however the call ended) copy work/ out to the run's folder; unmount

- **Isolation.** New user, pid, network, ipc, uts, cgroup and mount namespaces: no network (only
  a loopback that is down), no other processes, no host files but a read-only /usr (+ the /lib
  links), a read-only /dev with six device nodes, an empty /tmp and /dev/shm, and the run's
  working folder at /work. No /etc, no home, no repository. `--disable-userns` stops the code from
  making nested user namespaces.
- **Every writable place is bounded.** As root, by the kernel: /work, /tmp and /dev/shm are one
  tmpfs (host memory) of size=files_mb and nr_inodes=max_files, so a write past it (fallocate
  too) fails with ENOSPC, reported as "the working folder is full". Not root (best effort): /work
  is the run's folder, bound in, bounded by RLIMIT_FSIZE per file and the parent's watch (every
  0.5 s), with fallocate refused (EOPNOTSUPP: glibc's posix_fallocate then writes zeros, which the
  limits count); /tmp and /dev/shm are a bwrap tmpfs of files_mb each; the watch counts all three
  against files_mb and max_files. /dev is read-only (bwrap's --dev
  would be an unbounded tmpfs and a devpts), as are / and /proc/sys. Kernel objects that hold
  memory outside every watch are refused: SysV shared memory, semaphores and message queues (the
  sandbox's IPC namespace would allow ~2**64 bytes) and memfd files by a small seccomp filter
  (x86_64 and aarch64), POSIX message queues by RLIMIT_MSGQUEUE=0.
- **The working folder, as root.** The run's folder on the host (`$TETHER_HOME/work/<run>`, or
  `work_root/<run>`) is never seen by the sandbox: under the run's lock (`.<run>.lock` next to it,
  so a run's calls are serialised) the parent copies it into the call's tmpfs, owned by the call's
  user, then after the call (stopped by a limit, killed or cancelled too: what the code wrote
  before is kept) copies the tmpfs back to `.<run>.new-<nonce>` and swaps it in with two renames
  (the folder to `.<run>.old-<nonce>`, the copy to the folder). A server killed at any instant
  leaves the old or the new contents: the next call of the run first puts a moved-aside folder
  back and deletes partial copies. Copies keep symlinks as links (never followed, their targets
  verbatim), hard links and holes (so the host folder takes no more room than the tmpfs did),
  modes without set-id bits and times; fifos and sockets are dropped; every host file is root's.
  A folder larger than the limits (the operator lowered them) is not loaded: the call fails with
  a tool error. The tmpfs is mounted on the host under STATE/calls (0700), one per lease, and
  unmounted when the call ends; one a killed server left is unmounted by the next call that leases
  that user. A fork is another run: it starts with an empty folder.
- **Host paths.** bwrap reads its options from a pipe, so the sandbox's pid 1 (a copy of bwrap)
  does not show them; it starts in / with a minimal environment. What cannot be hidden cheaply:
  not root, /proc/self/mountinfo shows the working folder's path within its host file system (the
  root of a bind mount); the interpreter's install prefix when it is not under /usr.
- **Why a user of its own, as root.** The kernel ignores RLIMIT_NPROC for root, even inside a
  user namespace, so a fork bomb run as root is not stopped. As root each call runs as a system
  user from a small pool (`tether-sbx-0`, `tether-sbx-1`, ... created with `useradd --system` on
  first use), leased with a lock file under `/run/tether-sandbox/leases`, one per concurrent call,
  so one run's fork bomb only exhausts its own user's process count. Not root: the sandbox runs as
  the current user, and RLIMIT_NPROC (counted per user namespace on Linux >= 5.14) applies.
- **Why the bind through /run/tether-sandbox/scratch.** bubblewrap resolves bind sources with the
  caller's rights, and the call's tmpfs lies in STATE/calls, which only root may enter. Root binds
  it onto that traversable mount point inside the call's private mount namespace, which
  disappears with the call.
- **Limits.** In the child (the runner, before the code): RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC,
  RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0, RLIMIT_MSGQUEUE=0. In the parent: wall time (kills the process group;
  `--die-with-parent` and the pid namespace take every sandbox process with it), output size
  (stops the code once stdout+stderr pass the limit), and a 10 Hz watch over the sandbox's pid
  namespace for the resident memory of all its processes together, the number of processes and
  threads, and (not root) the growth of the working folder, /tmp and /dev/shm.
- **The result.** The runner writes a one-line JSON envelope (value of the last expression, the
  exception) to a pipe of its own, not to stdout, so nothing the code prints can pass for the
  value. Code that deliberately writes to that pipe only misreports its own result; every limit
  and exit status comes from what the parent observed, never from the envelope.

Not done: a general seccomp filter (the isolation relies on namespaces and an unprivileged user;
the filter only refuses the calls above), and cgroups (the parent's watch bounds total memory
instead, within a tenth of a second; kernel memory such as socket and pipe buffers is bounded only
by the file and process limits). No /dev/pts: the code cannot open pseudo-terminals.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from tether.adapters.tools.sandbox.tool import SandboxLimits, SandboxResult, _size, forced_unavailable

WORK = "/work"  # the working folder, inside the sandbox
DEFAULT_INTERPRETER = "/usr/bin/python3"
INTERPRETER_ENV = "TETHER_SANDBOX_PYTHON"
STATE_DIR_ENV = "TETHER_SANDBOX_STATE_DIR"
POOL_SIZE_ENV = "TETHER_SANDBOX_USERS"
DEFAULT_STATE_DIR = "/run/tether-sandbox"
DEFAULT_POOL_SIZE = 8
USER_PREFIX = "tether-sbx-"
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HOST_ENV = {"PATH": _SYSTEM_PATH, "LANG": "C.UTF-8"}
_SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}
_PROBE_OK = "tether-sandbox-ok"
_WATCH_INTERVAL_S = 0.1
_FOLDER_EVERY = 5  # check the working folder every 5th watch tick (0.5 s)
_TRACEBACK_CHARS = 8000
T = TypeVar("T")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# Runs inside the sandbox as `python3 -I -u -B -c RUNNER fd cpu mem nproc fsize nofile value_cap tb_cap`.
# It reads the code from stdin, applies the limits to itself (soft = hard, so the code cannot raise
# them), runs the code like a REPL cell and writes {"value", "error", "exit"} as one JSON line to fd.
RUNNER = r'''
import sys, os
def _tether_main():
    import ast, json, linecache, resource, traceback
    fd, cpu, mem, nproc, fsize, nofile, vcap, tcap = (int(a) for a in sys.argv[1:9])
    code = sys.stdin.buffer.read().decode("utf-8", "replace")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.set_inheritable(fd, False)
    for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
                            (resource.RLIMIT_NPROC, nproc, nproc), (resource.RLIMIT_FSIZE, fsize, fsize),
                            (resource.RLIMIT_NOFILE, nofile, nofile), (resource.RLIMIT_CORE, 0, 0),
                            (resource.RLIMIT_MSGQUEUE, 0, 0)):
        resource.setrlimit(res, (soft, hard))
    sys.path.insert(0, os.getcwd())
    linecache.cache["<code>"] = (len(code), None, code.splitlines(True), "<code>")
    report = {}
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = ast.parse(code, "<code>")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<code>", "exec"), env)
        if last is not None:
            value = eval(compile(last, "<code>", "eval"), env)
            if value is not None:
                text = repr(value)
                if len(text) > vcap:
                    text = text[:vcap] + "... (%d more characters)" % (len(text) - vcap)
                report["value"] = text
    except SystemExit as e:
        report["exit"] = e.code if isinstance(e.code, (int, type(None))) else str(e.code)
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<code>":
            tb = tb.tb_next
        if isinstance(e, SyntaxError) or tb is None:
            text = "".join(traceback.format_exception_only(type(e), e))
        else:
            text = "".join(traceback.format_exception(type(e), e, tb))
        if len(text) > tcap:
            text = "...\n" + text[-tcap:]
        report["error"] = {"type": type(e).__name__, "text": text, "errno": getattr(e, "errno", None)}
        if report["error"]["errno"] == 28:  # ENOSPC: which bounded place is full
            report["full"] = [p for p in ("/work", "/tmp", "/dev/shm") if _full(p)]
        del e, tb
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os.write(fd, (json.dumps(report) + "\n").encode())
def _full(path):
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 65536 or st.f_favail == 0
_tether_main()
'''


# -- what the machine offers --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Setup:
    bwrap: str
    interpreter: str  # as given (e.g. /usr/bin/python3)
    as_root: bool
    features: frozenset[str]  # bwrap options this version knows (--disable-userns, --size)
    extra_ro: tuple[str, ...]  # interpreter prefix to bind when it is not under /usr
    unshare: str = ""
    setpriv: str = ""
    mount: str = ""
    sh: str = ""
    useradd: str = ""
    mkdir: str = ""
    umount: str = ""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SYSTEM_PATH)


def _state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def _pool_size() -> int:
    try:
        return max(1, int(os.environ.get(POOL_SIZE_ENV) or DEFAULT_POOL_SIZE))
    except ValueError:
        return DEFAULT_POOL_SIZE


def _interpreter(explicit: str | None) -> str:
    return explicit or os.environ.get(INTERPRETER_ENV) or DEFAULT_INTERPRETER


@functools.lru_cache(maxsize=8)
def _bwrap_features(bwrap: str) -> frozenset[str]:
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, env=_HOST_ENV)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    text = out.stdout + out.stderr
    return frozenset(opt for opt in ("--disable-userns", "--size", "--info-fd") if opt in text)


def _setup(interpreter: str) -> _Setup | str:
    """The tools this machine has, or why the sandbox cannot work here."""
    if not sys.platform.startswith("linux"):
        return "the subprocess sandbox needs Linux (bubblewrap and namespaces)"
    bwrap = _which("bwrap")
    if bwrap is None:
        return ("bubblewrap is not installed (install it with `apt-get install bubblewrap`, or run "
                "scripts/setup-system.sh)")
    features = _bwrap_features(bwrap)
    if "--info-fd" not in features:
        return f"{bwrap} does not work or is too old (bubblewrap >= 0.5 is needed)"
    for path, bad in (("/proc/sys/user/max_user_namespaces", "0"), ("/proc/sys/kernel/unprivileged_userns_clone", "0")):
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip() == bad:
                return f"user namespaces are disabled on this machine ({path} is {bad})"
    if not os.path.isfile(interpreter) or not os.access(interpreter, os.X_OK):
        return (f"there is no Python interpreter at {interpreter} for the sandbox (install it with `apt-get "
                f"install python3`, or point {INTERPRETER_ENV} at one)")
    real = os.path.realpath(interpreter)
    extra: tuple[str, ...] = ()
    if not real.startswith("/usr/"):
        extra = (str(Path(real).parents[1]),)  # the install prefix, e.g. /opt/python3.12
    as_root = os.geteuid() == 0
    if not as_root:
        return _Setup(bwrap, interpreter, False, features, extra)
    tools = {name: _which(name) for name in ("unshare", "setpriv", "mount", "sh", "useradd", "mkdir", "umount")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        return (f"running as root, the sandbox needs {', '.join(missing)} (util-linux, passwd) to run the code "
                "as an unprivileged user")
    return _Setup(bwrap, interpreter, True, features, extra, unshare=tools["unshare"] or "",
                  setpriv=tools["setpriv"] or "", mount=tools["mount"] or "", sh=tools["sh"] or "",
                  useradd=tools["useradd"] or "", mkdir=tools["mkdir"] or "", umount=tools["umount"] or "")


# -- the pool of sandbox users (root only) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _User:
    name: str
    uid: int
    gid: int
    index: int = 0  # of its lease: names the call's tmpfs under STATE/calls


def _prepare_state_dir() -> Path:
    state = _state_dir()
    for path, mode in ((state, 0o755), (state / "leases", 0o700), (state / "scratch", 0o755),
                       (state / "calls", 0o700)):
        path.mkdir(mode=mode, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            raise RuntimeError(f"{path} must be a directory owned by root")
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
    return state


def _ensure_user(setup: _Setup, index: int) -> _User:
    name = f"{USER_PREFIX}{index}"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        lock = _state_dir() / "users.lock"
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # one useradd at a time (they lock /etc/passwd)
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                out = subprocess.run([setup.useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                                      "--shell", "/usr/sbin/nologin", "--user-group", "--comment",
                                      "tether python sandbox", name],
                                     capture_output=True, text=True, timeout=60, env=_HOST_ENV,
                                     stdin=subprocess.DEVNULL)
                if out.returncode != 0 and "already exists" not in out.stderr:
                    raise RuntimeError(f"could not create the sandbox user {name}: {out.stderr.strip()}") from None
                pw = pwd.getpwnam(name)
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise RuntimeError(f"the sandbox user {name} must not be root")
    return _User(name, pw.pw_uid, pw.pw_gid, index)


def _try_lease(index: int) -> int | None:
    fd = os.open(_state_dir() / "leases" / f"{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _kill_user_processes(uid: int) -> None:
    """SIGKILL whatever still runs as a sandbox user (normally nothing: the pid namespace is gone)."""
    for _ in range(50):
        found = False
        for pid in _pids():
            try:
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
            except OSError:
                continue
            if _task_stat(pid) is not None:  # alive (a zombie is only waiting for its parent)
                found = True
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if not found:
            return
        time.sleep(0.01)


@contextlib.asynccontextmanager
async def _lease_user(setup: _Setup) -> AsyncIterator[_User]:
    """A sandbox user nobody else is using, for the duration of one call (across processes too)."""
    await asyncio.to_thread(_prepare_state_dir)
    size = _pool_size()
    while True:
        for index in range(size):
            fd = _try_lease(index)
            if fd is not None:
                break
        else:
            await asyncio.sleep(0.05)
            continue
        break
    try:
        user = await asyncio.to_thread(_ensure_user, setup, index)
        await asyncio.to_thread(_kill_user_processes, user.uid)
        try:
            yield user
        finally:
            await asyncio.to_thread(_kill_user_processes, user.uid)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _lease_user_blocking(setup: _Setup) -> Iterator[_User]:
    _prepare_state_dir()
    while True:
        for index in range(_pool_size()):
            fd = _try_lease(index)
            if fd is not None:
                try:
                    yield _ensure_user(setup, index)
                finally:
                    os.close(fd)
                return
        time.sleep(0.05)


# -- the working folder ---------------------------------------------------------------------------


def _make_workdir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    if path.is_symlink() or not path.is_dir():
        raise RuntimeError(f"the working folder {path} is not a directory")


def _leftover(workdir: Path) -> re.Pattern[str]:
    """Names of the copies a copy-out makes next to the folder: `.<run>.new-<nonce>`, `.<run>.old-<nonce>`
    (a run folder's name never starts with a dot, and the nonce is 12 hex digits, so no run's
    leftovers match another run's pattern)."""
    return re.compile(rf"\.{re.escape(workdir.name)}\.(new|old)-[0-9a-f]{{12}}")


def _recover(workdir: Path) -> None:
    """Undo what a copy-out killed midway left (under the run's folder lock, before the folder is used):
    the folder moved aside but the new copy not yet in place comes back; partial copies go."""
    pattern = _leftover(workdir)
    try:
        names = sorted(e.name for e in os.scandir(workdir.parent) if pattern.fullmatch(e.name))
    except FileNotFoundError:
        return
    if not os.path.lexists(workdir):
        old = [name for name in names if ".old-" in name]
        if old:  # killed between the two renames: the old contents, whole
            os.rename(workdir.parent / old[0], workdir)
            names.remove(old[0])
    for name in names:
        shutil.rmtree(workdir.parent / name, ignore_errors=True)


_BLOCK = 4096
_CHUNK = 1024 * 1024


def _copy_file(name: str, dir_fd: int, dst: str) -> None:
    """Copy a regular file, never following a link, keeping holes: only the data ranges are read
    (SEEK_DATA), and only its 4 KB blocks that are not all zero are written (a fallocated or
    sparse file takes no more room in the copy than its written data)."""
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(src).st_size
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(src, pos, os.SEEK_DATA)
                    end = min(size, os.lseek(src, start, os.SEEK_HOLE))
                except OSError as e:
                    if e.errno == errno.ENXIO:  # no data after pos
                        break
                    start, end = pos, size  # no SEEK_DATA here: all of it
                while start < end:
                    chunk = os.pread(src, min(_CHUNK, end - start), start)
                    if not chunk:
                        end = start
                        break
                    view = memoryview(chunk)
                    for offset in range(0, len(chunk), _BLOCK):
                        block = view[offset:offset + _BLOCK]
                        if chunk.count(0, offset, offset + _BLOCK) != len(block):
                            os.pwrite(out, block, start + offset)
                    start += len(chunk)
                pos = max(end, pos + 1)
            os.ftruncate(out, size)
        finally:
            os.close(out)
    finally:
        os.close(src)


def _copy_tree(src: Path, dst: Path, owner: tuple[int, int] | None) -> None:
    """Copy the folder src into the existing empty folder dst: directories, regular files (holes and
    hard links kept, so the copy takes no more room than the original) and symbolic links (as links,
    their target copied verbatim, never followed); modes (without set-id bits) and times. Other kinds
    (fifos, sockets) are left out. `owner`: (uid, gid) for every entry, dst included; else the caller's.
    src is read through directory fds without following links; dst is ours alone while it is written."""
    top = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    linked: dict[tuple[int, int], str] = {}
    folders: list[tuple[str, os.stat_result]] = [(str(dst), os.fstat(top))]
    try:
        for root, dirs, files, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            here = os.path.normpath(os.path.join(dst, root))
            for name in (*dirs, *files):
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                path = os.path.join(here, name)
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(path, 0o700)
                    folders.append((path, st))
                    continue
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(name, dir_fd=dfd), path)
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in linked:
                        os.link(linked[key], path, follow_symlinks=False)
                        continue
                    _copy_file(name, dfd, path)
                    if st.st_nlink > 1:
                        linked[key] = path
                    os.chmod(path, stat.S_IMODE(st.st_mode) & 0o777)
                else:
                    continue
                if owner is not None:
                    os.chown(path, *owner, follow_symlinks=False)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    finally:
        os.close(top)
    for path, st in reversed(folders):  # the deepest first: making entries changed their times
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)
        os.chmod(path, 0o700 if path == str(dst) else stat.S_IMODE(st.st_mode) & 0o777)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_out(src: Path, workdir: Path) -> None:
    """Replace the run's folder by a copy of src, so that a kill at any instant leaves the old or the
    new contents (never a mix, never nothing, once `_recover` ran): copy to `.<run>.new-<nonce>`,
    move the folder aside to `.<run>.old-<nonce>`, move the copy in, delete the old one."""
    nonce = secrets.token_hex(6)
    new = workdir.parent / f".{workdir.name}.new-{nonce}"
    old = workdir.parent / f".{workdir.name}.old-{nonce}"
    os.mkdir(new, 0o700)
    _copy_tree(src, new, None)
    os.chmod(new, 0o700)
    if os.path.lexists(workdir):
        os.rename(workdir, old)
    os.rename(new, workdir)
    shutil.rmtree(old, ignore_errors=True)


def _call_dir(user: _User) -> Path:
    return _state_dir() / "calls" / str(user.index)


def _unmount(setup: _Setup, path: Path) -> None:
    """Unmount whatever is mounted at path (a tmpfs a crashed server left included)."""
    for _ in range(8):
        if not os.path.ismount(path):
            return
        out = subprocess.run([setup.umount, "--lazy", str(path)], capture_output=True, text=True, timeout=60,
                             env=_HOST_ENV, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise RuntimeError(f"could not unmount {path}: {out.stderr.strip()}")


def _mount_call(setup: _Setup, user: _User, limits: SandboxLimits) -> Path:
    """Mount the call's tmpfs at STATE/calls/<lease>: `work`, `tmp` and `shm` in it, so /work, /tmp and
    /dev/shm share files_mb and max_files (the root and the three folders are its first 4 inodes).
    The lease is this call's alone; a tmpfs a killed server left there is unmounted first."""
    path = _call_dir(user)
    path.mkdir(mode=0o755, exist_ok=True)
    _unmount(setup, path)
    opts = (f"size={limits.files_mb * 1024 * 1024},nr_inodes={limits.max_files + 4},mode=0755,"
            "nosuid,nodev")
    out = subprocess.run([setup.mount, "-t", "tmpfs", "-o", opts, "tether-sandbox", str(path)],
                         capture_output=True, text=True, timeout=60, env=_HOST_ENV, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"could not mount the sandbox's tmpfs: {out.stderr.strip()}")
    try:
        (path / "work").mkdir(mode=0o700)
        os.chown(path / "work", user.uid, user.gid)
        for name in ("tmp", "shm"):
            (path / name).mkdir()
            os.chmod(path / name, 0o1777)
    except BaseException:
        _unmount(setup, path)
        raise
    return path


@contextlib.asynccontextmanager
async def _call_tmpfs(setup: _Setup, user: _User, limits: SandboxLimits) -> AsyncIterator[Path]:
    path = await asyncio.to_thread(_mount_call, setup, user, limits)
    try:
        yield path
    finally:
        await _to_thread_to_the_end(_unmount, setup, path)


async def _to_thread_to_the_end(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in a thread, waited for to the end even if the caller is cancelled meanwhile (then
    re-raising the cancellation): the folder lock must not be let go while it still writes."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


def _folder_usage(path: Path, max_entries: int) -> tuple[int, int]:
    """(bytes on disk, entries) of the working folder, counting at most max_entries + 1 entries."""
    total = entries = 0
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0, 0
    try:
        for _root, dirs, files, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in (*dirs, *files):
                entries += 1
                with contextlib.suppress(OSError):
                    total += os.stat(name, dir_fd=dfd, follow_symlinks=False).st_blocks * 512
                if entries > max_entries:
                    return total, entries
    finally:
        os.close(top)
    return total, entries


def _scratch_usage(pid: int, work: os.stat_result) -> tuple[int, int]:
    """(bytes, files) in the sandbox's /tmp and /dev/shm, seen through its pid 1's root; (0, 0) until
    that root is the sandbox's (bwrap reports the pid before it switches roots) and once it is gone."""
    root = f"/proc/{pid}/root"
    try:
        st = os.stat(root + WORK)
        if (st.st_dev, st.st_ino) != (work.st_dev, work.st_ino):
            return 0, 0
        devices: dict[int, str] = {}
        for place in ("/tmp", "/dev/shm"):
            with contextlib.suppress(FileNotFoundError):  # no /dev/shm with a bwrap too old for --size
                devices[os.stat(root + place).st_dev] = root + place
        total = files = 0
        for path in devices.values():
            vfs = os.statvfs(path)
            total += (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
            files += vfs.f_files - vfs.f_ffree
    except OSError:
        return 0, 0
    # a tmpfs starts with 1 inode (its root); the shared one as root with 3 (root, tmp, shm)
    return total, max(0, files - (3 if len(devices) == 1 and os.path.exists(root + "/dev/shm") else len(devices)))


@contextlib.asynccontextmanager
async def _folder_lock(path: Path) -> AsyncIterator[None]:
    """One call at a time per working folder (flock: across tasks and processes), on a lock file next
    to it, `.<run>.lock`: the folder itself is replaced by every copy-out (root)."""
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.02)
        yield
    finally:
        os.close(fd)


# -- processes of one sandbox ---------------------------------------------------------------------


def _pids() -> list[int]:
    try:
        return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []


def _task_stat(pid: int) -> tuple[int, int] | None:
    """(threads, resident bytes) of a live process, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[17]), int(fields[21]) * _PAGE  # fields 20 (num_threads) and 24 (rss, pages)
    except (IndexError, ValueError):
        return None


def _ns_usage(ns_ino: int) -> tuple[list[int], int, int]:
    """(pids, threads, resident bytes) of the live processes in the pid namespace `ns_ino`."""
    pids: list[int] = []
    threads = rss = 0
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != ns_ino:
                continue
        except OSError:
            continue
        usage = _task_stat(pid)
        if usage is not None:
            pids.append(pid)
            threads += usage[0]
            rss += usage[1]
    return pids, threads, rss


def _signal_ns(ns_ino: int) -> bool:
    """SIGKILL every live process of the pid namespace; False if there was none."""
    pids, _threads, _rss = _ns_usage(ns_ino)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return bool(pids)


def _kill_ns(ns_ino: int) -> None:
    for _ in range(50):
        if not _signal_ns(ns_ino):
            return
        time.sleep(0.01)


def _killpg(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


async def _read_fd(pipe: BinaryIO, cap: int) -> bytes:
    """Everything written to the pipe, up to `cap` bytes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    data = bytearray()
    try:
        while len(data) < cap:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    finally:
        transport.close()
    return bytes(data[:cap])


async def _read_info(pipe: BinaryIO) -> dict[str, object]:
    """bubblewrap's --info-fd JSON (child pid, namespaces), read until complete."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    data = b""
    try:
        while len(data) < 65536:
            chunk = await reader.read(4096)
            if not chunk:
                break
            data += chunk
            with contextlib.suppress(ValueError):
                info = json.loads(data)
                if isinstance(info, dict):
                    return info
    finally:
        transport.close()
    return {}


# -- the backend ------------------------------------------------------------------------------------


class SubprocessBackend:
    """CPython (a system interpreter the sandbox user can read) in bubblewrap; see the module doc."""

    name = "subprocess"

    def __init__(self, interpreter: str | None = None) -> None:
        self.interpreter = _interpreter(interpreter)

    def unavailable(self) -> str | None:
        return isolation_available(self.interpreter)

    def describe(self, limits: SandboxLimits) -> str:
        version = "Python 3"
        match = re.search(r"python(\d+\.\d+)$", os.path.realpath(self.interpreter))
        if match:
            version = f"Python {match.group(1)}"
        return (
            f"Run Python code ({version}, full standard library) in a sandbox and get back what it printed "
            "(stdout and stderr), the value of its last line if that is an expression (like a REPL), and any "
            "error. Every call starts a fresh interpreter: variables do not carry over between calls, files do. "
            f"The current directory, {WORK}, is this run's working folder: files written there are kept for "
            "later calls of the same run (one folder shared by all calls of the run; a forked run does not "
            "get a copy). Nothing else is writable except /tmp and /dev/shm, which are emptied after every "
            "call; the rest of the file system is read-only system files. No network access. Third-party "
            "packages: only those installed system-wide, if any (no pip install). Limits per call: "
            f"{limits.cpu_s:g} s of CPU time per process, {limits.wall_s:g} s of wall time, "
            f"{limits.memory_mb} MB of memory, {limits.processes} processes and threads, "
            f"{_size(limits.output_bytes)} of printed output (stdout and stderr together), files up to "
            f"{limits.files_mb} MB each, and the working folder, /tmp and /dev/shm together may hold at most "
            f"{limits.files_mb} MB or {limits.max_files} files."
        )

    async def run(self, code: str, workdir: Path, limits: SandboxLimits) -> SandboxResult:
        setup = _setup(self.interpreter)
        if isinstance(setup, str):
            raise RuntimeError(setup)
        async with _folder_lock(workdir):
            await asyncio.to_thread(_recover, workdir)  # before the folder is made: it may come back
            await asyncio.to_thread(_make_workdir, workdir)
            if not setup.as_root:
                return await self._execute(setup, None, code, workdir, limits)
            async with _lease_user(setup) as user, _call_tmpfs(setup, user, limits) as mounted:
                work = mounted / "work"
                try:
                    await asyncio.to_thread(_copy_tree, workdir, work, (user.uid, user.gid))
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    return SandboxResult(limit=(
                        f"the working folder {WORK} holds more than {limits.files_mb} MB (files_mb) or "
                        f"{limits.max_files} files (max_files), the most it may hold, so the code was not run; "
                        "the operator can raise those limits (the folder is kept as it is)"))
                try:
                    return await self._execute(setup, user, code, mounted, limits)
                finally:  # also when the code was stopped or the call cancelled: what it wrote is kept
                    await _to_thread_to_the_end(_kill_user_processes, user.uid)
                    await _to_thread_to_the_end(_copy_out, work, workdir)

    async def _execute(self, setup: _Setup, user: _User | None, code: str, workdir: Path,
                       limits: SandboxLimits) -> SandboxResult:
        files_bytes = limits.files_mb * 1024 * 1024
        watched = user is None  # as root, workdir is the call's tmpfs: the kernel bounds it, no watch
        size0, entries0 = (await asyncio.to_thread(_folder_usage, workdir, limits.max_files)) if watched else (0, 0)
        res_r, res_w = os.pipe()
        info_r, info_w = os.pipe()
        cpu = max(1, math.ceil(limits.cpu_s))  # RLIMIT_CPU counts whole seconds
        inner = [setup.interpreter, "-I", "-u", "-B", "-c", RUNNER, str(res_w), str(cpu),
                 str(limits.memory_mb * 1024 * 1024), str(limits.processes + 1), str(files_bytes), "256",
                 str(limits.output_bytes), str(_TRACEBACK_CHARS)]
        argv, fds = _command(setup, user, str(workdir), info_w, limits, inner)
        started = time.monotonic()
        try:  # cwd /: the sandbox's pid 1 inherits PWD from the shell (root) and would show ours
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, pass_fds=(res_w, info_w, *fds), env=_HOST_ENV, cwd="/",
                start_new_session=True)
        except BaseException:
            for fd in (res_r, res_w, info_r, info_w):
                os.close(fd)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        os.close(res_w)
        os.close(info_w)
        res_pipe, info_pipe = os.fdopen(res_r, "rb", buffering=0), os.fdopen(info_r, "rb", buffering=0)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        stopped: list[str] = []  # why the parent stopped the code (first reason wins)
        out, err = bytearray(), bytearray()
        budget = [limits.output_bytes]
        ns: list[int] = []

        def stop(reason: str) -> None:
            if not stopped:
                stopped.append(reason)
            _killpg(proc.pid)
            if ns:
                _signal_ns(ns[0])

        async def feed() -> None:
            with contextlib.suppress(OSError):  # the sandbox may die before reading it all
                proc.stdin.write(code.encode("utf-8", "surrogateescape"))  # type: ignore[union-attr]
                await proc.stdin.drain()  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]

        async def pump(stream: asyncio.StreamReader, buf: bytearray) -> None:
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                take = min(len(chunk), budget[0])
                buf += chunk[:take]
                budget[0] -= take
                if take < len(chunk):  # keep draining until EOF, so the pipe closes once the sandbox is dead
                    stop(f"output truncated at {_size(limits.output_bytes)}: the code printed more than that "
                         "(stdout and stderr together) and was stopped; print less, e.g. a summary or the "
                         "first rows")

        async def watch() -> None:
            info = await asyncio.shield(info_task)
            ino = info.get("pid-namespace")
            if not isinstance(ino, int):
                return
            ns.append(ino)
            pid = info.get("child-pid")
            if not watched:
                pid = None
            work = await asyncio.to_thread(os.stat, workdir) if watched else None
            tick = 0
            size = entries = 0
            while True:
                _, threads, rss = await asyncio.to_thread(_ns_usage, ino)
                if threads > limits.processes:  # the pid namespace's init counts as one
                    stop(f"the code started too many processes or threads (limit {limits.processes}) and was "
                         "stopped")
                elif rss > limits.memory_mb * 1024 * 1024:
                    stop(f"the code ran out of memory (limit {limits.memory_mb} MB for all its processes "
                         "together) and was stopped")
                if watched and tick % _FOLDER_EVERY == 0:
                    size, entries = await asyncio.to_thread(_folder_usage, workdir, limits.max_files)
                tick += 1
                # /tmp and /dev/shm count towards the same limits as the folder (each is bounded on its own too)
                scratch, scratch_entries = (await asyncio.to_thread(_scratch_usage, pid, work)
                                            if isinstance(pid, int) and work is not None else (0, 0))
                if size + scratch > max(files_bytes, size0) or \
                        entries + scratch_entries > max(limits.max_files, entries0):
                    stop(f"the working folder grew past {limits.files_mb} MB or {limits.max_files} files (what "
                         "is in /tmp and /dev/shm counts too) and the code was stopped; write less, or delete "
                         "files you no longer need")
                await asyncio.sleep(_WATCH_INTERVAL_S)

        info_task = asyncio.ensure_future(_read_info(info_pipe))
        result_task = asyncio.ensure_future(
            _read_fd(res_pipe, 2 * limits.output_bytes + 4 * _TRACEBACK_CHARS + 65536))
        tasks = [asyncio.ensure_future(feed()), asyncio.ensure_future(pump(proc.stdout, out)),
                 asyncio.ensure_future(pump(proc.stderr, err)), result_task, info_task]
        watcher = asyncio.ensure_future(watch())
        exited = asyncio.ensure_future(proc.wait())  # done once it exited and its pipes closed
        try:
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout=limits.wall_s)
            except TimeoutError:
                stop(f"the code was killed after {limits.wall_s:g} s of wall time (the limit)")
            for _ in range(100):  # killed: the pid namespace goes with bwrap; make sure of it
                try:
                    await asyncio.wait_for(asyncio.shield(exited), timeout=0.2)
                    break
                except TimeoutError:
                    _killpg(proc.pid)
                    if ns:
                        await asyncio.to_thread(_kill_ns, ns[0])
        except BaseException:  # cancelled: the sandbox must not outlive the call
            _killpg(proc.pid)
            raise
        finally:
            exited.cancel()
            watcher.cancel()
            if ns:
                await asyncio.to_thread(_kill_ns, ns[0])
            _done, pending = await asyncio.wait([*tasks, watcher], timeout=5)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
            res_pipe.close()
            info_pipe.close()
        envelope_raw = _outcome(result_task) or b""
        info = _outcome(info_task) or {}
        if not info and not stopped and not envelope_raw:
            detail = bytes(err).decode("utf-8", "replace").strip()
            raise RuntimeError(f"the sandbox could not start: {detail or f'exit status {proc.returncode}'}")
        if watched and not stopped:  # a last look at the folder, for growth between two ticks
            size, entries = await asyncio.to_thread(_folder_usage, workdir, limits.max_files)
            if size > max(files_bytes, size0) or entries > max(limits.max_files, entries0):
                stopped.append(f"the working folder grew past {limits.files_mb} MB or {limits.max_files} files; "
                               "delete files you no longer need")
        result = SandboxResult(stdout=bytes(out).decode("utf-8", "replace"),
                               stderr=bytes(err).decode("utf-8", "replace"),
                               exit_code=proc.returncode, duration_s=time.monotonic() - started,
                               user=user.name if user else None)
        _classify(result, _envelope(envelope_raw), stopped, proc.returncode, limits, shared=not watched)
        return result


_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
              ("stderr", "/proc/self/fd/2"))


def _command(setup: _Setup, user: _User | None, workdir: str, info_fd: int, limits: SandboxLimits,
             inner: list[str]) -> tuple[list[str], list[int]]:
    """The command that starts the sandbox, and the fds it reads (pass them to it, close them after).

    `workdir`: as root, the call's tmpfs (`_mount_call`), whose work, tmp and shm become /work, /tmp
    and /dev/shm, all bounded by it; otherwise the run's folder (the parent's watch), with a tmpfs
    of files_mb for each of /tmp and /dev/shm. /dev is read-only
    with a few device nodes: bwrap's own --dev would be an unbounded tmpfs (host memory) plus a
    devpts. bwrap reads its options from a pipe (--args), so the sandbox's pid 1, a copy of bwrap,
    shows `bwrap --args N -- python3 ...` as its command line, not the host paths among the options."""
    files_bytes = limits.files_mb * 1024 * 1024
    scratch = _state_dir() / "scratch"
    work_src = f"{scratch}/work" if user is not None else workdir
    bw = ["--unshare-all", "--unshare-user"]
    if "--disable-userns" in setup.features:
        bw.append("--disable-userns")
    bw += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            bw += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            bw += ["--ro-bind", d, d]
    for extra in setup.extra_ro:
        bw += ["--ro-bind", extra, extra]
    bw += ["--proc", "/proc", "--tmpfs", "/dev"]
    for name in _DEVICES:
        bw += ["--dev-bind-try", f"/dev/{name}", f"/dev/{name}"]
    for name, target in _DEV_LINKS:
        bw += ["--symlink", target, f"/dev/{name}"]
    if user is not None:  # the call's tmpfs, bound onto STATE/scratch in the call's mount namespace (below)
        bw += ["--bind", f"{scratch}/tmp", "/tmp", "--bind", f"{scratch}/shm", "/dev/shm"]
    elif "--size" in setup.features:
        bw += ["--size", str(files_bytes), "--tmpfs", "/tmp", "--size", str(files_bytes), "--tmpfs", "/dev/shm"]
    else:  # a bwrap too old for --size: /tmp only watched, and no /dev/shm
        bw += ["--tmpfs", "/tmp"]
    bw += ["--remount-ro", "/dev", "--bind", work_src, WORK, "--remount-ro", "/", "--chdir", WORK, "--clearenv"]
    for key, value in _SANDBOX_ENV.items():
        bw += ["--setenv", key, value]
    fds: list[int] = []
    program = _seccomp_program(platform.machine(), user is None)
    if program is not None:
        fds.append(_pipe_with(program))
        bw += ["--seccomp", str(fds[-1])]
    bw += ["--info-fd", str(info_fd)]
    fds.append(_pipe_with(b"".join(arg.encode() + b"\0" for arg in bw)))
    argv = [setup.bwrap, "--args", str(fds[-1]), "--", *inner]  # bwrap takes only options from --args
    if user is None:
        return argv, fds
    # The call's tmpfs lies in STATE/calls, which only root may enter (bubblewrap resolves its bind
    # sources as the sandbox user): root binds it onto STATE/scratch in the call's mount namespace.
    script = ('src=$1 dst=$2 mount=$3 setpriv=$4 uid=$5 gid=$6; shift 6; '
              '"$mount" --bind "$src" "$dst" || exit 125; '
              'exec "$setpriv" --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all -- "$@"')
    return [setup.unshare, "--mount", "--propagation", "private", "--", setup.sh, "-c", script, "tether-sandbox",
            workdir, str(scratch), setup.mount, setup.setpriv, str(user.uid), str(user.gid), *argv], fds


def _pipe_with(data: bytes) -> int:
    """The read end of a pipe that holds `data` (small: it must fit the pipe's buffer)."""
    assert len(data) < 65536
    r, w = os.pipe()
    try:
        os.write(w, data)
    finally:
        os.close(w)
    return r


# System calls that make kernel objects of unbounded size outside every watch: SysV shared memory,
# semaphores and message queues (the sandbox's IPC namespace allows ~2**64 bytes of them) and
# memfd files. They fail with EPERM; Python's multiprocessing uses /dev/shm instead. Per machine:
# (audit arch, its syscall numbers); a call from any other architecture (x32 included) fails too.
_DENIED = {
    "x86_64": ((0xC000003E, (29, 64, 68, 319)),  # shmget semget msgget memfd_create
               (0x40000003, (117, 395, 393, 399, 356))),  # i386: ipc shmget semget msgget memfd_create
    "aarch64": ((0xC00000B7, (194, 190, 186, 279)),
                (0x40000028, (307, 299, 303, 385))),  # arm
}


# Not root, /work is the host folder, watched: fallocate (full-size files at once, between two
# looks of the watch) fails with EOPNOTSUPP, so glibc's posix_fallocate writes zeros instead, which
# RLIMIT_FSIZE and the watch count like any write. As root /work is a tmpfs: fallocate is bounded.
_FALLOCATE = {"x86_64": (285, 324), "aarch64": (47, 352)}  # (64-bit, 32-bit) syscall numbers


@functools.lru_cache(maxsize=8)
def _seccomp_program(machine: str, refuse_fallocate: bool = False) -> bytes | None:
    """A classic BPF seccomp filter (struct sock_filter[]) for bwrap's --seccomp, None if unknown here."""
    table = _DENIED.get(machine)
    if table is None:
        return None
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    deny, unsupported = -1, -2  # jump targets, resolved below to the last two instructions
    prog: list[tuple[int, int, int, int]] = [(ld, 0, 0, 4)]  # seccomp_data.arch
    for (arch, numbers), fallocate in zip(table, _FALLOCATE[machine], strict=True):
        checks = [(jge, deny, 0, 0x40000000)] if arch == 0xC000003E else []  # x32 system calls
        checks += [(jeq, deny, 0, nr) for nr in numbers]
        if refuse_fallocate:
            checks.append((jeq, unsupported, 0, fallocate))
        prog += [(jeq, 0, len(checks) + 2, arch), (ld, 0, 0, 0), *checks,  # seccomp_data.nr
                 (ret, 0, 0, 0x7FFF0000)]  # SECCOMP_RET_ALLOW
    prog.append((ret, 0, 0, 0x00050000 | errno.EOPNOTSUPP))  # SECCOMP_RET_ERRNO
    prog.append((ret, 0, 0, 0x00050000 | errno.EPERM))
    last = len(prog) - 1
    targets = {deny: last, unsupported: last - 1}
    return b"".join(struct.pack("=HBBI", code, targets[jt] - i - 1 if jt in targets else jt, jf, k)
                    for i, (code, jt, jf, k) in enumerate(prog))


def _outcome(task: asyncio.Future[T]) -> T | None:
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _envelope(raw: bytes) -> dict[str, object] | None:
    for line in reversed(raw.decode("utf-8", "replace").splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                return data
    return None


def _classify(result: SandboxResult, env: dict[str, object] | None, stopped: list[str], code: int | None,
              limits: SandboxLimits, shared: bool = False) -> None:
    """Fill value / error / limit from the parent's observations first, the envelope second. `shared`:
    /work, /tmp and /dev/shm are one tmpfs (root)."""
    error = env.get("error") if env else None
    full = env.get("full") if env else None  # which of /tmp and /dev/shm were full (the runner looked)
    if isinstance(error, dict):
        result.error = str(error.get("text") or error.get("type") or "error")
    if env and isinstance(env.get("value"), str):
        result.value = str(env["value"])
    if stopped:
        result.limit = stopped[0]
        return
    if isinstance(error, dict):
        if error.get("type") == "MemoryError":
            result.limit = f"the code ran out of memory (limit {limits.memory_mb} MB)"
        elif error.get("errno") == errno.ENOSPC and shared:  # the one writable file system (a refused
            # fallocate leaves it as it was, so it need not look full)
            result.limit = (f"the working folder is full: {WORK}, /tmp and /dev/shm hold at most {limits.files_mb} MB "
                            f"(files_mb) and {limits.max_files} files (max_files) together; write less, or "
                            "delete files you no longer need")
        elif error.get("errno") == errno.ENOSPC and isinstance(full, list) and (full := [
                place for place in full if place != WORK]):
            places = " and ".join(map(str, full))
            result.limit = (f"the sandbox's {places} {'are' if ' and ' in places else 'is'} full: /tmp and "
                            f"/dev/shm hold at most {limits.files_mb} MB (files_mb) and {limits.max_files} files "
                            "(max_files) together; write less, or delete files you no longer need")
        elif error.get("errno") == errno.EFBIG:
            result.limit = f"a file grew past the file size limit ({limits.files_mb} MB)"
        elif (error.get("errno") == errno.EAGAIN and error.get("type") == "BlockingIOError") or (
                error.get("type") == "RuntimeError" and "can't start new thread" in str(error.get("text"))):
            result.limit = f"the code could not start another process or thread (limit {limits.processes})"
        return
    if env is not None and "exit" in env:
        status = env["exit"]
        if status not in (None, 0):
            result.error = f"the code called sys.exit({status!r})"
        return
    if env is not None and code == 0:
        return
    sig = code - 128 if code is not None and code > 128 else None
    if sig == signal.SIGXCPU or sig == signal.SIGKILL:
        result.limit = (f"the code used more than {limits.cpu_s:g} s of CPU time (the limit) and was stopped"
                        if sig == signal.SIGXCPU else
                        f"the code was killed (it ran past the {limits.cpu_s:g} s CPU time limit or out of memory)")
    elif sig == signal.SIGSEGV:
        result.limit = ("the Python process crashed (segmentation fault), most likely from too deep recursion; "
                        "do not raise sys.setrecursionlimit, use a loop instead")
    elif sig == signal.SIGABRT:
        result.limit = f"the Python process aborted, most likely out of memory (limit {limits.memory_mb} MB)"
    elif sig == signal.SIGXFSZ:
        result.limit = f"a file grew past the file size limit ({limits.files_mb} MB)"
    elif sig is not None:
        result.limit = f"the Python process was killed by signal {signal.Signals(sig).name}"
    elif env is None and code not in (0, None):
        result.error = f"the Python process exited with status {code} before the code finished"


# -- is it safe here? --------------------------------------------------------------------------------


def isolation_available(interpreter: str | None = None) -> str | None:
    """None when the subprocess sandbox really isolates here, else why not (a sentence).

    Checks bubblewrap, user namespaces and the interpreter, then starts one tiny sandbox (as
    the sandbox user when root) and caches the answer for the process. `TETHER_SANDBOX_FORCE_UNAVAILABLE=1`
    forces a refusal (for tests).
    """
    forced = forced_unavailable()
    if forced:
        return forced
    return _probe(_interpreter(interpreter), os.geteuid())


_PROBED: set[tuple[str, int]] = set()  # (interpreter, euid) that worked; failures are checked again


def _probe(interpreter: str, euid: int) -> str | None:
    if (interpreter, euid) in _PROBED:
        return None
    reason = _probe_once(interpreter)
    if reason is None:
        _PROBED.add((interpreter, euid))
    return reason


def _probe_once(interpreter: str) -> str | None:
    setup = _setup(interpreter)
    if isinstance(setup, str):
        return setup
    try:
        if setup.as_root:
            with _lease_user_blocking(setup) as user:
                limits = SandboxLimits(files_mb=1, max_files=16)
                mounted = _mount_call(setup, user, limits)
                try:
                    return _probe_run(setup, user, str(mounted), limits)
                finally:
                    _unmount(setup, mounted)
        with tempfile.TemporaryDirectory(prefix="tether-sandbox-probe-") as tmp:
            return _probe_run(setup, None, tmp, SandboxLimits(files_mb=1, max_files=16))
    except Exception as e:
        return f"the sandbox could not be prepared: {e}"


def _probe_run(setup: _Setup, user: _User | None, workdir: str, limits: SandboxLimits) -> str | None:
    info_r, info_w = os.pipe()
    inner = [setup.interpreter, "-I", "-c", f"print({_PROBE_OK!r})"]
    argv, fds = _command(setup, user, workdir, info_w, limits, inner)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=_HOST_ENV, cwd="/",
                             pass_fds=(info_w, *fds), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bubblewrap could not be started: {e}"
    finally:
        for fd in (info_r, info_w, *fds):
            os.close(fd)
    if out.returncode == 0 and out.stdout.strip() == _PROBE_OK:
        return None
    detail = (out.stderr.strip() or out.stdout.strip() or f"exit status {out.returncode}")[-500:]
    who = f" as the unprivileged user {user.name}" if user else ""
    if "Permission denied" in detail and "exec" in detail:
        return f"the sandbox cannot run {setup.interpreter}{who} (is it readable by that user?): {detail}"
    return f"bubblewrap cannot create a sandbox here{who} (are user namespaces allowed?): {detail}"
