"""vdsm's Host.*_image_ticket verbs over a real Registry, without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.engine_driver import engine_ticket
from tests.support.clock import FakeClock
from vdsm_imageio.tickets import Registry
from verbs.host import host_methods
from verbs.protocol import respond
from verbs.ticket import ticket_methods

URL = "file:///var/tmp/disk.raw"
# What the engine reads from Host.get_image_ticket.
ENGINE_READS = ("uuid", "size", "url", "timeout", "ops", "active", "transferred", "idle_time")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock=clock, remove_timeout=0.1, default_inactivity_timeout=60)


@pytest.fixture
def methods(registry: Registry) -> dict[str, Any]:
    return {**ticket_methods(registry), **host_methods(registry)}


def call(methods: dict[str, Any], method: str, **params: Any) -> Any:
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    text = respond(line.encode(), methods, context=None)
    assert text is not None
    return json.loads(text)


def result(methods: dict[str, Any], method: str, **params: Any) -> Any:
    reply = call(methods, method, **params)
    assert "error" not in reply, reply
    return reply["result"]


def error(methods: dict[str, Any], method: str, **params: Any) -> Any:
    reply = call(methods, method, **params)
    assert "result" not in reply, reply
    return reply["error"]


def test_add_returns_true_and_get_returns_status(methods: dict[str, Any]) -> None:
    ticket = engine_ticket(URL)
    assert result(methods, "Host.add_image_ticket", ticket=ticket) is True
    status = result(methods, "Host.get_image_ticket", uuid=ticket["uuid"])
    for key in ENGINE_READS:
        assert key in status, key
    assert status["uuid"] == ticket["uuid"]
    assert status["size"] == 1073741824
    assert status["url"] == URL
    assert status["timeout"] == 300
    assert status["inactivity_timeout"] == 60
    assert status["ops"] == ["read", "write"]
    assert status["active"] is False
    assert status["transferred"] == 0
    assert status["sparse"] is True
    assert status["dirty"] is False
    assert status == result(methods, "Ticket.status", uuid=ticket["uuid"])


def test_add_same_ticket_again_is_true(methods: dict[str, Any], registry: Registry) -> None:
    ticket = engine_ticket(URL)
    assert result(methods, "Host.add_image_ticket", ticket=ticket) is True
    assert result(methods, "Host.add_image_ticket", ticket=ticket) is True
    assert len(registry.list()) == 1


def test_add_with_other_content_is_conflict(methods: dict[str, Any]) -> None:
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    err = error(methods, "Host.add_image_ticket", ticket={**ticket, "size": 4096})
    assert err["code"] == 101


def test_add_invalid_ticket_names_the_field(methods: dict[str, Any]) -> None:
    err = error(methods, "Host.add_image_ticket", ticket=engine_ticket(URL, size="big"))
    assert err["code"] == -32602
    assert err["data"]["field"] == "size"


def test_extend_returns_true_and_sets_timeout(methods: dict[str, Any]) -> None:
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    assert result(methods, "Host.extend_image_ticket", uuid=ticket["uuid"], timeout=600) is True
    assert result(methods, "Host.get_image_ticket", uuid=ticket["uuid"])["timeout"] == 600


def test_extend_revives_expired_ticket(
    methods: dict[str, Any], registry: Registry, clock: FakeClock
) -> None:
    ticket = engine_ticket(URL, timeout=10)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    clock.now += 60
    assert registry.get(ticket["uuid"]).expired()
    assert result(methods, "Host.extend_image_ticket", uuid=ticket["uuid"], timeout=10) is True
    assert not registry.get(ticket["uuid"]).expired()


def test_extend_keeps_idle_time(methods: dict[str, Any], clock: FakeClock) -> None:
    # The engine renews the ticket while a client is away; the pause must
    # still show as idle_time > inactivity_timeout.
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    clock.now += 40
    result(methods, "Host.extend_image_ticket", uuid=ticket["uuid"], timeout=300)
    clock.now += 30
    status = result(methods, "Host.get_image_ticket", uuid=ticket["uuid"])
    assert status["idle_time"] == 70
    assert status["expires_in"] == 270


@pytest.mark.parametrize("timeout", ["300", 1.5, -1, True, None])
def test_extend_with_bad_timeout_is_invalid_params(
    methods: dict[str, Any], timeout: object
) -> None:
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    err = error(methods, "Host.extend_image_ticket", uuid=ticket["uuid"], timeout=timeout)
    assert err["code"] == -32602
    assert err["data"]["field"] == "timeout"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("Host.get_image_ticket", {"uuid": "nope"}),
        ("Host.extend_image_ticket", {"uuid": "nope", "timeout": 30}),
    ],
)
def test_unknown_ticket_is_not_found(
    methods: dict[str, Any], method: str, params: dict[str, Any]
) -> None:
    assert error(methods, method, **params)["code"] == 100


def test_remove_returns_true_also_for_unknown(methods: dict[str, Any], registry: Registry) -> None:
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    assert result(methods, "Host.remove_image_ticket", uuid=ticket["uuid"]) is True
    assert registry.list() == []
    assert result(methods, "Host.remove_image_ticket", uuid=ticket["uuid"]) is True


def test_remove_with_running_request_is_busy(methods: dict[str, Any], registry: Registry) -> None:
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    with registry.get(ticket["uuid"]).operation(0, 10):
        err = error(methods, "Host.remove_image_ticket", uuid=ticket["uuid"])
    assert err["code"] == 102
    # The engine retries; now the request has ended.
    assert result(methods, "Host.remove_image_ticket", uuid=ticket["uuid"]) is True


@pytest.mark.parametrize("method", ["Host.get_image_ticket", "Host.remove_image_ticket"])
def test_missing_uuid_is_invalid_params(methods: dict[str, Any], method: str) -> None:
    err = error(methods, method)
    assert err["code"] == -32602
    assert err["data"]["field"] == "uuid"


def test_timeout_and_idle_time_are_integers_in_every_state(
    methods: dict[str, Any],
    registry: Registry,
    clock: FakeClock,
) -> None:
    ticket = engine_ticket(URL, timeout=10)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    uuid = ticket["uuid"]
    ticket_obj = registry.get(uuid)
    states = {}
    clock.now += 0.7
    states["new"] = result(methods, "Host.get_image_ticket", uuid=uuid)
    with ticket_obj.operation(0, 100) as op:
        ticket_obj.progress(op, 50)
        clock.now += 0.3
        states["active"] = result(methods, "Host.get_image_ticket", uuid=uuid)
    clock.now += 2.5
    states["idle"] = result(methods, "Host.get_image_ticket", uuid=uuid)
    clock.now += 20.25
    states["expired"] = result(methods, "Host.get_image_ticket", uuid=uuid)
    assert states["active"]["active"] is True
    assert states["idle"]["idle_time"] == 2
    assert states["expired"]["expires_in"] < 0
    for name, status in states.items():
        for key in ("timeout", "idle_time", "expires_in", "inactivity_timeout"):
            assert type(status[key]) is int, (name, key, status[key])
