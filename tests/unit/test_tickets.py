from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.tickets import FakeConn, valid_ticket
from vdsm_imageio.errors import (
    Forbidden,
    InvalidTicket,
    TicketBusy,
    TicketCanceled,
    TicketConflict,
    TicketNotFound,
    TooManyConnections,
)
from vdsm_imageio.registry import Registry
from vdsm_imageio.tickets import Kind


def ticket(**kw: Any) -> dict[str, Any]:
    return valid_ticket(**{"timeout": 10, **kw})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock=clock, remove_timeout=0.05, default_inactivity_timeout=60)


def test_new_ticket_status(registry: Registry) -> None:
    status = registry.add(ticket(ops=["write"])).status().to_json()
    assert status == {
        "uuid": "u1",
        "transfer_id": "tr1",
        "size": 1024,
        "ops": ["write"],
        "timeout": 10,
        "expires_in": 10,
        "expires": 1010,
        "inactivity_timeout": 60,
        "idle_time": 0,
        "active": False,
        "connections": 0,
        "transferred": 0,
        "canceled": False,
        "sparse": False,
        "dirty": False,
        "url": "file:///image",
    }


def test_status_times_are_integers_in_every_state(registry: Registry, clock: FakeClock) -> None:
    t = registry.add(ticket())
    clock.tick(0.6)
    for _ in range(3):
        s = t.status()
        assert type(s.timeout) is int and type(s.idle_time) is int
        assert type(s.expires_in) is int
        clock.tick(7.3)
    with t.operation(0, 10):
        assert type(t.status().idle_time) is int


def test_ticket_expires_timeout_after_last_activity(registry: Registry, clock: FakeClock) -> None:
    t = registry.add(ticket(timeout=10))
    clock.tick(9)
    registry.authorize("u1", "read")
    # Authorizing is not activity; a request is.
    with t.operation(0, 1):
        pass
    clock.tick(9)
    assert registry.authorize("u1", "read") is t
    clock.tick(1)
    with pytest.raises(Forbidden, match="expired"):
        registry.authorize("u1", "read")
    assert t.status().expires_in == 0


def test_running_request_keeps_ticket_alive(registry: Registry, clock: FakeClock) -> None:
    t = registry.add(ticket(timeout=10))
    with t.operation(0, 100):
        clock.tick(100)
        assert not t.expired()
        assert t.status().active
        assert t.status().expires_in == 10
    assert not t.expired()


def test_extend_revives_expired_ticket(registry: Registry, clock: FakeClock) -> None:
    t = registry.add(ticket(timeout=10))
    clock.tick(30)
    assert t.expired()
    assert t.status().expires_in == -20
    registry.extend("u1", 60)
    assert not t.expired()
    assert t.status().timeout == 60
    assert t.status().expires_in == 60


def test_idle_time_counts_from_last_request(registry: Registry, clock: FakeClock) -> None:
    t = registry.add(ticket())
    with t.operation(0, 10) as op:
        clock.tick(5)
        t.progress(op, 10)
        assert t.status().idle_time == 0
    clock.tick(3.9)
    assert t.status().idle_time == 3


def test_transferred_is_union_of_completed_and_running(registry: Registry) -> None:
    t = registry.add(ticket())
    with t.operation(0, 100) as op:
        t.progress(op, 100)
    with t.operation(50, 100) as op:
        t.progress(op, 30)
        assert t.status().transferred == 100
        t.progress(op, 70)
        assert t.status().transferred == 150
    with t.operation(0, 100) as op:
        t.progress(op, 100)
    assert t.status().transferred == 150


def test_transferred_counts_partial_request(registry: Registry) -> None:
    t = registry.add(ticket())
    with pytest.raises(RuntimeError), t.operation(200, 100) as op:
        t.progress(op, 40)
        raise RuntimeError("peer went away")
    assert t.status().transferred == 40


def test_write_implies_read(registry: Registry) -> None:
    t = registry.add(ticket(ops=["write"]))
    assert registry.authorize("u1", "read") is t


def test_read_ticket_forbids_write(registry: Registry) -> None:
    registry.add(ticket(ops=["read"]))
    with pytest.raises(Forbidden, match="does not allow write"):
        registry.authorize("u1", "write")


def test_unknown_ticket_is_forbidden_without_echoing_id(registry: Registry) -> None:
    with pytest.raises(Forbidden) as e:
        registry.authorize("secret-id", "read")
    assert "secret-id" not in str(e.value)


