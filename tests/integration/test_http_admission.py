"""Connection admission against a real daemon: budgets, eviction, reserve, threads.

The policy itself is tested in tests/unit/test_admission.py; these tests
check that the daemon applies it to real sockets: TLS and unix, silent,
half-handshaken and authorized ones. Sources other than 127.0.0.1 are
other peers: all of 127.0.0.0/8 is loopback on Linux.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

from tests.integration.rawhttp import closed_by_server, send, still_open

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

MiB = 1024**2

# The sockets fixture: keeps a socket open until the test ends.
Keep = Callable[[socket.socket], socket.socket]


@pytest.fixture
def sockets() -> Iterator[Keep]:
    """Keep a socket until the test ends."""
    with ExitStack() as stack:

        def keep(sock: socket.socket) -> socket.socket:
            stack.callback(sock.close)
            return sock

        yield keep


def tcp_from(daemon: Daemon, source: str, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", daemon.port), timeout=timeout, source_address=(source, 0)
    )


def wait_connections(daemon: Daemon, count: int, timeout: float = 5.0) -> None:
    """Until the daemon holds count connections (the lobby accepts on its own time)."""
    deadline = time.monotonic() + timeout
    while (have := daemon.result("Service.info")["connections"]) != count:
        assert time.monotonic() < deadline, f"daemon holds {have} connections, expected {count}"
        time.sleep(0.02)


def open_quietly(sock: socket.socket) -> bool:
    """Whether the server left a silent socket open (for a short look)."""
    return not closed_by_server(sock, timeout=0.2)


def local_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def evictions(daemon: Daemon) -> list[str]:
    """The EVICTED lines that name a peer (the first 20 a second)."""
    return [line for line in daemon.log().splitlines() if "EVICTED peer=" in line]


def wait_evictions(daemon: Daemon, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while daemon.evicted() < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return evictions(daemon)


def closed_after_reading(sock: socket.socket, timeout: float = 3.0) -> bool:
    """True if the server closes within timeout, whatever it sent before."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


# Unauthenticated budget and per-peer cap.


def test_full_budget_closes_the_oldest_unauthenticated_connection(
    make_daemon: MakeDaemon, sockets: Keep
) -> None:
    daemon = make_daemon(http={"max_unauthenticated": 3})
    held: list[socket.socket] = []
    for i in range(3):
        held.append(sockets(tcp_from(daemon, f"127.0.0.{2 + i}")))
        wait_connections(daemon, i + 1)
    newest = sockets(tcp_from(daemon, "127.0.0.9"))
    assert closed_by_server(held[0], timeout=3)
    assert [open_quietly(s) for s in (*held[1:], newest)] == [True, True, True]
    (line,) = wait_evictions(daemon, 1)
    assert f"EVICTED peer=127.0.0.2:{local_port(held[0])} reason=max_unauthenticated " in line
    assert "limit=3" in line


def test_full_peer_cap_closes_that_peers_oldest_only(
    make_daemon: MakeDaemon, sockets: Keep
) -> None:
    daemon = make_daemon(http={"max_unauthenticated_per_peer": 2})
    other = sockets(tcp_from(daemon, "127.0.0.3"))
    mine = [sockets(tcp_from(daemon, "127.0.0.2")) for _ in range(2)]
    wait_connections(daemon, 3)
    newest = sockets(tcp_from(daemon, "127.0.0.2"))
    assert closed_by_server(mine[0], timeout=3)
    assert [open_quietly(s) for s in (other, mine[1], newest)] == [True, True, True]
    (line,) = wait_evictions(daemon, 1)
    assert "reason=max_unauthenticated_per_peer limit=2 group=127.0.0.2 " in line


def test_unix_socket_peers_are_capped_per_user(make_daemon: MakeDaemon, sockets: Keep) -> None:
    daemon = make_daemon(http={"max_unauthenticated_per_peer": 2})
    first = sockets(daemon.raw_unix())
    wait_connections(daemon, 1)
    rest = [sockets(daemon.raw_unix()) for _ in range(2)]
    assert closed_by_server(first, timeout=3)
    assert all(open_quietly(s) for s in rest)
    (line,) = wait_evictions(daemon, 1)
    assert f"group=unix uid={os.getuid()} " in line


def test_a_half_done_tls_handshake_counts_as_unauthenticated(
    make_daemon: MakeDaemon, sockets: Keep
) -> None:
    daemon = make_daemon(http={"max_unauthenticated": 2})
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"data")
    # A ClientHello the server answers; the client never finishes.
    half = sockets(daemon.raw_tcp())
    half.sendall(_client_hello())
    silent_tls = sockets(daemon.raw_tls())
    wait_connections(daemon, 2)
    client = daemon.https(timeout=5)
    client.request("GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-3"})
    assert client.getresponse().read() == b"data"
    client.close()
    assert closed_after_reading(half)
    assert open_quietly(silent_tls)


