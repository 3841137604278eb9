"""Where a ticket may point ([storage] url_roots), through the real daemon.

Under ``--local DIR`` tickets are confined to DIR. Refusals are -32602
naming ``url`` on JSON-RPC and 400 naming ``url`` on the HTTP ticket API.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

KiB = 1024


def ticket_for(url: str, ops: tuple[str, ...] = ("read",), size: int = 4 * KiB) -> dict[str, Any]:
    return {
        "uuid": str(uuidlib.uuid4()),
        "size": size,
        "ops": list(ops),
        "timeout": 300,
        "url": url,
        "transfer_id": f"roots-{uuidlib.uuid4().hex[:8]}",
    }


def refused_on_jsonrpc(daemon: Daemon, url: str) -> dict[str, Any]:
    ticket = ticket_for(url)
    reply = daemon.call("Ticket.add", ticket=ticket)
    assert "error" in reply, reply
    error: dict[str, Any] = reply["error"]
    assert error["code"] == -32602, error
    assert error["data"]["field"] == "url", error
    assert ticket["uuid"] not in [t["uuid"] for t in daemon.result("Ticket.list")]
    return error


def put_ticket(daemon: Daemon, ticket: dict[str, Any]) -> tuple[int, str]:
    con = daemon.tickets()
    with contextlib.closing(con):
        con.request("PUT", f"/tickets/{ticket['uuid']}", body=json.dumps(ticket).encode())
        res = con.getresponse()
        return res.status, res.read().decode()


def get(daemon: Daemon, ticket_id: str) -> tuple[int, bytes]:
    conn = daemon.unix()
    try:
        conn.request("GET", f"/images/{ticket_id}")
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def test_etc_shadow_is_refused(daemon: Daemon) -> None:
    error = refused_on_jsonrpc(daemon, "file:///etc/shadow")
    assert "url_roots" in error["data"]["reason"]


def test_etc_shadow_is_400_naming_url_on_the_ticket_api(daemon: Daemon) -> None:
    status, text = put_ticket(daemon, ticket_for("file:///etc/shadow"))
    assert status == 400, text
    assert "'url'" in text and "url_roots" in text


def test_symlink_out_of_the_directory_is_refused(daemon: Daemon) -> None:
    link = daemon.images / f"link-{uuidlib.uuid4().hex[:8]}"
    link.symlink_to("/etc/passwd")
    refused_on_jsonrpc(daemon, link.as_uri())


@pytest.mark.parametrize(
    "tail",
    [
        "images/../../../../../../etc/passwd",
        "images/%2e%2e/%2e%2e/%2E%2E/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "images/./../..//../../../../../etc/passwd",
    ],
)
def test_dot_dot_out_of_the_directory_is_refused(daemon: Daemon, tail: str) -> None:
    refused_on_jsonrpc(daemon, f"file://{daemon.dir}/{tail}")


def test_nbd_socket_outside_the_directory_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "nbd.sock"))
        server.listen()
        refused_on_jsonrpc(daemon, f"nbd:unix:{tmp_path}/nbd.sock")


def test_file_in_the_directory_is_accepted_and_served(daemon: Daemon) -> None:
    data = os.urandom(4 * KiB)
    ticket_id, _ = daemon.add_ticket(size=len(data), data=data, ops=("read",))
    assert get(daemon, ticket_id) == (200, data)
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_symlink_swapped_after_the_add_is_not_followed(daemon: Daemon) -> None:
    data = os.urandom(4 * KiB)
    ticket_id, image = daemon.add_ticket(size=len(data), data=data, ops=("read",))
    link = daemon.images / f"alias-{uuidlib.uuid4().hex[:8]}"
    link.symlink_to(image)
    ticket = ticket_for(link.as_uri())
    status = daemon.result("Ticket.add", ticket=ticket)
    assert status["url"] == link.as_uri()  # the status shows the url as given
    link.unlink()
    link.symlink_to("/etc/passwd")
    # Served through the path resolved at add time.
    assert get(daemon, ticket["uuid"]) == (200, data)
    daemon.result("Ticket.remove", uuid=ticket["uuid"])
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_directory_swapped_for_a_link_after_the_add_is_403(daemon: Daemon, tmp_path: Path) -> None:
    sub = daemon.images / f"sub-{uuidlib.uuid4().hex[:8]}"
    sub.mkdir()
    (sub / "disk.raw").write_bytes(b"m" * 4 * KiB)
    ticket = ticket_for((sub / "disk.raw").as_uri())
    daemon.result("Ticket.add", ticket=ticket)
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "disk.raw").write_bytes(b"e" * 4 * KiB)
    sub.rename(sub.with_name(sub.name + ".old"))
    sub.symlink_to(tmp_path / "evil")
    status, body = get(daemon, ticket["uuid"])
    assert status == 403, body
    assert b"e" * KiB not in body
    assert "REFUSED open" in daemon.log()
    daemon.result("Ticket.remove", uuid=ticket["uuid"])
