"""The control socket itself: its file, its connections and their limits,
and notifications pushed on a connection next to its replies."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.control.rawcontrol import INFO, IO_TIMEOUT, Client, ticket
from vdsm_imageio.registry import Registry
from verbs import create_control
from verbs.errors import verb
from verbs.server import Connection, ControlServer
from verbs.ticket import ticket_methods


def test_connections_are_independent(server: ControlServer) -> None:
    a, b = Client(server.path), Client(server.path)
    try:
        a.result("Ticket.add", ticket=ticket())
        assert b.result("Ticket.status", uuid="secret-1")["transfer_id"] == "tx-1"
    finally:
        a.close()
        b.close()


def test_socket_mode_and_cleanup(registry: Registry, sock_path: str) -> None:
    srv = create_control(registry, sock_path, lambda: INFO, mode=0o600)
    srv.start()
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    finally:
        srv.stop()
    assert not os.path.exists(sock_path)


def test_start_replaces_stale_socket(registry: Registry, sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # a daemon that died left its socket file
    with create_control(registry, sock_path, lambda: INFO) as srv:
        c = Client(srv.path)
        assert c.result("Ticket.list") == []
        c.close()


def test_start_refuses_live_socket(server: ControlServer, registry: Registry) -> None:
    other = create_control(registry, server.path, lambda: INFO)
    with pytest.raises(OSError, match="Another service"):
        other.start()
    c = Client(server.path)
    assert c.result("Ticket.list") == []
    c.close()


def test_start_refuses_to_replace_regular_file(
    registry: Registry,
    sock_path: str,
) -> None:
    Path(sock_path).write_text("not a socket")
    with pytest.raises(FileExistsError):
        create_control(registry, sock_path, lambda: INFO).start()
    assert Path(sock_path).read_text() == "not a socket"


def test_stop_closes_open_connections(registry: Registry, sock_path: str) -> None:
    srv = create_control(registry, sock_path, lambda: INFO)
    srv.start()
    c = Client(srv.path)
    try:
        assert c.result("Ticket.list") == []
        srv.stop()
        assert c.at_eof()
        assert srv.connections() == 0
    finally:
        c.close()


def test_connection_limit(registry: Registry, sock_path: str) -> None:
    with ControlServer(sock_path, ticket_methods(registry), max_connections=1) as srv:
        first = Client(srv.path)
        first.result("Ticket.list")
        second = Client(srv.path)
        try:
            assert second.at_eof()
            assert first.result("Ticket.list") == []
        finally:
            first.close()
            second.close()


class Subscriptions:
    """A stand-in Events namespace: remembers connections, tracks closes."""

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.closed = threading.Event()

    def subscribe(self, conn: Connection) -> bool:
        self.conns.append(conn)
        conn.on_close(lambda c: self.closed.set())
        return True


@pytest.fixture
def events_server(
    registry: Registry, sock_path: str
) -> Iterator[tuple[ControlServer, Subscriptions]]:
    subs = Subscriptions()
    methods = {
        **ticket_methods(registry),
        "Events.subscribe": verb(subs.subscribe, pass_connection=True),
    }
    with ControlServer(sock_path, methods) as srv:
        yield srv, subs


def test_notifications_never_interleave_with_replies(
    events_server: tuple[ControlServer, Subscriptions],
) -> None:
    srv, subs = events_server
    c = Client(srv.path)
    try:
        assert c.result("Events.subscribe") is True
        (conn,) = subs.conns
        big = {"payload": "n" * 200_000}
        count = 50

        def push() -> None:
            for i in range(count):
                conn.notify("Test.tick", {"i": i, **big})

        pusher = threading.Thread(target=push)
        pusher.start()
        lines: list[Any] = []
        for i in range(count):
            c.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": "Ticket.list"}))
        while len(lines) < 2 * count:
            lines.append(c.recv())  # each line is one whole JSON text
        pusher.join(IO_TIMEOUT)
        ticks = [m["params"]["i"] for m in lines if m.get("method") == "Test.tick"]
        ids = [m["id"] for m in lines if "id" in m]
        assert ticks == list(range(count))
        assert ids == list(range(count))
    finally:
        c.close()


def test_close_runs_callbacks_and_notify_fails(
    events_server: tuple[ControlServer, Subscriptions],
) -> None:
    srv, subs = events_server
    c = Client(srv.path)
    assert c.result("Events.subscribe") is True
    c.close()
    assert subs.closed.wait(IO_TIMEOUT)
    assert subs.conns[0].notify("Test.tick", {}) is False


def test_peer_that_stops_reading_is_dropped(
    events_server: tuple[ControlServer, Subscriptions],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("verbs.connection.SEND_TIMEOUT", 0.5)
    srv, subs = events_server
    c = Client(srv.path)
    try:
        assert c.result("Events.subscribe") is True
        (conn,) = subs.conns
        payload = {"fill": "x" * 65536}
        # The socket buffers hold a few hundred KiB; then sends time out.
        sent = [conn.notify("Test.fill", payload) for _ in range(64)]
        assert sent[0] is True
        assert sent[-1] is False
        assert subs.closed.wait(IO_TIMEOUT)
    finally:
        c.close()
