"""Proxy mode on one machine, the data path: uploads, downloads, random I/O,
extents and checksums relayed to the host daemon beside the proxy, our own
client through the proxy, and canceling a relayed request.

Both are real ``vdsm-imageio serve --local DIR`` daemons, the proxy started
with ``--proxy`` on the host's directory, as a newcomer starts them.
Two machines: test_proxy_netns.py.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.clientrun import run_client
from tests.integration.proxypair import Pair, add_pair
from tests.integration.proxyrig import (
    WAIT,
    MiB,
    host_and_proxy,
    host_connections,
    pattern,
    request,
    wait_until,
)
from tests.support.daemon import Daemon

if TYPE_CHECKING:
    from tests.support.daemon import MakeDaemon


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Daemon, Daemon]]:
    with host_and_proxy() as pair:
        yield pair


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
