"""Hostile and careless input on the JSON-RPC control channel.

Each case is one line (or a few bytes) sent on a fresh control connection
of a real daemon. It asserts the reply (the error code of one reply, the
codes of a batch reply, or no reply at all), that the connection still
answers in order, and that the daemon is unharmed: alive, no traceback,
no ticket added or changed, no image touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.hostile.control_cases_tickets import EXTEND, TICKET_FIELDS
from tests.integration.hostile.control_cases_wire import PARAMS, WIRE
from tests.integration.hostile.control_requests import (
    INVALID_REQUEST,
    MAX_LINE,
    OK,
    PARSE,
    Case,
)
from tests.integration.hostile.control_support import (
    LineClient,
    World,
    assert_daemon_healthy,
    log_mark,
    make_world,
)

if TYPE_CHECKING:
    from tests.support.daemon import Daemon


CASES = WIRE + PARAMS + EXTEND + TICKET_FIELDS


@pytest.fixture(scope="module")
def world(daemon: Daemon) -> World:
    return make_world(daemon)


@pytest.fixture
def client(world: World) -> Iterator[LineClient]:
    c = LineClient(world.daemon.control_path)
    yield c
    c.close()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 100
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_control_request(case: Case, world: World, client: LineClient) -> None:
    before = world.snapshot()
    mark = log_mark(world.daemon)
    client.send(case.data(world))
    if case.expect is not None:
        reply = client.recv()
        assert reply is not None, "the daemon closed the connection"
        check_reply(case, reply)
    # The next reply answers the probe: a refused line left nothing behind.
    assert client.probe(), "the connection no longer answers"
    assert world.snapshot() == before
    assert_daemon_healthy(world.daemon, since=mark)


def check_reply(case: Case, reply: Any) -> None:
    if isinstance(case.expect, list):
        assert isinstance(reply, list), reply
        assert [outcome(r) for r in reply] == case.expect
        return
    assert isinstance(reply, dict), reply
    assert outcome(reply) == case.expect, reply
    if case.expect in (PARSE, INVALID_REQUEST):
        assert reply["id"] is None
    if case.field is not None:
        assert reply["error"]["data"]["field"] == case.field, reply
    if case.mentions is not None:
        assert case.mentions in reply["error"]["message"], reply
        assert "data" not in reply["error"], reply
    if "error" in reply:
        # Short enough for a log line, whatever the request held.
        assert len(json.dumps(reply)) < 1000, reply


def outcome(reply: dict[str, Any]) -> int:
    assert reply.get("jsonrpc") == "2.0", reply
    if "result" in reply:
        return OK
    code = reply["error"]["code"]
    assert isinstance(code, int)
    return code


def test_other_connections_are_served_while_one_sends_a_huge_line(world: World) -> None:
    mark = log_mark(world.daemon)
    hostile = LineClient(world.daemon.control_path)
    calm = LineClient(world.daemon.control_path)
    try:
        hostile.send(b"[" * (MAX_LINE // 2))  # half a line, no newline yet
        assert calm.probe()
        hostile.send(b"[" * MAX_LINE)
        assert hostile.recv()["error"]["code"] == INVALID_REQUEST
        assert calm.probe()
        hostile.send(b"]\n")
        assert hostile.probe()
    finally:
        hostile.close()
        calm.close()
    assert_daemon_healthy(world.daemon, since=mark)
