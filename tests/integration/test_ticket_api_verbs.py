"""The HTTP ticket API, driven the way vdsm's image-ticket client drives it.

vdsm opens one ``http.client.HTTPConnection`` over the unix socket per
request, sends ``Host: localhost``, no Content-Type, a JSON body for PUT and
PATCH, reads the whole reply, and treats any status >= 300 as an error
carrying the body text.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration import rawhttp
from tests.integration.ticketapi import (
    KiB,
    MiB,
    engine_ticket,
    tickets_path,
    vdsm_request,
)

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon


def test_socket_is_a_group_accessible_unix_socket(daemon: Daemon) -> None:
    mode = os.stat(tickets_path(daemon)).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_put_adds_ticket_to_the_shared_registry(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    reply = vdsm_request(daemon, "PUT", ticket["uuid"], ticket)
    # ovirt-imageio's empty 200: vdsm reads nothing of it.
    assert (reply.status, reply.body, reply.headers["Content-Length"]) == (200, b"", "0")
    # The JSON-RPC verbs see the same ticket.
    status = daemon.status(ticket["uuid"])
    assert status["size"] == MiB
    assert status["transfer_id"] == ticket["transfer_id"]
    assert status["ops"] == ["write"]  # as given


def test_put_same_ticket_again_is_a_no_op(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    assert vdsm_request(daemon, "PUT", ticket["uuid"], ticket).status == 200
    before = daemon.status(ticket["uuid"])
    assert vdsm_request(daemon, "PUT", ticket["uuid"], ticket).status == 200
    assert daemon.status(ticket["uuid"])["expires"] == before["expires"]


def test_put_invalid_ticket_is_400_naming_the_field(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    reply = vdsm_request(daemon, "PUT", ticket["uuid"], {**ticket, "ops": ["fly"]})
    assert reply.status == 400
    assert "'ops'" in reply.text
    assert daemon.call("Ticket.status", uuid=ticket["uuid"])["error"]["code"] == 100


def test_put_without_uuid_in_body_takes_the_url_uuid(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    body = {k: v for k, v in ticket.items() if k != "uuid"}
    assert vdsm_request(daemon, "PUT", ticket["uuid"], body).status == 200
    assert daemon.status(ticket["uuid"])["transfer_id"] == ticket["transfer_id"]


def test_put_with_other_uuid_in_body_is_400(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    reply = vdsm_request(daemon, "PUT", str(uuidlib.uuid4()), ticket)
    assert reply.status == 400
    assert "'uuid'" in reply.text


def test_put_malformed_json_is_400(daemon: Daemon) -> None:
    reply = vdsm_request(daemon, "PUT", str(uuidlib.uuid4()), raw=b'{"uuid": ')
    assert reply.status == 400
    assert "JSON" in reply.text


def test_put_huge_body_is_413(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon, filler="x" * 100 * KiB)
    reply = vdsm_request(daemon, "PUT", ticket["uuid"], ticket)
    assert reply.status == 413
    assert daemon.call("Ticket.status", uuid=ticket["uuid"])["error"]["code"] == 100


def test_put_with_other_content_type_is_415(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    con = daemon.tickets()
    with contextlib.closing(con):
        con.request(
            "PUT",
            f"/tickets/{ticket['uuid']}",
            body=json.dumps(ticket).encode(),
            headers={"Content-Type": "text/plain"},
        )
        res = con.getresponse()
        res.read()
    assert res.status == 415


def test_get_returns_status_with_integer_times(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    vdsm_request(daemon, "PUT", ticket["uuid"], ticket)
    reply = vdsm_request(daemon, "GET", ticket["uuid"])
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    status = reply.json()
    # What vdsm hands to the engine, which casts these to Java integers.
    for key in ("uuid", "size", "url", "timeout", "ops", "active", "transferred", "idle_time"):
        assert key in status
    assert isinstance(status["timeout"], int)
    assert isinstance(status["idle_time"], int)
    assert status["url"] == ticket["url"]


def test_get_unknown_ticket_is_404(daemon: Daemon) -> None:
    assert vdsm_request(daemon, "GET", str(uuidlib.uuid4())).status == 404


def test_patch_extends_ticket(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    vdsm_request(daemon, "PUT", ticket["uuid"], ticket)
    reply = vdsm_request(daemon, "PATCH", ticket["uuid"], {"timeout": 900})
    assert (reply.status, reply.body, reply.headers["Content-Length"]) == (200, b"", "0")
    status = vdsm_request(daemon, "GET", ticket["uuid"]).json()
    assert status["timeout"] == 900
    assert_expires_in(status, 900)


def assert_expires_in(status: dict[str, Any], seconds: int) -> None:
    """expires is a second of the monotonic clock, which is the machine's."""
    assert type(status["expires"]) is int
    # A loaded machine may take a few seconds between the daemon's clock
    # and ours; the timeouts are far larger.
    assert 0 <= status["expires"] - int(time.monotonic()) - seconds + 5 <= 10


