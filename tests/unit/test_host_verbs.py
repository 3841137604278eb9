"""vdsm's Host.*_image_ticket verbs over a real Registry, without sockets.

Their errors are what vdsm sends when ovirt-imageio's HTTP ticket API
refuses: ImageDaemonError (482) with the reply's status, reason and body.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.engine_driver import engine_ticket
from tests.support.clock import FakeClock
from vdsm_imageio.errors import (
    HookFailed,
    LeaseBusy,
    LockspaceUnavailable,
    VolumeError,
    VolumeNotFound,
)
from vdsm_imageio.registry import Guard, Registry
from vdsm_imageio.tickets import Ticket
from vdsm_imageio.ticketspec import TicketSpec
from verbs.host import host_methods
from verbs.protocol import respond
from verbs.ticket import ticket_methods

URL = "file:///var/tmp/disk.raw"
IMAGE_DAEMON_ERROR = 482
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


def daemon_error(status: int, reason: str, body: str) -> dict[str, Any]:
    """What vdsm sends for an image daemon reply (GeneralException's form)."""
    value = f"status={status}, reason={reason}, error={body}"
    return {"code": IMAGE_DAEMON_ERROR, "message": f"Image daemon request failed: {value!r}"}


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
    assert status["ops"] == ["write"]  # as given, like ovirt-imageio
    assert status["expires"] == 1300
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


def test_add_with_other_content_replaces_the_ticket(
    methods: dict[str, Any], registry: Registry
) -> None:
    # vdsm PUTs the ticket to the daemon, which replaces it.
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    old = registry.get(ticket["uuid"])
    assert result(methods, "Host.add_image_ticket", ticket={**ticket, "size": 4096}) is True
    assert result(methods, "Host.get_image_ticket", uuid=ticket["uuid"])["size"] == 4096
    assert old.canceled and registry.get(ticket["uuid"]) is not old
    # Ticket.add keeps refusing other content.
    assert error(methods, "Ticket.add", ticket={**ticket, "size": 1})["code"] == 101


def test_add_of_a_ticket_being_removed_is_409(methods: dict[str, Any], registry: Registry) -> None:
    ticket = engine_ticket(URL, transfer_id="upload-7")
    result(methods, "Host.add_image_ticket", ticket=ticket)
    with registry.get(ticket["uuid"]).operation(0, 10):
        error(methods, "Host.remove_image_ticket", uuid=ticket["uuid"])
        err = error(methods, "Host.add_image_ticket", ticket={**ticket, "size": 4096})
    assert err == daemon_error(
        409,
        "Conflict",
        "Ticket of transfer upload-7 is being removed; add it again once the removal is done\n",
    )
    assert ticket["uuid"] not in err["message"]


def test_add_invalid_ticket_is_400_naming_the_field(methods: dict[str, Any]) -> None:
    err = error(methods, "Host.add_image_ticket", ticket=engine_ticket(URL, size="big"))
    assert err == daemon_error(
        400, "Bad Request", "Invalid ticket field 'size': must be an integer, got 'big'\n"
    )
    # The engine reads code and message; vdsm sends no data.
    assert "data" not in err


@pytest.mark.parametrize("ticket", [None, 5, "ticket", ["uuid"]])
def test_add_of_a_non_object_is_400(methods: dict[str, Any], ticket: object) -> None:
    err = error(methods, "Host.add_image_ticket", ticket=ticket)
    assert err == daemon_error(
        400, "Bad Request", "Invalid ticket field 'ticket': must be a JSON object\n"
    )


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
def test_extend_with_bad_timeout_is_400(methods: dict[str, Any], timeout: object) -> None:
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    err = error(methods, "Host.extend_image_ticket", uuid=ticket["uuid"], timeout=timeout)
    assert err["code"] == IMAGE_DAEMON_ERROR
    assert err["message"].startswith(
        "Image daemon request failed: "
        "\"status=400, reason=Bad Request, error=Invalid ticket field 'timeout'"
    )


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("Host.get_image_ticket", {"uuid": "nope"}),
        ("Host.extend_image_ticket", {"uuid": "nope", "timeout": 30}),
    ],
)
def test_unknown_ticket_is_404(
    methods: dict[str, Any], method: str, params: dict[str, Any]
) -> None:
    assert error(methods, method, **params) == daemon_error(
        404, "Not Found", "No such ticket: nope\n"
    )


