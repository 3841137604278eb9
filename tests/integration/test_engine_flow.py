"""The engine's view of a transfer, against a real daemon: the Host verbs
with the ticket the engine sends, and a whole TransferDiskImage flow with a
pause, scaled down in time."""

from __future__ import annotations

import hashlib
import http.client
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.engine_driver import EngineDriver, engine_ticket

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

KiB = 1024
MiB = 1024**2
GiB = 1024**3
IO_TIMEOUT = 10.0
PHASE_TIMEOUT = 20.0
# What the engine reads from Host.get_image_ticket.
ENGINE_READS = ("uuid", "size", "url", "timeout", "ops", "active", "transferred", "idle_time")


def wait_for(predicate: Callable[[], bool], timeout: float = IO_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def start_put(
    conn: http.client.HTTPConnection, ticket_id: str, start: int, length: int, size: int
) -> None:
    conn.putrequest("PUT", f"/images/{ticket_id}?flush=y")
    conn.putheader("Content-Length", str(length))
    conn.putheader("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
    conn.endheaders()


def finish(conn: http.client.HTTPConnection) -> int:
    resp = conn.getresponse()
    resp.read()
    return resp.status


def send_slowly(conn: http.client.HTTPConnection, data: bytes, *, piece: int, pause: float) -> None:
    for i in range(0, len(data), piece):
        conn.send(data[i : i + piece])
        time.sleep(pause)


def assert_gone(daemon: Daemon, uuid: str) -> None:
    """vdsm's answer for a ticket the daemon does not know: its 404, relayed."""
    error = daemon.call("Host.get_image_ticket", uuid=uuid)["error"]
    assert error["code"] == 482  # ImageDaemonError
    assert error["message"].startswith(
        "Image daemon request failed: 'status=404, reason=Not Found, error=No such ticket"
    )


def test_host_get_image_ticket_integers_in_every_state(daemon: Daemon) -> None:
    path = daemon.images / "engine-ints.raw"
    with open(path, "wb") as f:
        f.truncate(GiB)  # sparse: the engine's 1 GiB costs nothing
    ticket = engine_ticket(path.as_uri())
    uuid = ticket["uuid"]
    assert daemon.result("Host.add_image_ticket", ticket=ticket) is True

    def get() -> dict[str, Any]:
        return dict(daemon.result("Host.get_image_ticket", uuid=uuid))

    states = {"new": get()}
    conn = daemon.unix()
    try:
        start_put(conn, uuid, 0, MiB, GiB)
        conn.send(os.urandom(MiB // 2))
        wait_for(lambda: get()["active"])
        states["active"] = get()
        conn.send(os.urandom(MiB // 2))
        assert finish(conn) == 200
    finally:
        conn.close()
    wait_for(lambda: get()["idle_time"] >= 1, timeout=5.0)
    states["idle"] = get()
    assert daemon.result("Host.extend_image_ticket", uuid=uuid, timeout=0) is True
    states["expired"] = get()

    assert states["active"]["active"] is True
    assert states["idle"]["active"] is False
    assert states["idle"]["transferred"] == MiB
    assert states["expired"]["expires_in"] <= 0
    for name, status in states.items():
        for key in ENGINE_READS:
            assert key in status, (name, key)
        assert type(status["timeout"]) is int, (name, status)
        assert type(status["idle_time"]) is int, (name, status)
    assert [states[s]["timeout"] for s in ("new", "active", "idle", "expired")] == [
        300,
        300,
        300,
        0,
    ]

    # Expired: the data path refuses; extending revives the ticket.
    conn = daemon.unix()
    try:
        conn.request("OPTIONS", f"/images/{uuid}")
        assert finish(conn) == 403
    finally:
        conn.close()
    assert daemon.result("Host.extend_image_ticket", uuid=uuid, timeout=300) is True
    conn = daemon.unix()
    try:
        conn.request("OPTIONS", f"/images/{uuid}")
        assert finish(conn) == 200
    finally:
        conn.close()

    assert daemon.result("Host.remove_image_ticket", uuid=uuid) is True
    assert_gone(daemon, uuid)
    assert daemon.result("Host.remove_image_ticket", uuid=uuid) is True


def test_transfer_disk_image_flow_with_pause(daemon: Daemon) -> None:
    size = 8 * MiB
    half = size // 2
    data = os.urandom(size)
    path = daemon.images / "engine-flow.raw"
    with open(path, "wb") as f:
        f.truncate(size)
    # Scaled down: the engine uses 300 s and 60 s.
    ticket = engine_ticket(path.as_uri(), size=size, timeout=3, inactivity_timeout=1)
    uuid = ticket["uuid"]

    def image_is_uploaded() -> bool:
        return hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()

    engine = EngineDriver(
        daemon.control_path, ticket, poll=0.2, renew_margin=1.5, verify=image_is_uploaded
    )
    engine.start()
    try:
        assert engine.wait_phase("transferring", PHASE_TIMEOUT), engine.error

        # The first half, slowly: longer than the ticket's timeout, so the
        # engine must renew it while the client sends.
        first = daemon.unix()
        start_put(first, uuid, 0, half, size)
        send_slowly(first, data[:half], piece=256 * KiB, pause=0.25)
        assert finish(first) == 200

        # The client goes away; the engine sees the idle ticket as a pause.
        assert engine.wait_phase("paused", PHASE_TIMEOUT), (engine.error, engine.phases)
        # The daemon closed the idle connection (inactivity_timeout 1).
        assert first.sock is not None
        first.sock.settimeout(IO_TIMEOUT)
        assert first.sock.recv(1) == b""
        first.close()
        # Paused long enough for the ticket to expire: the engine does
        # not renew a paused transfer, so the data path refuses.
        wait_for(lambda: daemon.status(uuid)["expires_in"] < 0, timeout=PHASE_TIMEOUT)
        refused = daemon.unix()
        try:
            refused.request("OPTIONS", f"/images/{uuid}")
            assert finish(refused) == 403
        finally:
            refused.close()

        # The user resumes; the engine extends the expired ticket.
        engine.resume()
        assert engine.wait_phase("transferring", PHASE_TIMEOUT), engine.error
        second = daemon.unix()
        try:
            start_put(second, uuid, half, half, size)
            send_slowly(second, data[half:], piece=256 * KiB, pause=0.25)
            assert finish(second) == 200
        finally:
            second.close()

        engine.finalize()
        assert engine.wait_phase("finished", PHASE_TIMEOUT), (engine.error, engine.phases)
    finally:
        engine.finalize()
        engine.join(PHASE_TIMEOUT)
    assert engine.error is None, engine.error
    assert engine.phases == [
        "initializing",
        "transferring",
        "paused",
        "transferring",
        "finalizing",
        "finished",
    ]
    # Renewed while the first half went (about 4 s of a 3 s ticket), and
    # on resume.
    assert engine.extends >= 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert_gone(daemon, uuid)
    # What the engine polled: timeout and idle_time always integers.
    assert engine.statuses
    for status in engine.statuses:
        assert type(status["timeout"]) is int and type(status["idle_time"]) is int
