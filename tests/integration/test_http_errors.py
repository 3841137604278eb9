"""The bad-input table, against a real daemon (deadlines and limits: test_http_limits.py).

Raw sockets send what a client library never would: heads without bodies,
floods of headers, silence. Every case checks the status and, where the
contract says so, that the server closed the connection.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING

import pytest

from tests.integration.rawhttp import closed_by_server, read_reply, send, still_open

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

MiB = 1024**2


# Authorization: 403 and the connection is closed.


def test_unknown_ticket_is_403_and_closes_connection(daemon: Daemon) -> None:
    sock = daemon.raw_tls()
    resp, body = send(sock, "GET", "/images/no-such-ticket")
    assert resp.status == 403
    assert resp.getheader("Content-Type", "").startswith("text/plain")
    assert b"no-such-ticket" not in body
    assert resp.getheader("Connection") == "close"
    assert closed_by_server(sock)
    sock.close()


def test_expired_ticket_is_403(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    daemon.result("Ticket.extend", uuid=ticket_id, timeout=0)
    sock = daemon.raw_unix()
    resp, body = send(sock, "GET", f"/images/{ticket_id}")
    assert resp.status == 403
    assert b"expired" in body
    assert closed_by_server(sock)
    sock.close()
    # Extending revives it: expiry is not a removal.
    daemon.result("Ticket.extend", uuid=ticket_id, timeout=300)
    sock = daemon.raw_unix()
    resp, _ = send(sock, "GET", f"/images/{ticket_id}", {"Range": "bytes=0-0"})
    sock.close()
    assert resp.status == 206


def test_expired_by_timeout_ticket_is_403(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, timeout=1)
    time.sleep(1.5)
    sock = daemon.raw_unix()
    resp, _ = send(sock, "GET", f"/images/{ticket_id}")
    sock.close()
    assert resp.status == 403


def test_removed_ticket_is_403(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    resp, _ = send(sock, "GET", f"/images/{ticket_id}", {"Range": "bytes=0-0"})
    assert resp.status == 206
    assert daemon.result("Ticket.remove", uuid=ticket_id) is True
    # The connection that was reading the ticket was aborted by the cancel.
    assert closed_by_server(sock)
    sock.close()
    sock = daemon.raw_unix()
    resp, _ = send(sock, "GET", f"/images/{ticket_id}")
    assert resp.status == 403
    assert closed_by_server(sock)
    sock.close()


@pytest.mark.parametrize(
    "method,headers,body",
    [
        ("PUT", {"Content-Length": "3"}, b"abc"),
        ("PATCH", {"Content-Type": "application/json", "Content-Length": "15"}, b'{"op": "flush"}'),
    ],
)
def test_write_on_read_only_ticket_is_403(
    daemon: Daemon, method: str, headers: dict[str, str], body: bytes
) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB, ops=("read",))
    sock = daemon.raw_unix()
    resp, text = send(sock, method, f"/images/{ticket_id}", headers, body)
    assert resp.status == 403
    assert b"write" in text
    assert closed_by_server(sock)
    sock.close()
    assert path.read_bytes() == b"\0" * MiB


@pytest.mark.parametrize("transport", ["https", "unix"])
def test_refused_upload_gets_its_403_not_a_broken_pipe(daemon: Daemon, transport: str) -> None:
    # The server refuses after the head while the client is still sending
    # the body; closing at once would reset the connection under the client.
    conn = daemon.https() if transport == "https" else daemon.unix()
    conn.request("PUT", "/images/no-such-ticket", body=b"x" * (8 * MiB))
    resp = conn.getresponse()
    assert resp.status == 403
    assert resp.read() == b"No such ticket\n"
    conn.close()


# Malformed requests: 400 and the connection stays usable.


@pytest.mark.parametrize(
    "method,headers,body,names",
    [
        (
            "PUT",
            {"Content-Range": "bytes 0-9/*", "Content-Length": "5"},
            b"abcde",
            b"Content-Range",
        ),
        (
            "PUT",
            {"Content-Range": "bytes 9-0/*", "Content-Length": "5"},
            b"abcde",
            b"Content-Range",
        ),
        ("PUT", {"Content-Range": "bytes=0-4", "Content-Length": "5"}, b"abcde", b"Content-Range"),
        ("PUT", {"Content-Length": "5x"}, b"", b"Content-Length"),
        ("GET", {"Range": "bytes=abc"}, b"", b"Range"),
        ("GET", {"Range": "bytes=0-1,5-6"}, b"", b"Range"),
        ("GET", {"Range": "bytes=9-1"}, b"", b"Range"),
        ("GET", {"Range": "pages=0-1"}, b"", b"Range"),
    ],
)
def test_malformed_request_is_400_naming_the_header(
    daemon: Daemon, method: str, headers: dict[str, str], body: bytes, names: bytes
) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    resp, text = send(sock, method, f"/images/{ticket_id}", headers, body)
    assert resp.status == 400
    assert names in text
    if "Content-Length" in headers and headers["Content-Length"].isdigit():
        assert still_open(sock, ticket_id)
    sock.close()
    assert path.read_bytes() == b"\0" * MiB


def test_chunked_body_longer_than_content_range_is_400_and_not_written(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    resp, text = send(
        sock,
        "PUT",
        f"/images/{ticket_id}",
        {"Content-Range": "bytes 0-4/*", "Transfer-Encoding": "chunked"},
        b"a\r\n0123456789\r\n0\r\n\r\n",
    )
    sock.close()
    assert resp.status == 400
    assert b"Content-Range" in text
    assert path.read_bytes()[:16] == b"\0" * 16


def test_chunked_body_shorter_than_content_range_is_400(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    resp, text = send(
        sock,
        "PUT",
        f"/images/{ticket_id}",
        {"Content-Range": "bytes 0-9/*", "Transfer-Encoding": "chunked"},
        b"3\r\nabc\r\n0\r\n\r\n",
    )
    assert resp.status == 400
    assert b"got 3 bytes" in text
    assert still_open(sock, ticket_id)
    sock.close()


def test_put_without_length_is_411_and_closes_connection(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    resp, _ = send(sock, "PUT", f"/images/{ticket_id}")
    assert resp.status == 411
    # A body may follow that no header announced: it cannot be told from
    # the next request, so the server does not read on.
    assert resp.getheader("Connection") == "close"
    assert closed_by_server(sock)
    sock.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Length": str(MiB + 1)},
        {"Content-Range": f"bytes {MiB - 2}-{MiB}/*", "Content-Length": "3"},
    ],
)
def test_put_beyond_ticket_size_is_416(daemon: Daemon, headers: dict[str, str]) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    # Only the head: the server must answer without waiting for the body.
    resp, _ = send(sock, "PUT", f"/images/{ticket_id}", headers)
    sock.close()
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{MiB}"
    assert path.stat().st_size == MiB


# Expect: 100-continue (curl sends it for uploads over 1 MiB).


def test_expect_continue_gets_100_before_the_body(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    sock = daemon.raw_tls(timeout=5)
    sock.sendall(
        f"PUT /images/{ticket_id} HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    # curl waits a second for this before sending the body anyway.
    sock.settimeout(0.9)
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        got = sock.recv(1)
        assert got
        interim += got
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.settimeout(5)
    sock.sendall(b"hello")
    resp, _ = read_reply(sock, "PUT")
    assert resp.status == 200
    assert still_open(sock, ticket_id)
    sock.close()
    assert path.read_bytes()[:5] == b"hello"


@pytest.mark.parametrize(
    "target,status",
    [
        ("/images/no-such-ticket", 403),
        ("/images/{ticket_id}?flush=bad", 400),
    ],
)
def test_refused_request_with_expect_continue_gets_final_status_and_close(
    daemon: Daemon, target: str, status: int
) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix(timeout=5)
    resp, _ = send(
        sock,
        "PUT",
        target.format(ticket_id=ticket_id),
        {"Content-Length": "5", "Expect": "100-continue"},
    )
    assert resp.status == status  # and no 100 before it
    # The body never came and never will: the server must not wait for it.
    assert resp.getheader("Connection") == "close"
    assert closed_by_server(sock)
    sock.close()


# Oversized input: refused before it is read.


def test_oversized_patch_body_is_413_without_reading_it(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_tls(timeout=5)
    # The 10 MB body is never sent: the reply must not wait for it.
    resp, body = send(
        sock,
        "PATCH",
        f"/images/{ticket_id}",
        {"Content-Type": "application/json", "Content-Length": str(10 * 1000**2)},
    )
    assert resp.status == 413
    assert b"4096" in body
    assert closed_by_server(sock)
    sock.close()


def test_oversized_patch_body_needs_authorization_first(daemon: Daemon) -> None:
    sock = daemon.raw_unix(timeout=5)
    resp, _ = send(
        sock,
        "PATCH",
        "/images/no-such-ticket",
        {"Content-Type": "application/json", "Content-Length": "10000000"},
    )
    sock.close()
    assert resp.status == 403


def test_oversized_chunked_patch_body_is_413(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix(timeout=5)
    chunk = b"x" * 5000
    resp, _ = send(
        sock,
        "PATCH",
        f"/images/{ticket_id}",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        b"%x\r\n%s\r\n" % (len(chunk), chunk),
    )
    sock.close()
    assert resp.status == 413


@pytest.mark.parametrize(
    "extra",
    [
        {f"X-Flood-{i}": "y" * 50 for i in range(1000)},  # many headers
        {"X-Huge": "y" * 100_000},  # one huge header
    ],
)
def test_header_flood_is_431(daemon: Daemon, extra: dict[str, str]) -> None:
    sock = daemon.raw_tls()
    lines = ["GET /images/whatever HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    except OSError:
        pass  # the reply must survive even if the server stopped reading
    resp, _ = read_reply(sock)
    assert resp.status == 431
    assert closed_by_server(sock)
    sock.close()


def test_many_headers_below_limit_are_accepted(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    resp, _ = send(
        sock, "OPTIONS", f"/images/{ticket_id}", {f"X-Extra-{i}": "y" * 100 for i in range(90)}
    )
    sock.close()
    assert resp.status == 200


# The control channel through the real daemon.


def test_control_garbage_is_parse_error(daemon: Daemon) -> None:
    reply = daemon.control.send_line(b"{this is not json")
    assert reply["error"]["code"] == -32700
    # The connection survives a garbage line.
    assert daemon.result("Ticket.list") is not None


def test_ticket_without_size_is_invalid_params_naming_size(daemon: Daemon) -> None:
    ticket = {
        "uuid": "no-size",
        "ops": ["read"],
        "timeout": 300,
        "url": (daemon.images / "x").as_uri(),
        "transfer_id": "t-no-size",
    }
    reply = daemon.call("Ticket.add", ticket=ticket)
    assert reply["error"]["code"] == -32602
    assert "size" in json.dumps(reply["error"].get("data"))


def test_concurrent_requests_on_many_connections(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"\x07" * MiB, ops=("read",))
    results: list[bytes] = []

    def read() -> None:
        conn = daemon.unix()
        conn.request("GET", f"/images/{ticket_id}")
        results.append(conn.getresponse().read())
        conn.close()

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [b"\x07" * MiB] * 6
