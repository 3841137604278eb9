"""Block volume tickets through the real daemon: LVM, udev, sanlock and
qemu-nbd as on a host, driven over the control socket and the data sockets
as vdsm and clients drive it."""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon
from tests.vm.vmstorage import (
    Domain,
    LeaseHolder,
    MiB,
    attr,
    dm_name,
    holds,
    is_active,
    run,
    sanlock_status,
)

VolumeFactory = Callable[..., dict[str, Any]]
# udev and lvm in an emulated guest on a busy host.
EVENT_TIMEOUT = 60.0
# How long a canceled transfer may take to end once its device is gone.
END_TIMEOUT = 60.0
LEASE_BUSY = 202
LOCKSPACE_UNAVAILABLE = 203


def ticket(volume: dict[str, Any], ops: tuple[str, ...], size: int = 8 * MiB) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "size": size,
        "ops": list(ops),
        "timeout": 300,
        "transfer_id": f"vm-{uuid.uuid4().hex[:8]}",
        "volume": volume,
    }


def link_of(daemon: Daemon, vol: dict[str, Any]) -> Path:
    return Path(daemon.run_dir, "storage", vol["sd_id"], vol["img_id"], vol["vol_id"])


def lv_path(vol: dict[str, Any]) -> str:
    return f"/dev/{vol['sd_id']}/{vol['vol_id']}"


