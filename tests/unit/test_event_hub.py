"""Events.subscribe and the event hub over real control connections.

Each subscriber is a real ``verbs.connection.Connection`` serving one end of
a socketpair in its own thread, as the control server runs it; the test
holds the other end, as a client does.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from verbs.connection import Connection
from verbs.events import EVENTS, EventHub, event_methods

IO_TIMEOUT = 10.0


class Peer:
    """The client end of one control connection."""

    def __init__(self, hub: EventHub, ident: int) -> None:
        client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = client
        self.sock.settimeout(IO_TIMEOUT)
        self.reader = client.makefile("rb")
        self.conn = Connection(server, ident)
        self._server_sock = server
        self.thread = threading.Thread(
            target=self.conn.serve, args=(event_methods(hub),), daemon=True
        )
        self.thread.start()

    def send(self, obj: Any) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self) -> Any:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"closed: {line!r}"
        return json.loads(line)

    def subscribe(self, **params: Any) -> dict[str, Any]:
        """Send Events.subscribe; return its reply, queue notifications seen first."""
        self.send({"jsonrpc": "2.0", "id": 1, "method": "Events.subscribe", "params": params})
        while True:
            msg = self.recv()
            if "id" in msg:
                return dict(msg)

    def close(self) -> None:
        if self.sock.fileno() == -1:
            return
        self.reader.close()
        self.sock.close()
        self.thread.join(IO_TIMEOUT)


@pytest.fixture
def hub() -> Iterator[EventHub]:
    h = EventHub()
    yield h
    h.stop()


@pytest.fixture
def peers(hub: EventHub) -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def connect(hub: EventHub, peers: list[Peer]) -> Peer:
    p = Peer(hub, len(peers) + 1)
    peers.append(p)
    return p


def removed(n: int, uuid: str = "u") -> dict[str, Any]:
    return {"uuid": f"{uuid}{n}", "transfer_id": f"t{n}"}


def test_subscriber_gets_notifications_without_id(hub: EventHub, peers: list[Peer]) -> None:
    p = connect(hub, peers)
    assert p.subscribe()["result"] is True
    hub.publish("Ticket.removed", removed(1))
    assert p.recv() == {
        "jsonrpc": "2.0",
        "method": "Ticket.removed",
        "params": {"uuid": "u1", "transfer_id": "t1"},
    }


def test_subscriber_gets_only_the_events_it_named(hub: EventHub, peers: list[Peer]) -> None:
    p = connect(hub, peers)
    assert p.subscribe(events=["Ticket.removed"])["result"] is True
    hub.publish("Ticket.progress", {"uuid": "u1"})
    hub.publish("Volume.lost", {"uuid": "u1", "device": "/dev/x", "action": "remove"})
    hub.publish("Ticket.removed", removed(1))
    assert p.recv()["method"] == "Ticket.removed"


def test_subscribe_again_replaces_the_filter(hub: EventHub, peers: list[Peer]) -> None:
    p = connect(hub, peers)
    p.subscribe(events=["Ticket.progress"])
    assert p.subscribe(events=["Ticket.expired"])["result"] is True
    assert hub.subscribers() == 1
    hub.publish("Ticket.progress", {"uuid": "u1"})
    hub.publish("Ticket.expired", removed(1))
    assert p.recv()["method"] == "Ticket.expired"


@pytest.mark.parametrize("events", [["Ticket.nope"], "Ticket.removed", [1], []])
def test_bad_events_param_is_invalid_params(
    hub: EventHub, peers: list[Peer], events: object
) -> None:
    p = connect(hub, peers)
    reply = p.subscribe(events=events)
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"]["field"] == "events"
    assert hub.subscribers() == 0


def test_every_event_can_be_named(hub: EventHub, peers: list[Peer]) -> None:
    p = connect(hub, peers)
    assert p.subscribe(events=list(EVENTS))["result"] is True
    for name in EVENTS:
        hub.publish(name, {"uuid": "u1"})
    assert [p.recv()["method"] for _ in EVENTS] == list(EVENTS)


def test_unknown_event_is_not_published(
    hub: EventHub, peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    p = connect(hub, peers)
    p.subscribe()
    hub.publish("Ticket.bogus", {"uuid": "u1"})
    hub.publish("Ticket.removed", removed(1))
    assert p.recv()["method"] == "Ticket.removed"
    assert "PUBLISH unknown event=Ticket.bogus" in caplog.text


def test_closed_connection_unsubscribes(hub: EventHub, peers: list[Peer]) -> None:
    p = connect(hub, peers)
    p.subscribe()
    assert hub.subscribers() == 1
    p.close()
    deadline = time.monotonic() + IO_TIMEOUT
    while hub.subscribers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hub.subscribers() == 0
    hub.publish("Ticket.removed", removed(1))  # nobody to send to, no error


def test_subscriber_that_never_reads_blocks_nobody(
    peers: list[Peer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="verbs.events")
    hub = EventHub(queue_size=8)
    try:
        stuck = connect(hub, peers)
        stuck.subscribe()
        reader = connect(hub, peers)
        reader.subscribe()
        # 64 KiB lines: the stuck peer's socket buffer fills after a few,
        # then its queue, then its notifications are dropped.
        big = "x" * 65536
        count = 200
        got: list[str] = []

        def read_all() -> None:
            for _ in range(count):
                got.append(reader.recv()["params"]["transfer_id"])

        t = threading.Thread(target=read_all, daemon=True)
        t.start()
        start = time.monotonic()
        for n in range(count):
            hub.publish("Ticket.removed", {"uuid": big, "transfer_id": f"t{n}"})
            # Let the reading subscriber keep up: only the stuck one may drop.
            while len(got) < n - 4 and time.monotonic() - start < IO_TIMEOUT:
                time.sleep(0.001)
        publishing = time.monotonic() - start
        t.join(IO_TIMEOUT)
        assert got == [f"t{n}" for n in range(count)]
        # A send blocked on the stuck peer would take its 30 s send timeout.
        assert publishing < IO_TIMEOUT
        assert "DROP notifications connection=1 reason=queue-full limit=8" in caplog.text
        assert "connection=2" not in caplog.text
    finally:
        # Its sender is blocked in a send: the peer going away ends it.
        stuck.close()
        hub.stop()


def test_stop_ends_sender_threads(peers: list[Peer]) -> None:
    hub = EventHub()
    p = connect(hub, peers)
    p.subscribe()
    before = {t.name for t in threading.enumerate()}
    assert "events/1" in before
    hub.stop()
    assert "events/1" not in {t.name for t in threading.enumerate()}
    assert hub.subscribers() == 0
