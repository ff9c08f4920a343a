"""Ids: fixed width, sorted by creation, unique, and not repeated by a forked child."""

from __future__ import annotations

import os
import sys

import pytest

from tether.domain.ids import new_id


def test_ids_are_fixed_width_time_ordered_and_unique():
    ids = [new_id("call") for _ in range(3000)]  # past one draw of random digits
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert all(len(i) == len("call_") + 26 and int(i[5:], 16) >= 0 for i in ids)
    assert len({i[-12:] for i in ids}) == len(ids)  # the random part alone is unique too


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_forked_child_draws_random_digits_of_its_own():
    new_id("x")  # the parent has random digits in hand
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, ",".join(new_id("x")[-12:] for _ in range(5)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 1000).decode().split(",")
    parent = [new_id("x")[-12:] for _ in range(5)]
    assert not set(child) & set(parent)
