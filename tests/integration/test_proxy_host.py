"""Proxy mode on one machine, the link to the host: how the proxy reaches the
host daemon beside it, the certificate it presents, and what the proxy's
clients see when the host refuses, stalls, restarts, is busy or closes.

Both are real ``vdsm-imageio serve --local DIR`` daemons, the proxy started
with ``--proxy`` on the host's directory, as a newcomer starts them.
The proxy reaches the host over TLS on loopback or, as on any machine where
both run, through the unix socket the host advertises; the tests see which
in the kernel's socket table. Two machines: test_proxy_netns.py.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.integration.proxypair import add_pair, host_links, proxy_ticket
from tests.integration.proxyrig import (
    WAIT,
    MiB,
    host_and_proxy,
    pattern,
    request,
    wait_until,
)
from tests.integration.rawhttp import closed_by_server, send
from tests.support.daemon import Daemon
from vdsm_imageio import pki

if TYPE_CHECKING:
    from tests.support.daemon import MakeDaemon


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Daemon, Daemon]]:
    with host_and_proxy() as pair:
        yield pair


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
