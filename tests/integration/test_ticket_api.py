"""The HTTP ticket API, driven the way vdsm's image-ticket client drives it.

vdsm opens one ``http.client.HTTPConnection`` over the unix socket per
request, sends ``Host: localhost``, no Content-Type, a JSON body for PUT and
PATCH, reads the whole reply, and treats any status >= 300 as an error
carrying the body text.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import stat
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration import rawhttp
from tests.integration.test_volumes import link_of, make_volume, volume_ticket
from tests.support.loopfs import ext4_on_loop, run

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

KiB = 1024
MiB = 1024**2


class Reply:
    def __init__(self, res: http.client.HTTPResponse, body: bytes) -> None:
        self.status = res.status
        self.reason = res.reason
        self.headers = res.headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def vdsm_request(
    daemon: Daemon, method: str, ticket_id: str, body: Any = None, raw: bytes | None = None
) -> Reply:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode("utf8"))
    con = daemon.tickets()
    with contextlib.closing(con):
        con.request(method, f"/tickets/{ticket_id}", body=data)
        res = con.getresponse()
        return Reply(res, res.read())


def tickets_path(daemon: Daemon) -> str:
    return str(daemon.dir / "tickets.sock")


def engine_ticket(daemon: Daemon, size: int = MiB, **extra: Any) -> dict[str, Any]:
    """The ticket the engine sends through vdsm, for a new image file."""
    ticket_id = str(uuidlib.uuid4())
    # Not named after the uuid: tests look for the secret in the log.
    path = daemon.images / f"disk-{uuidlib.uuid4()}.raw"
    path.write_bytes(b"")
    os.truncate(path, size)
    ticket = {
        "uuid": ticket_id,
        "timeout": 300,
        "inactivity_timeout": 60,
        "size": size,
        "url": path.as_uri(),
        "ops": ["write"],
        "sparse": True,
        "transfer_id": str(uuidlib.uuid4()),
        "dirty": False,
    }
    ticket.update(extra)
    return ticket


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


def test_put_with_other_content_replaces_the_ticket(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon)
    assert vdsm_request(daemon, "PUT", ticket["uuid"], ticket).status == 200
    upload(daemon, ticket["uuid"], b"a" * MiB)
    other = engine_ticket(daemon, size=2 * MiB, ops=["read"], transfer_id="replaced")
    other["uuid"] = ticket["uuid"]
    reply = vdsm_request(daemon, "PUT", ticket["uuid"], other)
    assert (reply.status, reply.body) == (200, b"")
    status = vdsm_request(daemon, "GET", ticket["uuid"]).json()
    assert (status["size"], status["ops"], status["transfer_id"]) == (2 * MiB, ["read"], "replaced")
    assert status["url"] == other["url"]
    assert status["transferred"] == 0
    assert status["canceled"] is False
    # The new content decides: a read ticket now, on the other image.
    assert upload_status(daemon, ticket["uuid"], b"b" * MiB) == 403
    assert download(daemon, ticket["uuid"], 0, MiB) == b"\0" * MiB
    # JSON-RPC Ticket.add keeps refusing other content.
    assert daemon.call("Ticket.add", ticket=ticket)["error"]["code"] == 101
    assert ticket["uuid"] not in daemon.log()


def test_replace_stops_running_requests_and_clients_come_back(daemon: Daemon) -> None:
    ticket = engine_ticket(daemon, size=4 * MiB)
    assert vdsm_request(daemon, "PUT", ticket["uuid"], ticket).status == 200
    sock = daemon.raw_unix()
    idle = daemon.raw_unix()
    try:
        # An idle client that looked at the ticket, and an upload half sent.
        assert rawhttp.still_open(idle, ticket["uuid"])
        sock.sendall(
            f"PUT /images/{ticket['uuid']} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {4 * MiB}\r\n\r\n".encode()
        )
        sock.sendall(b"x" * MiB)
        wait_for(lambda: daemon.status(ticket["uuid"])["active"])
        assert daemon.status(ticket["uuid"])["connections"] == 2

        renewed = {**ticket, "timeout": 900, "transfer_id": "renewed"}
        assert vdsm_request(daemon, "PUT", ticket["uuid"], renewed).status == 200
        # Both were authorized by the content replaced: closed, as by a DELETE.
        assert rawhttp.closed_by_server(sock)
        assert rawhttp.closed_by_server(idle)
    finally:
        sock.close()
        idle.close()
    status = daemon.status(ticket["uuid"])
    assert (status["transfer_id"], status["timeout"]) == ("renewed", 900)
    assert (status["active"], status["connections"], status["canceled"]) == (False, 0, False)
    # The client reconnects and finishes under the new ticket.
    upload(daemon, ticket["uuid"], b"y" * 4 * MiB)
    assert daemon.status(ticket["uuid"])["transferred"] == 4 * MiB
    assert image_of(ticket).read_bytes() == b"y" * 4 * MiB


def test_replace_keeps_a_shared_volume_prepared(daemon: Daemon) -> None:
    vol = make_volume(daemon)
    ticket = volume_ticket({**vol, "nbd": True}, ["write"])
    assert vdsm_request(daemon, "PUT", ticket["uuid"], ticket).status == 200
    link = link_of(daemon, vol)
    pidfiles = list((daemon.dir / "run" / "nbd").glob("*.pid"))
    assert len(pidfiles) == 1
    pid, link_inode = pidfiles[0].read_text(), os.lstat(link).st_ino
    # A new timeout and transfer id: same volume, same qemu-nbd, same link.
    renewed = {**ticket, "timeout": 900, "transfer_id": "renewed-vol"}
    assert vdsm_request(daemon, "PUT", ticket["uuid"], renewed).status == 200
    assert pidfiles[0].read_text() == pid
    assert os.lstat(link).st_ino == link_inode
    data = os.urandom(MiB)
    upload(daemon, ticket["uuid"], data)
    assert vol["path"].read_bytes()[:MiB] == data
    # Removed, the replacement tears the volume down like any ticket.
    assert vdsm_request(daemon, "DELETE", ticket["uuid"]).status == 204
    assert not link.is_symlink()
    assert not pidfiles[0].exists()


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


def image_of(ticket: dict[str, Any]) -> Path:
    return Path(ticket["url"].removeprefix("file://"))


def upload_status(daemon: Daemon, ticket_id: str, data: bytes) -> int:
    con = daemon.unix()
    try:
        con.request("PUT", f"/images/{ticket_id}", body=data)
        res = con.getresponse()
        res.read()
        return res.status
    finally:
        con.close()


def upload(daemon: Daemon, ticket_id: str, data: bytes) -> None:
    assert upload_status(daemon, ticket_id, data) == 200


def download(daemon: Daemon, ticket_id: str, start: int, length: int) -> bytes:
    con = daemon.unix()
    try:
        con.request(
            "GET", f"/images/{ticket_id}", headers={"Range": f"bytes={start}-{start + length - 1}"}
        )
        res = con.getresponse()
        body = res.read()
        assert res.status == 206
        return body
    finally:
        con.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# TicketBusy: a request that cannot stop at once. Canceling shuts down the
# client's socket, so a request blocked on the network stops at once; one
# blocked in the kernel writing to a frozen file system cannot, until thawed.


@contextlib.contextmanager
def frozen(mountpoint: Path) -> Iterator[None]:
    run("fsfreeze", "--freeze", str(mountpoint))
    try:
        yield
    finally:
        # A writer blocked on a frozen file system cannot even be killed.
        run("fsfreeze", "--unfreeze", str(mountpoint))


def put_ticket_on(daemon: Daemon, mountpoint: Path, size: int) -> dict[str, Any]:
    """A write ticket, added over the HTTP API, on a new image under mountpoint."""
    image = mountpoint / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(size)
    ticket = engine_ticket(daemon, size=size, url=image.as_uri())
    assert vdsm_request(daemon, "PUT", ticket["uuid"], ticket).status == 200
    return ticket


def send_blocked_upload(daemon: Daemon, sock: socket.socket, ticket_id: str, size: int) -> None:
    """A whole upload on sock, until the daemon's write blocks in the kernel."""
    sock.sendall(
        f"PUT /images/{ticket_id} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    sock.sendall(b"\xab" * size)
    wait_blocked_in_kernel(daemon.proc.pid)


@pytest.mark.loop
def test_delete_while_a_write_cannot_stop_is_409_then_204(make_daemon: MakeDaemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices, mounts and fsfreeze")
    daemon = make_daemon(daemon={"remove_timeout": 0.5})
    size = 8 * MiB  # one buffer: the whole body is read before the write
    with ext4_on_loop(daemon.images, "fs") as mountpoint:
        ticket = put_ticket_on(daemon, mountpoint, size)
        sock = daemon.raw_unix()
        try:
            with frozen(mountpoint):
                send_blocked_upload(daemon, sock, ticket["uuid"], size)

                busy = vdsm_request(daemon, "DELETE", ticket["uuid"])
                assert busy.status == 409
                assert busy.reason == "Conflict"
                assert "retry" in busy.text
                assert ticket["uuid"] not in busy.text
                status = vdsm_request(daemon, "GET", ticket["uuid"]).json()
                assert status["canceled"] is True
                assert status["active"] is True
            # Thawed: the blocked write returns, sees the cancel, and ends;
            # vdsm retries the DELETE as the engine asks it to.
            deadline = time.monotonic() + 10
            while (reply := vdsm_request(daemon, "DELETE", ticket["uuid"])).status == 409:
                assert time.monotonic() < deadline, "the canceled upload never ended"
                time.sleep(0.1)
            assert reply.status == 204
            assert vdsm_request(daemon, "GET", ticket["uuid"]).status == 404
        finally:
            sock.close()


@pytest.mark.loop
def test_replace_while_a_write_cannot_stop_is_409_and_vdsm_sees_482(
    make_daemon: MakeDaemon,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices, mounts and fsfreeze")
    daemon = make_daemon(daemon={"remove_timeout": 0.5})
    size = 8 * MiB  # one buffer: the whole body is read before the write
    with ext4_on_loop(daemon.images, "fs") as mountpoint:
        ticket = put_ticket_on(daemon, mountpoint, size)
        other = {**ticket, "timeout": 900, "transfer_id": "other"}
        sock = daemon.raw_unix()
        try:
            with frozen(mountpoint):
                send_blocked_upload(daemon, sock, ticket["uuid"], size)

                busy = vdsm_request(daemon, "PUT", ticket["uuid"], other)
                assert (busy.status, busy.reason) == (409, "Conflict")
                assert "retry" in busy.text
                assert ticket["uuid"] not in busy.text
                # The old ticket stays, canceled, as after a busy DELETE;
                # nothing takes its uuid until its removal is done.
                status = vdsm_request(daemon, "GET", ticket["uuid"]).json()
                assert (status["transfer_id"], status["canceled"]) == (ticket["transfer_id"], True)
                removing = vdsm_request(daemon, "PUT", ticket["uuid"], other)
                assert removing.status == 409
                assert "being removed" in removing.text
                # vdsm's verbs answer what vdsm makes of these replies.
                value = f"status=409, reason=Conflict, error={removing.text}"
                assert daemon.call("Host.add_image_ticket", ticket=other)["error"] == {
                    "code": 482,
                    "message": f"Image daemon request failed: {value!r}",
                }
                error = daemon.call("Host.remove_image_ticket", uuid=ticket["uuid"])["error"]
                assert error["code"] == 482
                assert error["message"].startswith(
                    "Image daemon request failed: 'status=409, reason=Conflict, "
                    f"error=Ticket of transfer {ticket['transfer_id']} still has 1 running"
                )
            deadline = time.monotonic() + 10
            while (reply := vdsm_request(daemon, "DELETE", ticket["uuid"])).status == 409:
                assert time.monotonic() < deadline, "the canceled upload never ended"
                time.sleep(0.1)
            assert reply.status == 204
            assert vdsm_request(daemon, "PUT", ticket["uuid"], other).status == 200
            assert vdsm_request(daemon, "GET", ticket["uuid"]).json()["transfer_id"] == "other"
            assert vdsm_request(daemon, "DELETE", ticket["uuid"]).status == 204
        finally:
            sock.close()
    assert ticket["uuid"] not in daemon.log()


def wait_blocked_in_kernel(pid: int) -> None:
    """Until a thread of pid sleeps uninterruptibly (state D): the write."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                # The state follows the parenthesized command name.
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state == "D":
                    return
        time.sleep(0.02)
    raise AssertionError("no daemon thread blocked on the frozen file system")