def test_get_reports_expires_as_ovirt_imageio_does(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon, timeout=1000)
    vdsm_request(daemon, "PUT", ticket["uuid"], ticket)
    status = vdsm_request(daemon, "GET", ticket["uuid"]).json()
    assert_expires_in(status, 1000)
    assert (
        status["expires"] == daemon.result("Host.get_image_ticket", uuid=ticket["uuid"])["expires"]
    )


@pytest.mark.parametrize("timeout", ["300", 1.5, None, True, -1])
def test_patch_with_bad_timeout_is_400(daemon: Daemon, timeout: object) -> None:
    ticket = engine_ticket(daemon)
    vdsm_request(daemon, "PUT", ticket["uuid"], ticket)
    reply = vdsm_request(daemon, "PATCH", ticket["uuid"], {"timeout": timeout})
    assert reply.status == 400
    assert "timeout" in reply.text
    assert daemon.status(ticket["uuid"])["timeout"] == 300


def test_patch_other_field_is_400(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    vdsm_request(daemon, "PUT", ticket["uuid"], ticket)
    reply = vdsm_request(daemon, "PATCH", ticket["uuid"], {"timeout": 10, "size": 1})
    assert reply.status == 400
    assert "size" in reply.text


def test_patch_unknown_ticket_is_404(daemon: Daemon) -> None:
    assert vdsm_request(daemon, "PATCH", str(uuidlib.uuid4()), {"timeout": 10}).status == 404


def test_delete_is_204_and_idempotent(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    vdsm_request(daemon, "PUT", ticket["uuid"], ticket)
    first = vdsm_request(daemon, "DELETE", ticket["uuid"])
    assert first.status == 204
    assert first.body == b""
    assert vdsm_request(daemon, "GET", ticket["uuid"]).status == 404
    assert vdsm_request(daemon, "DELETE", ticket["uuid"]).status == 204


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH"])
def test_no_ticket_id_is_400(daemon: Daemon, method: str) -> None:
    body = (
        {"timeout": 10} if method == "PATCH" else engine_ticket(daemon) if method == "PUT" else None
    )
    reply = vdsm_request(daemon, method, "", body)
    assert reply.status == 400
    assert "ticket id is missing" in reply.text


def test_delete_without_uuid_removes_every_ticket(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    tickets = [engine_ticket(daemon) for _ in range(3)]
    for ticket in tickets[:2]:
        assert vdsm_request(daemon, "PUT", ticket["uuid"], ticket).status == 200
    daemon.result("Ticket.add", ticket=tickets[2])
    sock = daemon.raw_unix()
    try:
        assert rawhttp.still_open(sock, tickets[0]["uuid"])
        reply = vdsm_request(daemon, "DELETE", "")
        assert (reply.status, reply.body) == (204, b"")
        assert rawhttp.closed_by_server(sock)
    finally:
        sock.close()
    assert daemon.result("Ticket.list") == []
    for ticket in tickets:
        assert vdsm_request(daemon, "GET", ticket["uuid"]).status == 404
    assert vdsm_request(daemon, "DELETE", "").status == 204


def test_ticket_added_over_json_rpc_is_served_over_http(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    assert vdsm_request(daemon, "GET", ticket_id).json()["size"] == MiB
    assert vdsm_request(daemon, "DELETE", ticket_id).status == 204
    assert daemon.call("Ticket.status", uuid=ticket_id)["error"]["code"] == 100


def test_full_vdsm_flow_with_an_upload(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    assert vdsm_request(daemon, "PUT", ticket["uuid"], ticket).status == 200
    data = os.urandom(MiB)
    con = daemon.https()
    con.request("PUT", f"/images/{ticket['uuid']}", body=data)
    res = con.getresponse()
    res.read()
    con.close()
    assert res.status == 200
    status = vdsm_request(daemon, "GET", ticket["uuid"]).json()
    assert status["transferred"] == MiB
    assert vdsm_request(daemon, "PATCH", ticket["uuid"], {"timeout": 60}).status == 200
    assert vdsm_request(daemon, "DELETE", ticket["uuid"]).status == 204
    assert Path(ticket["url"].removeprefix("file://")).read_bytes() == data


def test_other_paths_are_404_and_images_are_not_served(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    con = daemon.tickets()
    with contextlib.closing(con):
        con.request("GET", f"/images/{ticket_id}")
        res = con.getresponse()
        res.read()
    assert res.status == 404


def test_tickets_are_not_routed_on_the_data_socket(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    con = daemon.unix()
    con.request("PUT", f"/tickets/{ticket['uuid']}", body=json.dumps(ticket).encode())
    res = con.getresponse()
    res.read()
    con.close()
    assert res.status == 404
    assert daemon.call("Ticket.status", uuid=ticket["uuid"])["error"]["code"] == 100


def test_empty_ticket_socket_disables_the_api(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(control={"ticket_socket": ""})
    assert not os.path.exists(tickets_path(daemon))
    assert "tickets=" not in daemon.log()
