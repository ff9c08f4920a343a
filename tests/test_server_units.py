"""The server's pure parts: cursor pagination, derived ids, error sentences."""

from __future__ import annotations

import time

import pytest

from tether.domain.ids import new_id
from tether.interfaces.server.assistants import tenant_of
from tether.interfaces.server.errors import validation_message
from tether.interfaces.server.guard import allowed_host, host_of, is_loopback
from tether.interfaces.server.wire import message_id, step_ids
from tether.interfaces.server.wire import page as wire_page
from tether.services.operator import redact_url
from tether.services.pages import Cursor

ITEMS = [{"id": f"x_{i:02d}"} for i in range(10)]  # oldest first


def page(items: list[dict], *, after: str | None, before: str | None, limit: int, order: str) -> dict:
    return wire_page(items, Cursor(after=after, before=before, limit=limit, order=order))  # type: ignore[arg-type]


def ids(envelope: dict) -> list[str]:
    return [i["id"] for i in envelope["data"]]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_cover_everything_once_in_order(order: str) -> None:
    seen, after = [], None
    while True:
        p = page(ITEMS, after=after, before=None, limit=3, order=order)
        seen += ids(p)
        assert p["first_id"] == (ids(p)[0] if p["data"] else None)
        assert p["last_id"] == (ids(p)[-1] if p["data"] else None)
        if not p["has_more"]:
            break
        after = p["last_id"]
    expected = [i["id"] for i in ITEMS]
    assert seen == (expected if order == "asc" else expected[::-1])


def test_before_gives_the_items_next_to_the_cursor() -> None:
    asc = page(ITEMS, after=None, before="x_08", limit=3, order="asc")
    assert ids(asc) == ["x_05", "x_06", "x_07"] and asc["has_more"]
    desc = page(ITEMS, after=None, before="x_02", limit=3, order="desc")
    assert ids(desc) == ["x_05", "x_04", "x_03"] and desc["has_more"]
    assert ids(page(ITEMS, after=None, before="x_01", limit=3, order="asc")) == ["x_00"]


def test_a_deleted_cursor_still_works() -> None:
    without = [i for i in ITEMS if i["id"] != "x_04"]
    assert ids(page(without, after="x_04", before=None, limit=2, order="asc")) == ["x_05", "x_06"]


def test_derived_ids_sort_by_step_after_what_started_the_run() -> None:
    before = new_id("msg")
    run_ts = time.time()
    time.sleep(0.001)
    run_id = new_id("run")
    m1, m3 = message_id(run_id, run_ts, 1), message_id(run_id, run_ts, 3)
    s1 = step_ids(run_id, run_ts, 1)
    assert before < m1 < m3 < new_id("msg")
    assert s1[0] < s1[1] < step_ids(run_id, run_ts, 3)[0]
    assert message_id(run_id, run_ts, 1) == m1  # the same in every process
    assert len(m1) == len(before)


def test_tenants_are_hashes_of_keys() -> None:
    assert tenant_of("secret-key") == tenant_of("secret-key") != tenant_of("other")
    assert "secret" not in tenant_of("secret-key")
    assert tenant_of(None) == "local"


def test_validation_errors_read_like_openai() -> None:
    assert validation_message([{"type": "missing", "loc": ("body", "model"), "msg": "Field required"}]) == (
        "Missing required parameter: 'model'.", "model")
    msg, param = validation_message([{"type": "extra_forbidden", "loc": ("body", "colour"), "msg": "x"}])
    assert msg == "Unrecognized request argument supplied: colour" and param == "colour"
    msg, param = validation_message([{"type": "string_type", "loc": ("body", "tools", 0, "function", "name"),
                                      "msg": "Input should be a valid string"}])
    assert param == "tools[0].function.name" and "Input should be a valid string" in msg


def test_host_values_are_parsed_strictly() -> None:
    assert [host_of(v) for v in ("LOCALHOST:80", "localhost.", "[::1]:8000", "[0:0::1]", "127.0.0.1:")] == [
        "localhost", "localhost", "::1", "::1", "127.0.0.1"]
    for bad in ("", "::1", "[::1", "[::1]x", "[nope]", "a@b", "h:port", "h:99999", "h:-1", "localhost..", "caf\xe9"):
        assert host_of(bad) is None, bad
    assert is_loopback("127.9.9.9") and is_loopback("::1") and is_loopback("Localhost.")
    assert not is_loopback("localhost.evil.example") and not is_loopback("0.0.0.0")


def test_allowed_hosts_are_names_or_addresses() -> None:
    assert [allowed_host(v) for v in ("API.example.com.", "[::1]", "0:0::1", "*", "10.0.0.7")] == [
        "api.example.com", "::1", "::1", "*", "10.0.0.7"]
    for bad in ("http://x", "x:80", "", "a b", "*.example.com", "x/y"):
        with pytest.raises(ValueError):
            allowed_host(bad)


def test_urls_are_shown_without_secrets() -> None:
    assert redact_url("sqlite:////home/me/tether.db") == "sqlite:////home/me/tether.db"
    assert redact_url("postgresql+psycopg://me:pw@db:5432/t?sslmode=require&password=pw2") == (
        "postgresql+psycopg://me:***@db:5432/t?sslmode=require&password=***")
    assert redact_url("https://token@example.com/v1?api-key=k&x=1") == "https://***@example.com/v1?api-key=***&x=1"
    assert "pw" not in redact_url("http://[::1:pw@x/")
