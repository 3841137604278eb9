"""Slow and silent clients, connection limits and timeouts, against a real daemon."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from tests.integration.rawhttp import closed_by_server, read_reply, send

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

MiB = 1024**2


# Slow and silent clients.


def test_silent_tls_client_does_not_delay_others(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"hello")
    silent = [daemon.raw_tcp() for _ in range(3)]  # connect, never handshake
    try:
        start = time.monotonic()
        conn = daemon.https(timeout=5)
        conn.request("GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-4"})
        resp = conn.getresponse()
        assert resp.read() == b"hello"
        conn.close()
        assert time.monotonic() - start < 2.0
    finally:
        for s in silent:
            s.close()


def test_plain_http_on_the_tls_port_is_closed_and_harmless(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"ok")
    sock = daemon.raw_tcp()
    sock.sendall(b"GET /images/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed_by_server(sock)
    sock.close()
    conn = daemon.https()
    conn.request("GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-1"})
    assert conn.getresponse().read() == b"ok"
    conn.close()


def test_incomplete_request_head_is_closed_after_header_timeout(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(http={"header_timeout": 1})
    partial = daemon.raw_unix()
    partial.sendall(b"GET /images/x HTTP/1.1\r\nHost: loc")
    dripping = daemon.raw_tls()
    start = time.monotonic()
    # One byte at a time never lets a per-recv timeout fire.
    for b in b"GET /images/x HTTP/1.1\r\nX-Slow: 12345678":
        try:
            dripping.sendall(bytes([b]))
        except OSError:
            break
        time.sleep(0.1)
        if time.monotonic() - start > 4:
            break
    assert closed_by_server(dripping, timeout=3)
    assert time.monotonic() - start < 5
    assert closed_by_server(partial, timeout=0.5)
    partial.close()
    dripping.close()


def test_silent_connections_are_closed_after_their_deadlines(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(http={"header_timeout": 1}, tls={"handshake_timeout": 1})
    tls_silent = daemon.raw_tcp()  # not even a TLS handshake
    unix_silent = daemon.raw_unix()
    start = time.monotonic()
    assert closed_by_server(unix_silent, timeout=4)
    assert closed_by_server(tls_silent, timeout=4)
    assert time.monotonic() - start < 4
    tls_silent.close()
    unix_silent.close()


# Per-ticket connection limits.


def test_second_writer_gets_503_while_first_holds_its_slot(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(http={"max_writers": 1, "max_readers": 1})
    ticket_id, _ = daemon.add_ticket(size=MiB)
    first = daemon.raw_unix()
    resp, _ = send(first, "PUT", f"/images/{ticket_id}", {"Content-Length": "3"}, b"abc")
    assert resp.status == 200
    second = daemon.raw_tls()
    resp, body = send(second, "PUT", f"/images/{ticket_id}", {"Content-Length": "3"}, b"xyz")
    assert resp.status == 503
    assert b"writer" in body and b"limit 1" in body
    assert resp.getheader("Retry-After") is not None
    second.close()
    # A reader slot is separate from the writer slot.
    reader = daemon.raw_unix()
    resp, _ = send(reader, "GET", f"/images/{ticket_id}", {"Range": "bytes=0-2"})
    assert resp.status == 206
    reader.close()
    # The slot is free once the first writer goes away.
    first.close()
    deadline = time.monotonic() + 5
    while True:
        third = daemon.raw_unix()
        resp, _ = send(third, "PUT", f"/images/{ticket_id}", {"Content-Length": "3"}, b"xyz")
        third.close()
        if resp.status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert resp.status == 200


def test_options_advertise_configured_limits(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(http={"max_writers": 1, "max_readers": 3})
    ticket_id, _ = daemon.add_ticket(size=MiB)
    conn = daemon.unix()
    conn.request("OPTIONS", f"/images/{ticket_id}")
    body = json.loads(conn.getresponse().read())
    conn.close()
    assert (body["max_readers"], body["max_writers"]) == (3, 1)


def test_pipelined_requests_are_answered_in_order(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"0123456789")
    sock = daemon.raw_unix()
    sock.sendall(
        b"".join(
            f"GET /images/{ticket_id} HTTP/1.1\r\nHost: x\r\nRange: bytes={i}-{i}\r\n"
            f"Connection: {'close' if i == 4 else 'keep-alive'}\r\n\r\n".encode()
            for i in range(5)
        )
    )
    data = b""
    while got := sock.recv(65536):
        data += got
    sock.close()
    replies = data.split(b"HTTP/1.1 ")[1:]
    assert [r[:3] for r in replies] == [b"206"] * 5
    assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in replies] == [b"0", b"1", b"2", b"3", b"4"]


def test_http_1_0_request_is_served_and_closed(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"abc")
    sock = daemon.raw_unix()
    sock.sendall(f"GET /images/{ticket_id} HTTP/1.0\r\nRange: bytes=0-2\r\n\r\n".encode())
    resp, body = read_reply(sock)
    assert (resp.status, body) == (206, b"abc")
    assert closed_by_server(sock)
    sock.close()


def test_storage_error_is_500_without_the_path(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    path.unlink()
    sock = daemon.raw_unix()
    resp, body = send(sock, "GET", f"/images/{ticket_id}")
    assert resp.status == 500
    assert str(path).encode() not in body
    assert str(daemon.dir).encode() not in body
    assert closed_by_server(sock)
    sock.close()


def test_stalled_upload_is_closed_after_inactivity_timeout(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, inactivity_timeout=1)
    sock = daemon.raw_unix()
    sock.sendall(
        f"PUT /images/{ticket_id} HTTP/1.1\r\nHost: x\r\nContent-Length: {MiB}\r\n\r\n".encode()
        + b"x" * 1000
    )
    start = time.monotonic()
    assert closed_by_server(sock, timeout=5)
    assert time.monotonic() - start < 5
    sock.close()
    deadline = time.monotonic() + 5
    while daemon.status(ticket_id)["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.status(ticket_id)["active"] is False