def read_lv(vol: dict[str, Any], size: int) -> bytes:
    """The LV's first size bytes as the device has them (O_DIRECT: no cache)."""
    fd = os.open(lv_path(vol), os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    try:
        done = 0
        while done < size:
            n = os.preadv(fd, [memoryview(buf)[done:]], done)
            assert n > 0, f"short read at {done}"
            done += n
        return bytes(buf)
    finally:
        buf.close()
        os.close(fd)


def lease_owners(status: str, sd_id: str, vol_id: str) -> set[int]:
    """Pids that ``sanlock client status`` says hold the resource.

    A resource line ends with ``p PID``, or follows its process's ``p PID``
    line, depending on how sanlock sorts its report.
    """
    owners, pid = set(), None
    for line in status.splitlines():
        if m := re.match(r"p (-?\d+)", line):
            pid = int(m.group(1))
        elif line.startswith(f"r {sd_id}:{vol_id}:"):
            m = re.search(r" p (\d+)$", line)
            owner = int(m.group(1)) if m else pid
            assert owner is not None, status
            owners.add(owner)
    return owners


def put(daemon: Daemon, ticket_id: str, data: bytes, *, offset: int | None = None) -> None:
    """PUT data over the unix socket: at offset, or the whole image if None."""
    headers = {}
    if offset is not None:
        headers["Content-Range"] = f"bytes {offset}-{offset + len(data) - 1}/*"
    conn = daemon.unix()
    try:
        conn.request("PUT", f"/images/{ticket_id}", body=data, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
    finally:
        conn.close()


def assert_nothing_left(daemon: Daemon, domain: Domain, vol: dict[str, Any]) -> None:
    # "-": not active. "a" is active, and "X" a device still there with the
    # error target in its table.
    assert attr(domain, vol["vol_id"])[4] == "-", daemon.log_tail()
    assert not os.path.lexists(link_of(daemon, vol))
    assert daemon.proc.pid not in lease_owners(sanlock_status(), vol["sd_id"], vol["vol_id"])


# a. One write ticket: prepare, upload, teardown.


def test_upload_to_block_volume_reaches_the_lv_and_remove_deactivates(
    domain: Domain, daemon: Daemon, make_volume: VolumeFactory
) -> None:
    vol = make_volume()
    t = ticket(vol, ("write",))
    daemon.result("Ticket.add", ticket=t)
    link = link_of(daemon, vol)
    assert is_active(domain, vol["vol_id"])
    assert os.readlink(link) == lv_path(vol)
    assert link.is_block_device()
    data = os.urandom(8 * MiB)
    put(daemon, t["uuid"], data)
    assert hashlib.sha256(read_lv(vol, len(data))).hexdigest() == hashlib.sha256(data).hexdigest()
    assert daemon.result("Ticket.remove", uuid=t["uuid"]) is True
    assert_nothing_left(daemon, domain, vol)


# b. Two tickets on one volume: one preparation, one teardown.


def test_volume_stays_prepared_until_its_last_ticket_is_removed(
    domain: Domain, daemon: Daemon, make_volume: VolumeFactory
) -> None:
    vol = make_volume()
    writer, reader = ticket(vol, ("write",)), ticket(vol, ("read",))
    daemon.result("Ticket.add", ticket=writer)
    daemon.result("Ticket.add", ticket=reader)
    data = os.urandom(MiB)
    put(daemon, writer["uuid"], data, offset=0)
    daemon.result("Ticket.remove", uuid=writer["uuid"])
    assert is_active(domain, vol["vol_id"])
    assert link_of(daemon, vol).is_block_device()
    # The remaining reader still reads the volume, here over TLS.
    tls = daemon.https()
    tls.request("GET", f"/images/{reader['uuid']}", headers={"Range": f"bytes=0-{MiB - 1}"})
    resp = tls.getresponse()
    assert resp.status == 206
    assert resp.read() == data
    tls.close()
    daemon.result("Ticket.remove", uuid=reader["uuid"])
    assert_nothing_left(daemon, domain, vol)


# c. The device goes away under a running transfer.


def wait_until_active(daemon: Daemon, uuid: str) -> None:
    """Until the daemon runs a request of the ticket (its backend is open)."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not daemon.result("Ticket.status", uuid=uuid)["active"]:
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.1)


def finish_upload(client: socket.socket, pieces: int) -> bytes:
    """Send the rest of the body; what came back: a response, or b"" when closed."""
    try:
        for _ in range(pieces):
            client.sendall(bytes(MiB))
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        return client.recv(4096)
    except ConnectionResetError:
        return b""


def test_pulled_device_fails_the_upload_and_publishes_volume_lost(
    domain: Domain, daemon: Daemon, make_volume: VolumeFactory
) -> None:
    vol = make_volume()
    size = 8 * MiB
    t = ticket(vol, ("write",), size=size)
    daemon.result("Ticket.add", ticket=t)
    node = os.path.realpath(lv_path(vol))
    subscriber = daemon.subscribe(["Volume.lost"])
    # An upload in pieces: the daemon cannot finish it without our bytes,
    # so the device is open under a running request when it goes away.
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(END_TIMEOUT)
        client.connect(daemon.unix_socket)
        client.sendall(
            f"PUT /images/{t['uuid']} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        client.sendall(os.urandom(MiB))
        wait_until_active(daemon, t["uuid"])
        proc = run(
            "dmsetup", "remove", "--force", dm_name(vol["sd_id"], vol["vol_id"]), check=False
        )
        # The daemon has the device open, so dmsetup swaps in the error
        # target first and waits for udev before it removes the node. The
        # daemon may see that change and close its descriptor during the wait
        # (then the removal succeeds), or still hold it (then it is "busy").
        assert proc.returncode == 0 or "busy" in proc.stderr, f"{proc}\n{daemon.log_tail(80)}"
        lost = subscriber.wait_for("Volume.lost", time.monotonic() + EVENT_TIMEOUT, uuid=t["uuid"])
        assert lost["params"]["device"] == node
        assert lost["params"]["action"] in ("change", "remove")
        # The rest of the upload ends in an error (a closed connection or an
        # error status), not a hang: every send and recv is bounded.
        reply = finish_upload(client, size // MiB - 1)
        assert not reply.startswith(b"HTTP/1.1 2"), reply
    finally:
        client.close()
        subscriber.close()
    status = daemon.result("Ticket.status", uuid=t["uuid"])
    assert status["canceled"] is True
    assert status["transferred"] < size
    # Once the daemon's descriptor is closed, teardown deactivates the LV.
    assert daemon.result("Ticket.remove", uuid=t["uuid"]) is True
    assert_nothing_left(daemon, domain, vol)
    dm = run("dmsetup", "info", dm_name(vol["sd_id"], vol["vol_id"]), check=False)
    assert dm.returncode != 0, dm.stdout


# d. Leases.


def test_write_ticket_holds_the_lease_until_removed(
    domain: Domain, lockspace: str, daemon: Daemon, make_volume: VolumeFactory
) -> None:
    vol = make_volume(lease=True)
    t = ticket(vol, ("write",))
    daemon.result("Ticket.add", ticket=t)
    assert lease_owners(sanlock_status(), lockspace, vol["vol_id"]) == {daemon.proc.pid}
    daemon.result("Ticket.remove", uuid=t["uuid"])
    assert not holds(sanlock_status(), lockspace, vol["vol_id"])
    assert_nothing_left(daemon, domain, vol)


def test_read_ticket_takes_no_lease(
    domain: Domain, lockspace: str, daemon: Daemon, make_volume: VolumeFactory
) -> None:
    vol = make_volume(lease=True)
    t = ticket(vol, ("read",))
    daemon.result("Ticket.add", ticket=t)
    try:
        assert is_active(domain, vol["vol_id"])
        assert not holds(sanlock_status(), lockspace, vol["vol_id"])
    finally:
        daemon.result("Ticket.remove", uuid=t["uuid"])
    assert_nothing_left(daemon, domain, vol)


def test_lease_held_by_another_process_is_202_and_leaves_nothing(
    domain: Domain, lockspace: str, daemon: Daemon, make_volume: VolumeFactory
) -> None:
    vol = make_volume(lease=True)
    t = ticket(vol, ("write",))
    with LeaseHolder(vol) as holder:
        reply = daemon.call("Ticket.add", ticket=t)
        assert reply.get("error", {}).get("code") == LEASE_BUSY, reply
        assert lease_owners(sanlock_status(), lockspace, vol["vol_id"]) == {holder.proc.pid}
    assert t["uuid"] not in [s["uuid"] for s in daemon.result("Ticket.list")]
    assert_nothing_left(daemon, domain, vol)


def test_lockspace_not_joined_is_203(domain: Domain, daemon: Daemon) -> None:
    # A domain this host never joined: the lease is checked before the LV.
    vol: dict[str, Any] = {
        "domain": "block",
        "sd_id": str(uuid.uuid4()),
        "img_id": str(uuid.uuid4()),
        "vol_id": str(uuid.uuid4()),
        "lease": {"path": domain.leases, "offset": domain.lease_slot()},
    }
    t = ticket(vol, ("write",))
    reply = daemon.call("Ticket.add", ticket=t)
    assert reply.get("error", {}).get("code") == LOCKSPACE_UNAVAILABLE, reply
    assert t["uuid"] not in [s["uuid"] for s in daemon.result("Ticket.list")]
    assert not (daemon.run_dir / "storage" / vol["sd_id"]).exists()


# qemu-nbd on a block volume: it holds the LV open, so it must stop first.


def test_nbd_block_volume_is_served_by_qemu_nbd_and_deactivated_after_it(
    domain: Domain, daemon: Daemon, make_volume: VolumeFactory
) -> None:
    vol = dict(make_volume(), nbd=True)
    t = ticket(vol, ("write",))
    daemon.result("Ticket.add", ticket=t)
    # One qemu-nbd: its socket, beside its pid file (storage.pidfiles).
    sockets = [p for p in (daemon.run_dir / "nbd").iterdir() if p.is_socket()]
    assert len(sockets) == 1
    assert (daemon.run_dir / "nbd" / (sockets[0].stem + ".pid")).is_file()
    data = os.urandom(MiB)
    put(daemon, t["uuid"], data, offset=MiB)
    # qemu-nbd writes with cache=none and the PUT flushed: it is on the LV.
    assert read_lv(vol, 2 * MiB)[MiB:] == data
    daemon.result("Ticket.remove", uuid=t["uuid"])
    # Deactivation succeeded, so qemu-nbd had closed the LV before it.
    assert not sockets[0].exists()
    assert not (daemon.run_dir / "nbd" / (sockets[0].stem + ".pid")).exists()
    assert_nothing_left(daemon, domain, vol)