def test_add_same_content_is_noop(registry: Registry) -> None:
    t = registry.add(ticket())
    assert registry.add(ticket(extra_engine_key=1)) is t


def test_add_other_content_is_conflict_naming_field(registry: Registry) -> None:
    registry.add(ticket())
    with pytest.raises(TicketConflict, match="size"):
        registry.add(ticket(size=2048))


def test_status_of_unknown_ticket(registry: Registry) -> None:
    with pytest.raises(TicketNotFound):
        registry.get("nope")


def test_remove_unknown_ticket_is_idempotent(registry: Registry) -> None:
    registry.remove("nope")


def test_remove_cancels_and_aborts_connections(registry: Registry) -> None:
    t = registry.add(ticket())
    conn = FakeConn()
    t.attach(conn, Kind.READ, limit=8)
    registry.remove("u1")
    assert conn.aborted
    assert t.canceled
    with pytest.raises(TicketNotFound):
        registry.get("u1")


def test_remove_with_running_request_is_busy_then_succeeds(registry: Registry) -> None:
    t = registry.add(ticket())
    with t.operation(0, 10) as op:
        with pytest.raises(TicketBusy):
            registry.remove("u1")
        # Still listed, canceled, and refusing new work.
        assert registry.get("u1").status().canceled
        with pytest.raises(TicketCanceled):
            t.progress(op, 1)
        with pytest.raises(TicketCanceled):
            registry.authorize("u1", "read")
    registry.remove("u1")
    with pytest.raises(TicketNotFound):
        registry.get("u1")


def test_remove_waits_for_request_to_stop(clock: FakeClock) -> None:
    registry = Registry(clock=clock, remove_timeout=5, default_inactivity_timeout=60)
    t = registry.add(ticket())
    started = threading.Event()

    def request() -> None:
        with t.operation(0, 10) as op:
            started.set()
            try:
                for _ in range(500):
                    t.progress(op, 0)
                    threading.Event().wait(0.01)
            except TicketCanceled:
                pass

    worker = threading.Thread(target=request)
    worker.start()
    started.wait(5)
    registry.remove("u1")
    worker.join(5)
    assert not worker.is_alive()


def test_readers_limit_is_enforced(registry: Registry) -> None:
    t = registry.add(ticket())
    conns = [FakeConn() for _ in range(3)]
    t.attach(conns[0], Kind.READ, limit=2)
    t.attach(conns[1], Kind.READ, limit=2)
    with pytest.raises(TooManyConnections, match="reader"):
        t.attach(conns[2], Kind.READ, limit=2)
    t.detach(conns[0])
    t.attach(conns[2], Kind.READ, limit=2)
    assert t.status().connections == 2


def test_reader_upgrades_to_writer(registry: Registry) -> None:
    t = registry.add(ticket(ops=["write"]))
    a, b = FakeConn(), FakeConn()
    t.attach(a, Kind.READ, limit=1)
    t.attach(a, Kind.WRITE, limit=1)
    # a left its reader slot when it became a writer.
    t.attach(b, Kind.READ, limit=1)
    with pytest.raises(TooManyConnections, match="writer"):
        t.attach(b, Kind.WRITE, limit=1)


def test_invalid_ticket_names_field(registry: Registry) -> None:
    bad = ticket()
    del bad["size"]
    with pytest.raises(InvalidTicket) as e:
        registry.add(bad)
    assert e.value.field == "size"


def test_listeners_see_add_and_remove(registry: Registry) -> None:
    seen = []
    registry.subscribe(lambda event, t: seen.append((event, t.transfer_id)))
    registry.add(ticket())
    registry.remove("u1")
    assert seen == [("added", "tr1"), ("canceled", "tr1"), ("removed", "tr1")]


def test_peek_connection_is_counted_and_aborted_but_takes_no_slot(registry: Registry) -> None:
    t = registry.add(ticket())
    peek, reader = FakeConn(), FakeConn()
    t.attach(peek, Kind.PEEK, 0)
    t.attach(reader, Kind.READ, limit=1)
    assert t.status().connections == 2
    # A reader never drops back to peek.
    t.attach(reader, Kind.PEEK, 0)
    with pytest.raises(TooManyConnections):
        t.attach(FakeConn(), Kind.READ, limit=1)
    registry.remove("u1")
    assert peek.aborted and reader.aborted
