"""Proxy mode on one machine, the control side: the ticket API on TCP, the
JSON-RPC channel, and what the proxy advertises to its clients.

Both are real ``vdsm-imageio serve --local DIR`` daemons, the proxy started
with ``--proxy`` on the host's directory, as a newcomer starts them.
Two machines: test_proxy_netns.py.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.integration.proxypair import add_pair, proxy_ticket
from tests.integration.proxyrig import (
    IO_TIMEOUT,
    MiB,
    host_and_proxy,
    pattern,
    request,
)
from tests.support.daemon import Daemon

if TYPE_CHECKING:
    from tests.support.daemon import MakeDaemon


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Daemon, Daemon]]:
    with host_and_proxy() as pair:
        yield pair


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
