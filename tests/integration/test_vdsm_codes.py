"""The Host verbs answer what vdsm answers, through a real daemon.

vdsm implements ``Host.*_image_ticket`` with the HTTP ticket API and turns
a reply of status 300 or more into ImageDaemonError (482), whose message
is ``Image daemon request failed: `` and the repr of
``status={status}, reason={reason}, error={body}``. For each failure, the
same request goes to this daemon's HTTP ticket API (as vdsm would send it)
and to its Host verb on the control socket: the verb's error must be what
vdsm would have built from that reply.
"""

from __future__ import annotations

import contextlib
import json
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.test_volumes import make_volume, volume_ticket

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

MiB = 1024**2


def vdsm_error_of_http(daemon: Daemon, method: str, uuid: str, body: Any = None) -> dict[str, Any]:
    """What vdsm's client makes of the ticket API's reply to this request."""
    con = daemon.tickets()
    with contextlib.closing(con):
        data = None if body is None else json.dumps(body).encode("utf8")
        con.request(method, f"/tickets/{uuid}", body=data)
        res = con.getresponse()
        content = res.read()
    assert res.status >= 300, (res.status, content)
    value = f"status={res.status}, reason={res.reason}, error={content.decode('utf8')}"
    return {"code": 482, "message": f"Image daemon request failed: {value!r}"}


def host_error(daemon: Daemon, method: str, **params: Any) -> dict[str, Any]:
    reply = daemon.call(method, **params)
    assert "error" in reply, reply
    return dict(reply["error"])


def new_ticket(daemon: Daemon, **change: Any) -> dict[str, Any]:
    path = daemon.images / f"disk-{uuidlib.uuid4()}.raw"
    path.write_bytes(b"")
    ticket = {
        "uuid": str(uuidlib.uuid4()),
        "size": MiB,
        "ops": ["write"],
        "timeout": 300,
        "url": path.as_uri(),
        "transfer_id": f"codes-{uuidlib.uuid4().hex[:8]}",
    }
    ticket.update(change)
    return ticket


def test_unknown_ticket(daemon: Daemon) -> None:
    uuid = str(uuidlib.uuid4())
    expected = vdsm_error_of_http(daemon, "GET", uuid)
    assert "status=404, reason=Not Found" in expected["message"]
    assert host_error(daemon, "Host.get_image_ticket", uuid=uuid) == expected
    assert vdsm_error_of_http(daemon, "PATCH", uuid, {"timeout": 30}) == expected
    assert host_error(daemon, "Host.extend_image_ticket", uuid=uuid, timeout=30) == expected


@pytest.mark.parametrize(
    "change",
    [
        {"size": "big"},
        {"ops": ["fly"]},
        {"url": "file:///etc/passwd"},  # outside url_roots
        {"url": "gopher://host/x"},
        {"filename": "a\nb"},
    ],
    ids=["size", "ops", "url-roots", "url-scheme", "filename"],
)
def test_invalid_ticket_field(daemon: Daemon, change: dict[str, Any]) -> None:
    ticket = new_ticket(daemon, **change)
    expected = vdsm_error_of_http(daemon, "PUT", ticket["uuid"], ticket)
    assert "status=400, reason=Bad Request" in expected["message"]
    assert host_error(daemon, "Host.add_image_ticket", ticket=ticket) == expected


@pytest.mark.parametrize("timeout", [-1, "300", 1.5, None, 2**31])
def test_invalid_timeout(daemon: Daemon, timeout: object) -> None:
    ticket = new_ticket(daemon)
    daemon.result("Host.add_image_ticket", ticket=ticket)
    expected = vdsm_error_of_http(daemon, "PATCH", ticket["uuid"], {"timeout": timeout})
    assert "status=400, reason=Bad Request" in expected["message"]
    assert "'timeout'" in expected["message"]
    got = host_error(daemon, "Host.extend_image_ticket", uuid=ticket["uuid"], timeout=timeout)
    assert got == expected


def test_missing_volume(daemon: Daemon) -> None:
    vol = make_volume(daemon)
    vol["vol_id"] = str(uuidlib.uuid4())  # no such volume in the image
    ticket = volume_ticket(vol, ["write"])
    expected = vdsm_error_of_http(daemon, "PUT", ticket["uuid"], ticket)
    assert "status=400, reason=Bad Request" in expected["message"]
    assert host_error(daemon, "Host.add_image_ticket", ticket=ticket) == expected


def test_replace_through_the_host_verb(daemon: Daemon) -> None:
    ticket = new_ticket(daemon)
    assert daemon.result("Host.add_image_ticket", ticket=ticket) is True
    other = {**ticket, "size": MiB // 2, "transfer_id": "codes-other"}
    assert daemon.result("Host.add_image_ticket", ticket=other) is True
    status = daemon.result("Host.get_image_ticket", uuid=ticket["uuid"])
    assert (status["size"], status["transfer_id"]) == (MiB // 2, "codes-other")
    assert daemon.call("Ticket.add", ticket=ticket)["error"]["code"] == 101
    assert daemon.result("Host.remove_image_ticket", uuid=ticket["uuid"]) is True


def test_unknown_param_names_stay_invalid_params(daemon: Daemon) -> None:
    error = host_error(daemon, "Host.get_image_ticket", id="x")
    assert error["code"] == -32602
    assert error["data"]["field"] == "id"