def test_remove_returns_true_also_for_unknown(methods: dict[str, Any], registry: Registry) -> None:
    ticket = engine_ticket(URL)
    result(methods, "Host.add_image_ticket", ticket=ticket)
    assert result(methods, "Host.remove_image_ticket", uuid=ticket["uuid"]) is True
    assert registry.list() == []
    assert result(methods, "Host.remove_image_ticket", uuid=ticket["uuid"]) is True


def test_remove_with_running_request_is_409_busy(
    methods: dict[str, Any], registry: Registry
) -> None:
    ticket = engine_ticket(URL, transfer_id="upload-7")
    result(methods, "Host.add_image_ticket", ticket=ticket)
    with registry.get(ticket["uuid"]).operation(0, 10):
        err = error(methods, "Host.remove_image_ticket", uuid=ticket["uuid"])
    assert err == daemon_error(
        409,
        "Conflict",
        "Ticket of transfer upload-7 still has 1 running requests after 0.1 seconds; "
        "retry the removal\n",
    )
    # The engine retries; now the request has ended.
    assert result(methods, "Host.remove_image_ticket", uuid=ticket["uuid"]) is True


def vetoing(action: str) -> Guard:
    def guard(event: str, ticket: Ticket) -> None:
        if event == action:
            raise HookFailed(
                hook="50-deny",
                event=f"before_ticket_{action}",
                outcome="exit code 1",
                status=1,
                stderr="not now",
            )

    return guard


@pytest.mark.parametrize("action", ["add", "remove"])
def test_hook_veto_is_403(clock: FakeClock, action: str) -> None:
    registry = Registry(
        clock=clock, remove_timeout=0.1, default_inactivity_timeout=60, guard=vetoing(action)
    )
    methods = host_methods(registry)
    ticket = engine_ticket(URL)
    if action == "remove":
        registry.add(ticket)
        err = error(methods, "Host.remove_image_ticket", uuid=ticket["uuid"])
    else:
        err = error(methods, "Host.add_image_ticket", ticket=ticket)
    assert err == daemon_error(
        403, "Forbidden", f"Hook '50-deny' vetoed before_ticket_{action}: exit code 1\n"
    )


@pytest.mark.parametrize(
    ("failure", "status", "reason"),
    [
        (VolumeNotFound(sd_id="sd", img_id="img", vol_id="vol"), 400, "Bad Request"),
        (LeaseBusy(sd_id="sd", vol_id="vol"), 409, "Conflict"),
        (LockspaceUnavailable(sd_id="sd", reason="not joined"), 503, "Service Unavailable"),
        (
            VolumeError(action="prepare", sd_id="sd", vol_id="vol", reason="lvchange: busy"),
            500,
            "Internal Server Error",
        ),
    ],
)
def test_storage_failure_has_the_status_of_the_ticket_api(
    clock: FakeClock, failure: Exception, status: int, reason: str
) -> None:
    def prepare(spec: TicketSpec) -> str:
        raise failure

    registry = Registry(
        clock=clock, remove_timeout=0.1, default_inactivity_timeout=60, resolve_url=prepare
    )
    err = error(host_methods(registry), "Host.add_image_ticket", ticket=engine_ticket(URL))
    assert err == daemon_error(status, reason, str(failure) + "\n")


def test_unexpected_failure_is_500_see_the_log(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def prepare(spec: TicketSpec) -> str:
        raise KeyError("internal detail")

    registry = Registry(
        clock=clock, remove_timeout=0.1, default_inactivity_timeout=60, resolve_url=prepare
    )
    with caplog.at_level(logging.ERROR, logger="verbs.errors"):
        err = error(host_methods(registry), "Host.add_image_ticket", ticket=engine_ticket(URL))
    assert err == daemon_error(500, "Internal Server Error", "Internal server error, see the log\n")
    assert "internal detail" not in err["message"]
    (record,) = caplog.records
    assert record.exc_info is not None


@pytest.mark.parametrize("method", ["Host.get_image_ticket", "Host.remove_image_ticket"])
def test_missing_uuid_is_invalid_params(methods: dict[str, Any], method: str) -> None:
    # vdsm's bridge refuses params that do not bind before asking the daemon.
    err = error(methods, method)
    assert err["code"] == -32602
    assert err["data"]["field"] == "uuid"


@pytest.mark.parametrize("uuid", [5, "", None, ["u"]])
def test_uuid_that_is_not_text_is_400(methods: dict[str, Any], uuid: object) -> None:
    err = error(methods, "Host.get_image_ticket", uuid=uuid)
    assert err["code"] == IMAGE_DAEMON_ERROR
    assert "status=400, reason=Bad Request, error=Invalid parameter 'uuid'" in err["message"]


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
