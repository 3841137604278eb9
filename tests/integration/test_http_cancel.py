"""Ticket lifecycle seen from the data path: cancel, inactivity, accounting."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TRANSPORTS = ("https", "unix")


def open_raw(daemon: Daemon, transport: str, timeout: float = 10) -> socket.socket:
    return daemon.raw_tls(timeout) if transport == "https" else daemon.raw_unix(timeout)


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The reply head and whatever body bytes came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(4096)
        assert got, f"closed before the head: {data!r}"
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def drain(sock: socket.socket, deadline: float) -> tuple[int, bool]:
    """Read until EOF or deadline: (bytes read, saw EOF)."""
    total = 0
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            got = sock.recv(1024 * KiB)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return total, True
        if not got:
            return total, True
        total += len(got)
    return total, False


def wait_idle(daemon: Daemon, ticket_id: str) -> dict[str, object]:
    """Status once no request runs: the last chunk is accounted after the
    client may already have read it."""
    deadline = time.monotonic() + 5
    while True:
        status = daemon.status(ticket_id)
        if not status["active"] or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def timed_remove(daemon: Daemon, ticket_id: str) -> tuple[object, float]:
    start = time.monotonic()
    result = daemon.result("Ticket.remove", uuid=ticket_id)
    return result, time.monotonic() - start


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_remove_cancels_running_download(daemon: Daemon, transport: str) -> None:
    ticket_id, _ = daemon.add_ticket(size=GiB, ops=("read",))
    sock = open_raw(daemon, transport)
    sock.sendall(f"GET /images/{ticket_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {GiB}".encode() in head
    got = len(rest)
    for _ in range(5):  # a slow reader: a few KiB every 100 ms
        got += len(sock.recv(4 * KiB))
        time.sleep(0.1)
    assert daemon.status(ticket_id)["active"] is True

    result, elapsed = timed_remove(daemon, ticket_id)
    assert result is True
    assert elapsed < 5

    more, eof = drain(sock, time.monotonic() + 10)
    sock.close()
    assert eof, "the download did not stop"
    assert got + more < GiB

    sock = open_raw(daemon, transport)
    sock.sendall(f"GET /images/{ticket_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _ = read_head(sock)
    sock.close()
    assert head.startswith(b"HTTP/1.1 403")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_remove_cancels_running_upload(daemon: Daemon, transport: str) -> None:
    ticket_id, _ = daemon.add_ticket(size=GiB)
    sock = open_raw(daemon, transport)
    sock.sendall(
        f"PUT /images/{ticket_id} HTTP/1.1\r\nHost: x\r\nContent-Length: {GiB}\r\n\r\n".encode()
    )
    stopped = threading.Event()
    sent = 0

    def upload() -> None:
        nonlocal sent
        try:
            while sent < GiB and not stopped.is_set():
                sock.sendall(b"u" * 4 * KiB)
                sent += 4 * KiB
                time.sleep(0.1)
        except OSError:
            pass
        stopped.set()

    sender = threading.Thread(target=upload)
    sender.start()
    try:
        deadline = time.monotonic() + 5
        while not daemon.status(ticket_id)["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.status(ticket_id)["active"] is True

        result, elapsed = timed_remove(daemon, ticket_id)
        assert result is True
        assert elapsed < 5
        # The server closed its end: the upload ends with an error or EOF.
        _, eof = drain(sock, time.monotonic() + 5)
        assert eof
    finally:
        stopped.set()
        sender.join(5)
        sock.close()
    assert sent < GiB
    assert daemon.call("Ticket.status", uuid=ticket_id)["error"]["code"] == 100


def test_idle_authorized_connection_is_closed_after_inactivity_timeout(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, inactivity_timeout=2)
    sock = daemon.raw_unix()
    sock.sendall(
        f"GET /images/{ticket_id} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n".encode()
    )
    head, body = read_head(sock)
    assert head.startswith(b"HTTP/1.1 206")
    if len(body) < 10:
        body += sock.recv(10 - len(body))
    assert body == b"\0" * 10
    start = time.monotonic()
    sock.settimeout(6)
    try:
        assert sock.recv(4096) == b""
    except ConnectionResetError:
        pass
    elapsed = time.monotonic() - start
    sock.close()
    assert 1.5 < elapsed < 6


def test_activity_keeps_connection_open_past_inactivity_timeout(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, inactivity_timeout=2)
    conn = daemon.unix()
    conn.connect()
    sock = conn.sock
    for _ in range(4):  # a request every 0.8 s keeps it open past 2 s
        conn.request("OPTIONS", f"/images/{ticket_id}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        time.sleep(0.8)
    # http.client would have reconnected silently had the server closed.
    assert conn.sock is sock
    conn.close()


def test_transferred_counts_union_of_downloaded_ranges(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=4 * MiB, ops=("read",))
    conn = daemon.https()
    for header in (
        "bytes=0-1048575",
        "bytes=0-1048575",
        "bytes=524288-1572863",
        "bytes=3145728-3145737",
    ):
        conn.request("GET", f"/images/{ticket_id}", headers={"Range": header})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 206
    conn.close()
    status = wait_idle(daemon, ticket_id)
    assert status["active"] is False
    assert status["transferred"] == MiB + MiB // 2 + 10


def test_transferred_after_full_download_equals_size(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=3 * MiB + 7, ops=("read",))
    conn = daemon.unix()
    conn.request("GET", f"/images/{ticket_id}")
    got = conn.getresponse().read()
    conn.close()
    assert wait_idle(daemon, ticket_id)["transferred"] == len(got) == 3 * MiB + 7


def test_transferred_counts_uploads(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=4 * MiB)
    conn = daemon.unix()
    for start in (0, MiB // 2, 2 * MiB):
        conn.request(
            "PUT",
            f"/images/{ticket_id}",
            body=b"x" * MiB,
            headers={"Content-Range": f"bytes {start}-{start + MiB - 1}/*"},
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()
    assert wait_idle(daemon, ticket_id)["transferred"] == 2 * MiB + MiB // 2


def test_status_shows_connections_and_idle_time(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    conn = daemon.unix()
    conn.request("GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-0"})
    conn.getresponse().read()
    status = wait_idle(daemon, ticket_id)
    assert status["connections"] == 1
    assert isinstance(status["idle_time"], int)
    conn.close()
    deadline = time.monotonic() + 5
    while daemon.status(ticket_id)["connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.status(ticket_id)["connections"] == 0


def test_daemon_stops_promptly_during_a_slow_download(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    ticket_id, _ = daemon.add_ticket(size=GiB, ops=("read",))
    sock = daemon.raw_tls()
    sock.sendall(f"GET /images/{ticket_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _ = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    assert daemon.stop(), "the daemon did not exit in time after SIGTERM"
    assert daemon.proc.returncode == 0
    assert time.monotonic() - start < 5
    _, eof = drain(sock, time.monotonic() + 5)
    sock.close()
    assert eof
