"""Leases whose owner is a dead process of this machine are free at once; any doubt waits for expiry."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from tether import Agent
from tether.adapters.models.scripted import ScriptedModel, reply
from tether.adapters.process import start_ticks, this_host
from tether.adapters.store.memory import MemoryStore
from tether.adapters.store.sql import SqlStore
from tether.domain.errors import TetherError
from tether.domain.leases import Host, owner_is_gone, owner_of, owner_string
from tether.services.runs import RunsService

CRASH = Path(__file__).parent / "crash"
HERE = this_host()
linux = pytest.mark.skipif(HERE is None, reason="needs Linux's /proc")

# -- the pure rule --------------------------------------------------------------------------------


def test_an_owner_string_carries_the_process_identity_and_reads_back():
    host = Host("boot-1", "mnt:1,pid:2")
    text = owner_string("box:42:abc", host, 42, 1234)
    owner = owner_of(text)
    assert (owner.name, owner.host, owner.pid, owner.start_ticks) == ("box:42:abc", host, 42, 1234)
    assert owner_of("box:42:abc").host is None  # an owner written by an older Tether: no identity
    assert owner_of("box:42:abc boot=x ns=y pid=z start=1").host is None  # malformed: no identity


def test_only_a_dead_owner_on_this_boot_and_namespaces_is_gone():
    here = Host("boot-1", "mnt:1,pid:2")
    owner = owner_of(owner_string("box:42:abc", here, 42, 1234))
    assert not owner_is_gone(owner, here, 1234)  # alive: same pid, same start time
    assert owner_is_gone(owner, here, 999)  # the pid now names a later process
    assert owner_is_gone(owner, here, None)  # no process has the pid
    assert not owner_is_gone(owner, Host("boot-2", "mnt:1,pid:2"), None)  # rebooted, or another machine
    assert not owner_is_gone(owner, Host("boot-1", "mnt:9,pid:2"), None)  # another container
    assert not owner_is_gone(owner, None, None)  # we cannot tell where we are
    assert not owner_is_gone(owner_of("box:42:abc"), here, None)  # the owner did not say where it was


# -- the service ----------------------------------------------------------------------------------

agent = Agent("quick", ScriptedModel([reply("done")]), ref="test_lease:agent")


async def _run_leased_by(tmp_path: Path, owner: str) -> tuple[RunsService, str]:
    """A run created (not advanced) by `owner`, and another service that wants to resume it."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = RunsService(SqlStore(url), owner=owner)
    run = await first.start(agent, "hi", drive=False)
    other = RunsService(SqlStore(url))
    other.register(agent)
    return other, run.id


def _me(**changes) -> str:
    """This test process as a lease owner, with some of its identity changed."""
    assert HERE is not None
    ident = {"host": HERE, "pid": os.getpid(), "start_ticks": start_ticks(os.getpid()), **changes}
    return owner_string(f"box:{ident['pid']}:abc", ident["host"], ident["pid"], ident["start_ticks"])


@linux
@pytest.mark.anyio
async def test_a_lease_held_by_a_live_process_is_not_taken(tmp_path):
    other, run_id = await _run_leased_by(tmp_path, _me())
    with pytest.raises(TetherError, match=r"leased by box:\d+:abc, a process that may still be advancing it"):
        await other.resume(run_id)


@linux
@pytest.mark.anyio
async def test_a_lease_whose_pid_now_names_a_later_process_is_taken_at_once(tmp_path):
    other, run_id = await _run_leased_by(tmp_path, _me(start_ticks=start_ticks(os.getpid()) - 1))
    done = await other.resume(run_id)
    assert done.status == "completed" and done.output == "done"


@linux
@pytest.mark.anyio
async def test_a_lease_from_another_boot_waits_for_expiry(tmp_path):
    assert HERE is not None
    other, run_id = await _run_leased_by(tmp_path, _me(host=replace(HERE, boot_id="another-boot"),
                                                       start_ticks=1))
    with pytest.raises(TetherError, match="leased by"):
        await other.resume(run_id)


@linux
@pytest.mark.anyio
async def test_a_lease_from_another_container_waits_for_expiry(tmp_path):
    assert HERE is not None
    other, run_id = await _run_leased_by(tmp_path, _me(host=replace(HERE, namespaces="mnt:1,pid:2"),
                                                       start_ticks=1))
    with pytest.raises(TetherError, match="leased by"):
        await other.resume(run_id)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_taking_over_is_compare_and_set_on_the_old_owner(tmp_path, kind):
    store = SqlStore(f"sqlite:///{tmp_path / 'runs.db'}") if kind == "sqlite" else MemoryStore()
    run = await RunsService(store, owner="dead").start(agent, "hi", drive=False)
    wins = await asyncio.gather(*(store.take_over_lease(run.id, "dead", f"taker{i}", 30) for i in range(5)))
    assert sorted(wins) == [False] * 4 + [True]
    info = await store.get_run(run.id)
    assert info is not None and info.lease_owner == f"taker{wins.index(True)}"


# -- the CLI, killed for real ---------------------------------------------------------------------


@linux
def test_after_tether_run_is_killed_runs_resume_takes_the_run_over_at_once(cli, tmp_path):
    marker = tmp_path / "stuck"
    env = {"TETHER_STUCK_FILE": str(marker), "PYTHONPATH": str(CRASH)}
    started = cli.popen("run", str(CRASH / "stuck.toml"), "wait", extra_env=env)
    cli.wait_for(marker, started)
    started.send_signal(signal.SIGKILL)
    started.wait(timeout=30)
    run_id = re.findall(r"run_[0-9a-f]+", cli("runs", "list").stdout)[0]

    # The dead process's lease has 30 s to go: resume does not wait for it (and never did: it
    # refused with "leased by … resumed once that lease expires").
    resumed = cli("runs", "resume", run_id, extra_env=env)
    assert resumed.returncode == 0, resumed.all
    assert "the tool said: went on" in resumed.stdout


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_bad_lease_ttl_is_a_usage_mistake(cli, value):
    proc = cli("runs", "resume", "run_x", "--lease-ttl", value)
    assert proc.returncode == 2, proc.all
    assert proc.stderr.startswith("error: --lease-ttl must be a positive number of seconds")
    assert len(proc.stderr.strip().splitlines()) == 1


@linux
@pytest.mark.anyio
async def test_a_server_started_again_finds_the_runs_its_dead_self_left_at_once(tmp_path):
    """What a server's recovery asks at start: runs whose lease has not expired, but whose owner is gone."""
    alive, live_id = await _run_leased_by(tmp_path, _me())
    assert live_id not in await alive.orphaned_runs()  # its owner (this process) is alive: not orphaned
    other, run_id = await _run_leased_by(tmp_path, _me(start_ticks=start_ticks(os.getpid()) + 1))
    assert run_id in await other.orphaned_runs()  # the pid names another process now: the owner is gone
    assert run_id not in await other.orphaned_runs(dead_owners=False)  # its lease itself has not expired
    other.register(Agent("quick", ScriptedModel([reply("done")]), ref="test_lease:agent"))  # a fresh script
    assert [v.id for v in await other.resume_expired()] == [run_id]
    assert (await other.get(run_id)).status == "completed"
