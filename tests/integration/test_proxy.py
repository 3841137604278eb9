"""Proxy mode on one machine: a proxy daemon relays to a host daemon beside it.

Both are real ``vdsm-imageio serve --local DIR`` daemons, the proxy started
with ``--proxy`` on the host's directory, as a newcomer starts them. The
proxy reaches the host over TLS on loopback or, as on any machine where
both run, through the unix socket the host advertises; the tests see which
in the kernel's socket table. Two machines: test_proxy_netns.py.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import random
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.integration.clientrun import run_client
from tests.integration.proxypair import Pair, add_pair, free_port, host_links, proxy_ticket, stop
from tests.integration.rawhttp import closed_by_server, send
from tests.support.daemon import Daemon, ini, new_directory
from vdsm_imageio import pki

if TYPE_CHECKING:
    from tests.support.daemon import MakeDaemon

MiB = 1024**2
WAIT = 10.0
IO_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Daemon, Daemon]]:
    """A host daemon and a proxy beside it with the ticket API on TCP."""
    host = Daemon(new_directory())
    try:
        proxy = Daemon(host.dir, ini({"control": {"ticket_port": free_port()}}), proxy=True)
    except BaseException:
        stop(host)
        raise
    try:
        yield host, proxy
    finally:
        try:
            stop(proxy)
        finally:
            stop(host)


def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def request(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, target, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp, resp.read()


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def host_connections(host: Daemon, ticket_id: str) -> int:
    return int(host.status(ticket_id)["connections"])


# The control side.


def test_ticket_api_on_tcp_drives_the_proxy(rig: tuple[Daemon, Daemon]) -> None:
    host, proxy = rig
    ticket_id, _ = host.add_ticket(size=MiB, data=pattern(MiB))
    tickets = http.client.HTTPConnection("127.0.0.1", proxy.ticket_port, timeout=IO_TIMEOUT)
    ticket = proxy_ticket(host, ticket_id, size=MiB, ops=("read",))
    resp, _ = request(tickets, "PUT", f"/tickets/{ticket_id}", json.dumps(ticket).encode())
    assert resp.status == 200
    resp, body = request(tickets, "GET", f"/tickets/{ticket_id}")
    assert resp.status == 200
    assert json.loads(body)["url"] == ticket["url"]
    data = proxy.https()
    resp, body = request(data, "GET", f"/images/{ticket_id}")
    assert resp.status == 200 and body == pattern(MiB)
    resp, _ = request(tickets, "DELETE", f"/tickets/{ticket_id}")
    assert resp.status == 204
    resp, _ = request(proxy.https(), "GET", f"/images/{ticket_id}")
    assert resp.status == 403


def test_ticket_api_on_tcp_listens_on_loopback_only(rig: tuple[Daemon, Daemon]) -> None:
    _, proxy = rig
    # Bound to 127.0.0.1, not to every loopback address (nor any other).
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", proxy.ticket_port), timeout=IO_TIMEOUT)
    # The data port never routes /tickets.
    resp, _ = request(proxy.https(), "GET", "/tickets/x")
    assert resp.status == 404


def test_json_rpc_stays_available_on_the_proxy(rig: tuple[Daemon, Daemon]) -> None:
    host, proxy = rig
    pair = add_pair(host, proxy, size=MiB)
    status = proxy.status(pair.ticket_id)
    assert status["url"] == f"https://127.0.0.1:{host.port}/images/{pair.ticket_id}"


# What the proxy advertises.


def test_options_through_the_proxy_are_the_hosts_at_most(
    make_daemon: MakeDaemon,
) -> None:
    host = make_daemon(http={"max_readers": 3, "max_writers": 2})
    proxy = make_daemon(directory=host.dir, proxy=True, control={"ticket_port": 0})
    pair = add_pair(host, proxy, size=5 * MiB)
    resp, body = request(proxy.https(), "OPTIONS", pair.target)
    assert resp.status == 200
    options = json.loads(body)
    assert options["features"] == ["checksum", "extents", "zero", "flush"]
    assert (options["max_readers"], options["max_writers"]) == (3, 2)
    assert options["size"] == 5 * MiB
    # The proxy's own unix socket, never the host's: a client of the proxy
    # cannot reach the host's.
    assert options["unix_socket"] == proxy.unix_socket != host.unix_socket
    assert resp.getheader("Allow") == "OPTIONS,GET,PUT,PATCH"


def test_options_of_a_read_only_proxy_ticket(rig: tuple[Daemon, Daemon]) -> None:
    host, proxy = rig
    pair = add_pair(host, proxy, size=MiB, ops=("read",))
    resp, body = request(proxy.https(), "OPTIONS", pair.target)
    options = json.loads(body)
    assert options["features"] == ["checksum", "extents"]
    assert options["max_writers"] == 0
    assert resp.getheader("Allow") == "OPTIONS,GET"


# Data.


def test_upload_and_download_through_the_proxy(rig: tuple[Daemon, Daemon]) -> None:
    host, proxy = rig
    size = 24 * MiB + 4097
    pair = add_pair(host, proxy, size=size)
    data = pattern(size, seed=1)
    conn = proxy.https(timeout=60)
    resp, _ = request(conn, "PUT", pair.target, data)
    assert resp.status == 200
    assert pair.path.read_bytes() == data
    resp, body = request(conn, "GET", pair.target)
    assert resp.status == 200 and body == data
    assert proxy.status(pair.ticket_id)["transferred"] == size


def test_random_io_zero_and_flush_reach_the_host_disk(rig: tuple[Daemon, Daemon]) -> None:
    host, proxy = rig
    size = 8 * MiB
    pair = add_pair(host, proxy, size=size)
    model = bytearray(size)
    conn = proxy.https()
    writes = [(0, 4096), (4095, 3), (MiB - 7, 2 * MiB + 11), (size - 513, 513)]
    for i, (offset, length) in enumerate(writes):
        chunk = pattern(length, seed=10 + i)
        resp, _ = request(
            conn,
            "PUT",
            f"{pair.target}?flush=n",
            chunk,
            {"Content-Range": f"bytes {offset}-{offset + length - 1}/{size}"},
        )
        assert resp.status == 200
        model[offset : offset + length] = chunk
    zero = {"op": "zero", "offset": MiB, "size": MiB + 5, "flush": False}
    resp, _ = request(conn, "PATCH", pair.target, json.dumps(zero).encode())
    assert resp.status == 200
    model[MiB : 2 * MiB + 5] = bytes(MiB + 5)
    resp, _ = request(conn, "PATCH", pair.target, json.dumps({"op": "flush"}).encode())
    assert resp.status == 200
    assert pair.path.read_bytes() == model
    for first, last in [(0, 0), (4090, 4100), (MiB - 10, 2 * MiB + 20), (size - 600, size - 1)]:
        resp, body = request(conn, "GET", pair.target, headers={"Range": f"bytes={first}-{last}"})
        assert resp.status == 206
        assert resp.getheader("Content-Range") == f"bytes {first}-{last}/{size}"
        assert body == model[first : last + 1]


def test_extents_through_the_proxy_are_the_hosts(rig: tuple[Daemon, Daemon]) -> None:
    host, proxy = rig
    size = 16 * MiB
    pair = add_pair(host, proxy, size=size)
    with open(pair.path, "r+b") as f:
        for offset in (MiB, 5 * MiB + 4096, 15 * MiB):
            f.seek(offset)
            f.write(pattern(64 * 1024, seed=offset))
    for query in ("", "?context=zero", "?context=zero&start=1048576&length=5242880"):
        target = f"{pair.target}/extents{query}"
        resp, through_proxy = request(proxy.https(), "GET", target)
        assert resp.status == 200
        resp, direct = request(host.https(), "GET", target)
        assert json.loads(through_proxy) == json.loads(direct)
    resp, _ = request(proxy.https(), "GET", f"{pair.target}/extents?context=dirty")
    assert resp.status == 404


def test_checksum_through_the_proxy_is_computed_on_the_host(
    rig: tuple[Daemon, Daemon],
) -> None:
    host, proxy = rig
    size = 12 * MiB + 512
    pair = add_pair(host, proxy, size=size, data=pattern(3 * MiB, seed=5))
    target = f"{pair.target}/checksum?algorithm=sha256&block_size=1048576"
    resp, through_proxy = request(proxy.https(), "GET", target)
    assert resp.status == 200, through_proxy
    resp, direct = request(host.https(), "GET", target)
    assert json.loads(through_proxy) == json.loads(direct)
    # Computed by the host for its ticket (twice: through the proxy, then
    # directly), never read through the proxy.
    transfer = host.status(pair.ticket_id)["transfer_id"]
    assert host.log().count(f"CHECKSUM transfer={transfer} ") == 2
    assert "relayed=yes" in proxy.log()


# How the proxy reaches the host.


@pytest.mark.parametrize("unix_socket", [True, False], ids=["unix-socket", "tls"])
def test_proxy_uses_the_hosts_unix_socket_on_the_same_machine(
    make_daemon: MakeDaemon, unix_socket: bool
) -> None:
    host = make_daemon()
    proxy = make_daemon(
        directory=host.dir,
        proxy=True,
        control={"ticket_port": 0},
        backend_http={"unix_socket": unix_socket},
    )
    pair = add_pair(host, proxy, size=2 * MiB, data=pattern(2 * MiB))
    conn = proxy.https()
    resp, body = request(conn, "GET", pair.target)
    assert resp.status == 200 and body == pattern(2 * MiB)
    # The client's connection is open: so is the proxy's to the host.
    expected = {"tls": 0, "unix": 1} if unix_socket else {"tls": 1, "unix": 0}
    assert host_links(proxy, host) == expected
    conn.close()


# Failures of the host.


def test_host_refusal_keeps_its_status_and_closes(rig: tuple[Daemon, Daemon]) -> None:
    host, proxy = rig
    pair = add_pair(host, proxy, size=MiB)
    assert host.result("Ticket.remove", uuid=pair.ticket_id) is True
    sock = proxy.raw_tls()
    try:
        resp, body = send(sock, "GET", pair.target)
        assert resp.status == 403
        assert body.decode().startswith(f"Host daemon at 127.0.0.1:{host.port}")
        assert "No such ticket" in body.decode()
        assert closed_by_server(sock)
    finally:
        sock.close()


def test_host_that_stops_answering_is_504(make_daemon: MakeDaemon) -> None:
    host = make_daemon()
    proxy = make_daemon(
        directory=host.dir, proxy=True, control={"ticket_port": 0}, backend_http={"timeout": 1}
    )
    pair = add_pair(host, proxy, size=MiB)
    conn = proxy.https()
    resp, _ = request(conn, "OPTIONS", pair.target)
    assert resp.status == 200
    os.kill(host.proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        resp, body = request(conn, "GET", pair.target)
        waited = time.monotonic() - start
    finally:
        os.kill(host.proc.pid, signal.SIGCONT)
    assert resp.status == 504
    assert body.decode().strip() == (
        f"Host daemon at 127.0.0.1:{host.port} (unix socket) did not answer within 1 seconds"
    )
    assert waited < WAIT


def test_host_restarted_mid_transfer_fails_clearly_and_a_retry_works(
    make_daemon: MakeDaemon,
) -> None:
    host = make_daemon()
    proxy = make_daemon(directory=host.dir, proxy=True, control={"ticket_port": 0})
    size = 64 * MiB
    data = pattern(size, seed=7)
    pair = add_pair(host, proxy, size=size, data=data)
    # A download that reads slowly, so the host goes away in its middle.
    conn = proxy.https(timeout=WAIT)
    conn.request("GET", pair.target)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read(MiB) == data[:MiB]
    host.kill()
    start = time.monotonic()
    got = MiB
    with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
        while chunk := resp.read(MiB):
            got += len(chunk)
    assert time.monotonic() - start < WAIT, "the client waited for a host that is gone"
    assert got < size, "a body cut short: the client can tell"
    # Down: a clear error at once.
    resp, body = request(proxy.https(), "PUT", pair.target, b"x" * 4096)
    assert resp.status == 502
    assert body.decode().startswith(f"Cannot reach the host daemon at 127.0.0.1:{host.port}")
    # Back on its port, with the ticket vdsm adds again: the retry works.
    back = make_daemon(directory=host.dir, port=host.port)
    ticket = {
        "uuid": pair.ticket_id,
        "size": size,
        "ops": ["read", "write"],
        "timeout": 300,
        "url": pair.path.as_uri(),
        "transfer_id": "after-restart",
    }
    back.result("Ticket.add", ticket=ticket)
    resp, body = request(proxy.https(timeout=60), "GET", pair.target)
    assert resp.status == 200 and body == data


# Cancel.


def _stalled_download(proxy: Daemon, pair: Pair) -> tuple[socket.socket, int]:
    """A download whose client stopped reading; the socket and bytes read."""
    sock = proxy.raw_tls(timeout=WAIT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET {pair.target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = len(sock.recv(64 * 1024))
    return sock, got


def _drained(sock: socket.socket) -> bool:
    """Read what is left; True once the server closed the connection."""
    deadline = time.monotonic() + WAIT
    sock.settimeout(WAIT)
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4 * MiB):
                return True
    except (ConnectionError, OSError):
        return True
    return False


@pytest.mark.parametrize("side", ["proxy", "host"])
def test_ticket_removal_on_either_side_cancels(rig: tuple[Daemon, Daemon], side: str) -> None:
    host, proxy = rig
    size = 128 * MiB
    pair = add_pair(host, proxy, size=size, data=pattern(MiB))
    sock, _ = _stalled_download(proxy, pair)
    try:
        wait_until("the host serves the download", lambda: host.status(pair.ticket_id)["active"])
        daemon = proxy if side == "proxy" else host
        start = time.monotonic()
        assert daemon.result("Ticket.remove", uuid=pair.ticket_id) is True
        assert time.monotonic() - start < WAIT
        assert _drained(sock), "the client's connection stayed open"
    finally:
        sock.close()
    if side == "proxy":
        # The proxy closed its connection to the host with the client's.
        wait_until("no connection on the host", lambda: host_connections(host, pair.ticket_id) == 0)
        assert not host.status(pair.ticket_id)["active"]
    else:
        resp, _ = request(proxy.https(), "GET", pair.target)
        assert resp.status == 403


# Our own client.


def test_our_client_through_the_proxy(rig: tuple[Daemon, Daemon], tmp_path: Any) -> None:
    host, proxy = rig
    size = 20 * MiB
    source = tmp_path / "source.raw"
    with open(source, "wb") as f:
        f.truncate(size)
        f.seek(3 * MiB)
        f.write(pattern(5 * MiB, seed=3))
    pair = add_pair(host, proxy, size=size, ops=("write",))
    url = f"https://127.0.0.1:{proxy.port}{pair.target}"
    done = run_client("upload", source, url, "--cafile", proxy.ca)
    assert done.returncode == 0, done.stderr
    assert pair.path.read_bytes() == source.read_bytes()
    back = tmp_path / "back.raw"
    done = run_client("download", url, back, "--cafile", proxy.ca)
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == source.read_bytes()


def test_remove_on_the_proxy_stops_a_request_waiting_for_the_host(
    make_daemon: MakeDaemon,
) -> None:
    host = make_daemon()
    proxy = make_daemon(directory=host.dir, proxy=True, control={"ticket_port": 0})
    pair = add_pair(host, proxy, size=MiB)
    conn = proxy.https(timeout=WAIT)
    resp, _ = request(conn, "OPTIONS", pair.target)
    assert resp.status == 200
    os.kill(host.proc.pid, signal.SIGSTOP)
    try:
        # The proxy waits for the stopped host (up to [backend_http] timeout,
        # a minute); the removal must not wait with it.
        conn.request("GET", pair.target)
        wait_until("the proxy serves the GET", lambda: proxy.status(pair.ticket_id)["active"])
        start = time.monotonic()
        assert proxy.result("Ticket.remove", uuid=pair.ticket_id) is True
        assert time.monotonic() - start < WAIT
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()
    finally:
        os.kill(host.proc.pid, signal.SIGCONT)


def test_host_busy_is_503_before_any_byte(make_daemon: MakeDaemon) -> None:
    host = make_daemon(http={"max_readers": 1})
    proxy = make_daemon(directory=host.dir, proxy=True, control={"ticket_port": 0})
    pair = add_pair(host, proxy, size=64 * MiB, data=pattern(MiB))
    conn = proxy.https()
    resp, body = request(conn, "OPTIONS", pair.target)
    assert resp.status == 200 and json.loads(body)["max_readers"] == 1
    # Another client reads from the host directly and holds its one reader.
    reader = host.raw_tls()
    try:
        reader.sendall(f"GET {pair.target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert reader.recv(4096).startswith(b"HTTP/1.1 200")
        resp, body = request(conn, "GET", pair.target)
        # The host's refusal, not a 200 whose body breaks off.
        assert resp.status == 503
        assert resp.getheader("Retry-After") == "1"
        assert "Too many reader connections" in body.decode()
    finally:
        reader.close()


def test_a_keep_alive_the_host_closed_is_reopened(make_daemon: MakeDaemon) -> None:
    host = make_daemon()
    proxy = make_daemon(directory=host.dir, proxy=True, control={"ticket_port": 0})
    # The host closes a connection idle for a second; the client's to the
    # proxy stays (the proxy's ticket has the default minute).
    ticket_id, path = host.add_ticket(size=MiB, data=pattern(MiB), inactivity_timeout=1)
    proxy.result(
        "Ticket.add", ticket=proxy_ticket(host, ticket_id, size=MiB, ops=("read", "write"))
    )
    conn = proxy.https()
    for closed in (1, 2):
        resp, body = request(conn, "GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-9"})
        assert resp.status == 206 and body == pattern(MiB)[:10]
        wait_until(
            "the host closed the idle connection",
            lambda n=closed: host.log().count("CLOSED peer=") >= n,  # type: ignore[misc]
        )
    resp, _ = request(conn, "PUT", f"/images/{ticket_id}", b"y" * 10)
    assert resp.status == 200
    assert path.read_bytes()[:10] == b"y" * 10


def _client_certificate(pki_dir: Path, out: Path) -> tuple[Path, Path]:
    """A client certificate from the host's CA, as the proxy's host would get."""
    loaded = pki.load_pair(pki_dir / "ca.pem", pki_dir / "ca.key")
    assert loaded is not None
    ca, ca_key = loaded
    key = pki.new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = pki.issue_cert(
        ca,
        ca_key,
        key,
        now=now,
        names=("proxy.example",),
        days=1,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    cert_file, key_file = out / "client.pem", out / "client.key"
    cert_file.write_bytes(pki.cert_pem(cert))
    key_file.write_bytes(pki.key_pem(key))
    return cert_file, key_file


def test_proxy_presents_its_certificate_to_a_host_that_requires_one(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    host = make_daemon(tls={"enable_client_auth": True})
    cert_file, key_file = _client_certificate(host.dir / "pki", tmp_path)
    proxy = make_daemon(
        directory=host.dir,
        proxy=True,
        control={"ticket_port": 0},
        backend_http={"unix_socket": False, "cert_file": cert_file, "key_file": key_file},
    )
    pair = add_pair(host, proxy, size=MiB, data=pattern(MiB))
    # The host refuses a client without a certificate...
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        request(host.https(), "GET", pair.target)
    # ...and serves the proxy, which presents one.
    resp, body = request(proxy.https(), "GET", pair.target)
    assert resp.status == 200 and body == pattern(MiB)


def test_checksum_waits_for_a_host_that_reads_the_whole_image(
    make_daemon: MakeDaemon,
) -> None:
    # The host answers a checksum only once it has read the image: longer
    # than [backend_http] timeout may pass, without a byte, on a large one.
    host = make_daemon()
    proxy = make_daemon(
        directory=host.dir, proxy=True, control={"ticket_port": 0}, backend_http={"timeout": 1}
    )
    pair = add_pair(host, proxy, size=256 * MiB, data=pattern(MiB))
    conn = proxy.https(timeout=60)
    resp, _ = request(conn, "OPTIONS", pair.target)
    assert resp.status == 200
    # A host that takes its time: stopped for longer than the timeout.
    os.kill(host.proc.pid, signal.SIGSTOP)
    try:
        conn.request("GET", f"{pair.target}/checksum")
        time.sleep(2.5)
    finally:
        os.kill(host.proc.pid, signal.SIGCONT)
    resp = conn.getresponse()
    through_proxy = resp.read()
    assert resp.status == 200, through_proxy
    resp, direct = request(host.https(), "GET", f"{pair.target}/checksum")
    assert json.loads(through_proxy) == json.loads(direct)