# Authorized connections.


def test_authorized_connection_is_never_evicted(make_daemon: MakeDaemon, sockets: Keep) -> None:
    daemon = make_daemon(http={"max_unauthenticated": 2, "max_unauthenticated_per_peer": 2})
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"abc")
    authorized = sockets(daemon.raw_tls())
    resp, body = send(authorized, "GET", f"/images/{ticket_id}", {"Range": "bytes=0-2"})
    assert (resp.status, body) == (206, b"abc")
    for _ in range(20):
        sockets(daemon.raw_tcp())
    wait_connections(daemon, 3)
    wait_evictions(daemon, 18)
    assert daemon.evicted() == 18
    resp, body = send(authorized, "GET", f"/images/{ticket_id}", {"Range": "bytes=1-2"})
    assert (resp.status, body) == (206, b"bc")


def test_options_on_a_live_ticket_authorizes_options_star_does_not(
    make_daemon: MakeDaemon, sockets: Keep
) -> None:
    daemon = make_daemon(http={"max_unauthenticated": 2})
    ticket_id, _ = daemon.add_ticket(size=MiB)
    probed = sockets(daemon.raw_unix())
    resp, _ = send(probed, "OPTIONS", f"/images/{ticket_id}")
    assert resp.status == 200
    star = sockets(daemon.raw_unix())
    resp, _ = send(star, "OPTIONS", "/images/*")
    assert resp.status == 200
    for _ in range(2):
        sockets(daemon.raw_unix())
    assert closed_by_server(star, timeout=3)
    assert still_open(probed, ticket_id)


def test_authorized_connections_past_max_connections_get_503(
    make_daemon: MakeDaemon, sockets: Keep
) -> None:
    daemon = make_daemon(http={"max_connections": 2})
    ticket_id, _ = daemon.add_ticket(size=MiB)
    held = [sockets(daemon.raw_unix()) for _ in range(2)]
    for sock in held:
        assert still_open(sock, ticket_id)
    # Admitted, unlike before: only proving a ticket needs an authorized slot.
    extra = sockets(daemon.raw_unix())
    resp, body = send(extra, "OPTIONS", f"/images/{ticket_id}")
    assert resp.status == 503
    assert resp.getheader("Retry-After") == "1"
    assert b"2 open connections" in body
    held[0].close()
    deadline = time.monotonic() + 5
    while (resp := send(extra, "OPTIONS", f"/images/{ticket_id}")[0]).status == 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert resp.status == 200


def test_removed_ticket_closes_its_idle_authorized_connection(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_tls()
    assert still_open(sock, ticket_id)
    daemon.result("Ticket.remove", uuid=ticket_id)
    assert closed_by_server(sock, timeout=3)
    sock.close()


# Deadlines and resources.


def test_first_head_deadline_counts_the_tls_handshake(
    make_daemon: MakeDaemon, sockets: Keep
) -> None:
    daemon = make_daemon(http={"header_timeout": 4}, tls={"handshake_timeout": 10})
    start = time.monotonic()
    sock = sockets(daemon.raw_tcp())
    time.sleep(3)
    tls_sock = daemon.ssl_context.wrap_socket(sock, server_hostname="127.0.0.1")
    tls_sock.sendall(b"GET /images/x HTTP/1.1\r\nHost: x\r\n")
    assert closed_by_server(tls_sock, timeout=8)
    # 4 s from accept; a fresh 4 s after the handshake would be 7 s.
    assert time.monotonic() - start < 5.5
    assert "TIMEOUT peer=127.0.0.1" in daemon.log()


def test_hostile_sockets_hold_no_threads_and_few_descriptors(daemon: Daemon, sockets: Keep) -> None:
    baseline = _threads(daemon.proc.pid)
    fds = _fds(daemon.proc.pid)
    for i in range(300):
        sockets(tcp_from(daemon, f"127.0.0.{2 + i % 8}"))
    for _ in range(100):
        sockets(daemon.raw_tls())
    dripping = [sockets(daemon.raw_tls()) for _ in range(50)]
    for sock in dripping:
        sock.sendall(b"GET /images/x HTTP/1.1\r\nX-Drip: ")
    wait_evictions(daemon, 450 - 64, timeout=20)
    assert _threads(daemon.proc.pid) <= baseline + 2
    assert _fds(daemon.proc.pid) <= fds + 64 + 8


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _client_hello() -> bytes:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert re.match(rb"\x16\x03[\x01-\x03]", hello)
    return hello
