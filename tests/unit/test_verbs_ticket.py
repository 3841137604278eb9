"""Ticket and Service verbs over a real Registry, dispatched without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.tickets import valid_ticket
from vdsm_imageio.registry import Registry
from verbs.protocol import respond
from verbs.service import ServiceInfo, service_methods
from verbs.ticket import ticket_methods


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock=clock, remove_timeout=0.1, default_inactivity_timeout=60)


def ticket(**kw: Any) -> dict[str, Any]:
    return valid_ticket(
        **{"uuid": "secret-1", "url": "file:///var/tmp/disk.raw", "transfer_id": "tx-1", **kw}
    )


def call(methods: dict[str, Any], method: str, **params: Any) -> Any:
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    text = respond(line.encode(), methods, context=None)
    assert text is not None
    return json.loads(text)


def test_add_returns_status(registry: Registry) -> None:
    r = call(ticket_methods(registry), "Ticket.add", ticket=ticket())
    assert r["result"]["uuid"] == "secret-1"
    assert r["result"]["transfer_id"] == "tx-1"
    assert r["result"]["expires_in"] == 300


def test_add_same_ticket_twice_is_noop(registry: Registry) -> None:
    methods = ticket_methods(registry)
    call(methods, "Ticket.add", ticket=ticket())
    assert "result" in call(methods, "Ticket.add", ticket=ticket())
    assert len(registry.list()) == 1


def test_add_conflicting_ticket_is_101(registry: Registry) -> None:
    methods = ticket_methods(registry)
    call(methods, "Ticket.add", ticket=ticket())
    error = call(methods, "Ticket.add", ticket=ticket(size=2048))["error"]
    assert error["code"] == 101
    assert error["data"]["field"] == "size"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", None),
        ("size", -1),
        ("size", True),
        ("ops", ["exec"]),
        ("timeout", "1"),
    ],
)
def test_add_invalid_field_is_32602_naming_it(
    registry: Registry,
    field: str,
    value: Any,
) -> None:
    t = ticket(**{field: value})
    if value is None:
        del t[field]
    error = call(ticket_methods(registry), "Ticket.add", ticket=t)["error"]
    assert error["code"] == -32602
    assert error["data"]["field"] == field


def test_add_non_object_ticket_is_32602(registry: Registry) -> None:
    error = call(ticket_methods(registry), "Ticket.add", ticket=[1])["error"]
    assert error["code"] == -32602
    assert error["data"]["field"] == "ticket"


@pytest.mark.parametrize("timeout", [True, -1, 1.5, "300", None])
def test_extend_rejects_bad_timeout(registry: Registry, timeout: Any) -> None:
    methods = ticket_methods(registry)
    call(methods, "Ticket.add", ticket=ticket())
    error = call(methods, "Ticket.extend", uuid="secret-1", timeout=timeout)["error"]
    assert error["code"] == -32602
    assert error["data"]["field"] == "timeout"


def test_extend_zero_expires_now(registry: Registry) -> None:
    methods = ticket_methods(registry)
    call(methods, "Ticket.add", ticket=ticket())
    r = call(methods, "Ticket.extend", uuid="secret-1", timeout=0)
    assert r["result"]["timeout"] == 0
    assert r["result"]["expires_in"] == 0


def test_extend_restarts_expiry(registry: Registry, clock: FakeClock) -> None:
    methods = ticket_methods(registry)
    call(methods, "Ticket.add", ticket=ticket())
    clock.now += 250
    r = call(methods, "Ticket.extend", uuid="secret-1", timeout=100)
    assert r["result"]["expires_in"] == 100


def test_extend_unknown_is_100(registry: Registry) -> None:
    error = call(ticket_methods(registry), "Ticket.extend", uuid="nope", timeout=1)
    assert error["error"]["code"] == 100


@pytest.mark.parametrize("uuid", [1, "", None, ["a"]])
def test_uuid_must_be_non_empty_string(registry: Registry, uuid: Any) -> None:
    error = call(ticket_methods(registry), "Ticket.status", uuid=uuid)["error"]
    assert error["code"] == -32602
    assert error["data"]["field"] == "uuid"


def test_remove_unknown_is_true(registry: Registry) -> None:
    reply = call(ticket_methods(registry), "Ticket.remove", uuid="nope")
    assert reply["result"] is True


def test_list_returns_every_status(registry: Registry) -> None:
    methods = ticket_methods(registry)
    call(methods, "Ticket.add", ticket=ticket())
    call(methods, "Ticket.add", ticket=ticket(uuid="secret-2", transfer_id="tx-2"))
    result = call(methods, "Ticket.list")["result"]
    assert sorted(s["transfer_id"] for s in result) == ["tx-1", "tx-2"]


INFO = ServiceInfo(
    version="0.1.0",
    features=["extents", "zero"],
    data_url="https://127.0.0.1:54322/images/",
    unix_socket="\0/org/ovirt/imageio",
    uptime=12,
    tickets=3,
    connections=1,
)


def test_service_info_from_dataclass() -> None:
    result = call(service_methods(lambda: INFO), "Service.info")["result"]
    assert result == {
        "version": "0.1.0",
        "features": ["extents", "zero"],
        "data_url": "https://127.0.0.1:54322/images/",
        "unix_socket": "\0/org/ovirt/imageio",
        "uptime": 12,
        "tickets": 3,
        "connections": 1,
    }


def test_service_info_reads_provider_at_call_time() -> None:
    counts = iter([1, 2])

    def info() -> dict[str, Any]:
        return {**INFO.to_json(), "tickets": next(counts)}

    methods = service_methods(info)
    assert call(methods, "Service.info")["result"]["tickets"] == 1
    assert call(methods, "Service.info")["result"]["tickets"] == 2


def test_service_info_with_incomplete_provider_is_internal_error() -> None:
    error = call(service_methods(lambda: {"version": "1"}), "Service.info")["error"]
    assert error["code"] == -32603
