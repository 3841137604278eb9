"""Events against a real daemon: what a subscriber sees while clients
transfer, inactivity closing idle connections, the expired-ticket reaper,
subscribers that never read, and ``vdsm-imageio call --subscribe``."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.daemon import PROGRAM

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

KiB = 1024
MiB = 1024**2
IO_TIMEOUT = 10.0
EVENT_TIMEOUT = 15.0
TRANSPORTS = ("https", "unix")


class Subscriber:
    """A control connection that subscribed to events."""

    def __init__(self, daemon: Daemon, events: list[str] | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(daemon.control_path)
        self.reader = self.sock.makefile("rb")
        self.pending: list[dict[str, Any]] = []
        params = {} if events is None else {"events": events}
        self.sock.sendall(
            json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "Events.subscribe", "params": params}
            ).encode()
            + b"\n"
        )
        while True:
            msg = self._read(time.monotonic() + IO_TIMEOUT)
            if "id" in msg:
                assert msg.get("result") is True, msg
                break
            self.pending.append(msg)

    def _read(self, deadline: float) -> dict[str, Any]:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"subscription closed: {line!r}"
        return dict(json.loads(line))

    def next(self, deadline: float) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        msg = self._read(deadline)
        assert "id" not in msg, msg
        return msg

    def until(
        self, stop: Callable[[dict[str, Any]], bool], timeout: float = EVENT_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Notifications up to and including the first one stop() accepts."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while True:
            msg = self.next(deadline)
            got.append(msg)
            if stop(msg):
                return got

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def event(name: str, ticket_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["method"] == name and m["params"]["uuid"] == ticket_id


def http_conn(daemon: Daemon, transport: str) -> http.client.HTTPConnection:
    return daemon.https() if transport == "https" else daemon.unix()


def slow_put(
    conn: http.client.HTTPConnection, ticket_id: str, data: bytes, *, piece: int, pause: float
) -> int:
    """PUT data as one request, sending it in pieces with pauses."""
    conn.putrequest("PUT", f"/images/{ticket_id}")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    for start in range(0, len(data), piece):
        conn.send(data[start : start + piece])
        time.sleep(pause)
    resp = conn.getresponse()
    resp.read()
    return resp.status


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_progress_during_upload_then_inactive(make_daemon: MakeDaemon, transport: str) -> None:
    # A request accounts its bytes per filled buffer: a small buffer lets
    # a 4 MiB upload move in steps, as a large image does with the default.
    d = make_daemon(http={"progress_interval": 0.25, "buffer_size": 256 * KiB})
    sub = Subscriber(d, ["Ticket.progress", "Ticket.inactive"])
    try:
        size = 4 * MiB
        ticket_id, path = d.add_ticket(size=size, inactivity_timeout=1)
        data = os.urandom(size)
        conn = http_conn(d, transport)
        try:
            # About 2 seconds: several progress intervals.
            assert slow_put(conn, ticket_id, data, piece=128 * KiB, pause=0.06) == 200
        finally:
            conn.close()
        seen = sub.until(event("Ticket.inactive", ticket_id))
    finally:
        sub.close()
    mine = [m for m in seen if m["params"]["uuid"] == ticket_id]
    progress = [m["params"] for m in mine if m["method"] == "Ticket.progress"]
    moving = [p for p in progress if p["active"]]
    assert len(moving) >= 2, progress
    values = [p["transferred"] for p in moving]
    assert values == sorted(set(values)), values  # strictly increasing
    final = progress[-1]
    assert final == {
        "uuid": ticket_id,
        "transfer_id": f"t-{ticket_id[:8]}",
        "transferred": size,
        "size": size,
        "active": False,
    }
    assert final["transferred"] >= values[-1]
    # The final progress comes before the inactivity, which comes once.
    assert [m["method"] for m in mine][-2:] == ["Ticket.progress", "Ticket.inactive"]
    assert mine[-1]["params"]["idle_time"] > 1
    assert path.read_bytes() == data


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idle_authorized_connection_is_closed(daemon: Daemon, transport: str) -> None:
    idle_id, _ = daemon.add_ticket(size=MiB, inactivity_timeout=1)
    never_id, _ = daemon.add_ticket(size=MiB, inactivity_timeout=0)
    idle = http_conn(daemon, transport)
    never = http_conn(daemon, transport)
    try:
        for conn, ticket_id in ((idle, idle_id), (never, never_id)):
            conn.request("GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-4095"})
            resp = conn.getresponse()
            assert resp.status == 206
            assert len(resp.read()) == 4096
        assert daemon.status(idle_id)["connections"] == 1
        start = time.monotonic()
        assert idle.sock is not None
        idle.sock.settimeout(IO_TIMEOUT)
        assert idle.sock.recv(1) == b""  # the daemon closed it
        elapsed = time.monotonic() - start
        assert 0.5 < elapsed < 5.0
        assert daemon.status(idle_id)["connections"] == 0
        # inactivity_timeout 0 never closes: the other one still serves.
        time.sleep(1.0)
        never.request("GET", f"/images/{never_id}", headers={"Range": "bytes=0-4095"})
        resp = never.getresponse()
        assert resp.status == 206
        resp.read()
        # The ticket itself stays until removed; a new connection works.
        again = http_conn(daemon, transport)
        try:
            again.request("OPTIONS", f"/images/{idle_id}")
            resp = again.getresponse()
            resp.read()
            assert resp.status == 200
        finally:
            again.close()
    finally:
        idle.close()
        never.close()
        daemon.result("Ticket.remove", uuid=idle_id)
        daemon.result("Ticket.remove", uuid=never_id)


def test_removed_after_remove(daemon: Daemon) -> None:
    sub = Subscriber(daemon, ["Ticket.removed"])
    try:
        ticket_id, _ = daemon.add_ticket(size=MiB)
        assert daemon.result("Ticket.remove", uuid=ticket_id) is True
        got = sub.until(event("Ticket.removed", ticket_id))
    finally:
        sub.close()
    assert got[-1] == {
        "jsonrpc": "2.0",
        "method": "Ticket.removed",
        "params": {"uuid": ticket_id, "transfer_id": f"t-{ticket_id[:8]}"},
    }


def test_unknown_event_is_invalid_params_naming_events(daemon: Daemon) -> None:
    reply = daemon.call("Events.subscribe", events=["Ticket.progress", "Ticket.bogus"])
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"]["field"] == "events"


def test_reaper_removes_ticket_expired_longer_than_grace(
    make_daemon: MakeDaemon,
) -> None:
    d = make_daemon(daemon={"expired_ticket_grace": 1})
    sub = Subscriber(d, ["Ticket.expired", "Ticket.removed"])
    try:
        ticket_id, _ = d.add_ticket(size=MiB, timeout=1)
        got = sub.until(event("Ticket.removed", ticket_id))
    finally:
        sub.close()
    assert [m["method"] for m in got] == ["Ticket.expired", "Ticket.removed"]
    assert d.call("Ticket.status", uuid=ticket_id)["error"]["code"] == 100


def test_expired_ticket_stays_without_grace(daemon: Daemon) -> None:
    sub = Subscriber(daemon, ["Ticket.expired", "Ticket.removed"])
    try:
        ticket_id, _ = daemon.add_ticket(size=MiB, timeout=0)
        sub.until(event("Ticket.expired", ticket_id))
        time.sleep(1.0)
        status = daemon.status(ticket_id)
        assert status["expires_in"] <= 0
        daemon.result("Ticket.remove", uuid=ticket_id)
        sub.until(event("Ticket.removed", ticket_id))
    finally:
        sub.close()


def test_subscriber_that_never_reads_blocks_nobody(daemon: Daemon) -> None:
    stuck = Subscriber(daemon)  # subscribes, then never reads
    reader = Subscriber(daemon, ["Ticket.removed"])
    try:
        # Big notifications (the uuid is 16 KiB) fill the stuck peer's
        # socket after a few dozen; its sender then blocks in a send.
        count = 150
        ids = [uuidlib.uuid4().hex * 512 for _ in range(count)]
        _, path = daemon.add_ticket(size=MiB)
        upload_id, upload_path = daemon.add_ticket(size=8 * MiB)
        data = os.urandom(8 * MiB)
        status: list[int] = []

        def upload() -> None:
            conn = daemon.unix()
            try:
                status.append(slow_put(conn, upload_id, data, piece=MiB, pause=0.05))
            finally:
                conn.close()

        t = threading.Thread(target=upload, daemon=True)
        t.start()
        for ticket_id in ids:
            daemon.result(
                "Ticket.add",
                ticket={
                    "uuid": ticket_id,
                    "size": MiB,
                    "ops": ["read"],
                    "timeout": 300,
                    "url": path.as_uri(),
                },
            )
            daemon.result("Ticket.remove", uuid=ticket_id)
        got: list[str] = []
        deadline = time.monotonic() + EVENT_TIMEOUT
        while len(got) < count:
            got.append(reader.next(deadline)["params"]["uuid"])
        t.join(EVENT_TIMEOUT)
        assert status == [200]
        assert got == ids
        assert hashlib.sha256(upload_path.read_bytes()).digest() == hashlib.sha256(data).digest()
        # The control channel still answers everyone.
        assert daemon.result("Service.info")["tickets"] >= 1
    finally:
        # Closing the stuck peer ends its blocked send.
        stuck.close()
        reader.close()
        daemon.result("Ticket.remove", uuid=upload_id)


def test_call_subscribe_prints_json_lines_until_sigint(daemon: Daemon) -> None:
    vdsm_imageio = str(PROGRAM)
    proc = subprocess.Popen(
        [vdsm_imageio, "call", "--socket", daemon.control_path, "--subscribe", "Ticket.removed"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        subscribed = time.monotonic() + IO_TIMEOUT
        ticket_id = ""
        line = b""
        # Add and remove tickets until the subscriber prints one: it may
        # not have subscribed yet when the first one goes.
        while not line and time.monotonic() < subscribed:
            ticket_id, _ = daemon.add_ticket(size=MiB)
            daemon.result("Ticket.remove", uuid=ticket_id)
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
        assert line, "no notification printed"
        msg = json.loads(line)
        assert msg["method"] == "Ticket.removed"
        assert set(msg["params"]) == {"uuid", "transfer_id"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(IO_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_subscriber_that_never_reads_does_not_delay_shutdown(
    make_daemon: MakeDaemon,
) -> None:
    d = make_daemon()
    stuck = Subscriber(d)
    try:
        _, path = d.add_ticket(size=MiB)
        for _ in range(60):  # 16 KiB notifications fill its socket
            ticket_id = uuidlib.uuid4().hex * 512
            d.result(
                "Ticket.add",
                ticket={
                    "uuid": ticket_id,
                    "size": MiB,
                    "ops": ["read"],
                    "timeout": 300,
                    "url": path.as_uri(),
                },
            )
            d.result("Ticket.remove", uuid=ticket_id)
        time.sleep(0.5)  # the sender is now blocked in a send
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        try:
            d.proc.wait(3.0)
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - start
    finally:
        stuck.close()  # lets a stuck shutdown finish
        d.proc.wait(IO_TIMEOUT)
    assert elapsed < 3.0
