"""Replacing and removing a ticket over the HTTP ticket API while its
requests run: the new content decides, running requests stop, and a request
that cannot stop at once makes the API answer 409 (vdsm: 482) until it does."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration import rawhttp
from tests.integration.test_volumes import link_of, make_volume, volume_ticket
from tests.integration.ticketapi import (
    MiB,
    download,
    engine_ticket,
    image_of,
    upload,
    upload_status,
    vdsm_request,
    wait_for,
)
from tests.support.loopfs import ext4_on_loop, run

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon


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
