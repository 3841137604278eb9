"""The monitor's events from ticket states, driven by a fake clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.tickets import valid_ticket
from vdsm_imageio.errors import TicketNotFound
from vdsm_imageio.monitor import Event, Monitor, MonitorThread
from vdsm_imageio.registry import Registry
from vdsm_imageio.tickets import Operation, Ticket


def spec(**kw: Any) -> dict[str, Any]:
    return valid_ticket(
        **{"size": 1000, "ops": ["write"], "timeout": 30, "inactivity_timeout": 5, **kw}
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock=clock, remove_timeout=0.05, default_inactivity_timeout=60)


def make_monitor(
    registry: Registry, clock: FakeClock, *, interval: float = 1.0, grace: float = 0.0
) -> Monitor:
    return Monitor(registry, clock=clock, progress_interval=interval, expired_ticket_grace=grace)


@pytest.fixture
def monitor(registry: Registry, clock: FakeClock) -> Monitor:
    return make_monitor(registry, clock)


class Ticks:
    """Advance the fake clock and collect what each tick returns."""

    def __init__(self, monitor: Monitor, clock: FakeClock) -> None:
        self.monitor = monitor
        self.clock = clock

    def __call__(self, seconds: float = 0.2) -> list[Event]:
        self.clock.now += seconds
        return self.monitor.tick(self.clock.now)


@pytest.fixture
def tick(monitor: Monitor, clock: FakeClock) -> Ticks:
    return Ticks(monitor, clock)


@contextmanager
def request(ticket: Ticket, start: int, length: int) -> Iterator[Operation]:
    with ticket.operation(start, length) as op:
        yield op


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


def progress(events: list[Event]) -> list[dict[str, Any]]:
    return [e.params for e in events if e.name == "Ticket.progress"]


def test_quiet_ticket_has_no_events(registry: Registry, tick: Ticks) -> None:
    registry.add(spec())
    assert tick() == []
    assert tick(2.0) == []


def test_progress_while_moving_is_rate_limited(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec())
    seen = []
    with request(ticket, 0, 1000) as op:
        for _ in range(8):  # 2 seconds of 0.25 s ticks, bytes every tick
            ticket.progress(op, 50)
            seen += tick(0.25)
    moving = progress(seen)
    # At 0.25 and 1.25 (one second later): never twice within the interval.
    assert [p["transferred"] for p in moving] == [50, 250]
    assert all(p["active"] for p in moving)
    assert moving[0] == {
        "uuid": "u1",
        "transfer_id": "tr1",
        "transferred": 50,
        "size": 1000,
        "active": True,
    }


def test_final_progress_when_ticket_goes_idle(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec())
    with request(ticket, 0, 1000) as op:
        ticket.progress(op, 100)
        assert progress(tick()) == [
            {"uuid": "u1", "transfer_id": "tr1", "transferred": 100, "size": 1000, "active": True}
        ]
        ticket.progress(op, 900)
        assert tick() == []  # within the interval
    events = tick()
    assert progress(events) == [
        {"uuid": "u1", "transfer_id": "tr1", "transferred": 1000, "size": 1000, "active": False}
    ]
    assert tick() == []


def test_final_progress_when_idle_without_new_bytes(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec())
    with request(ticket, 0, 1000) as op:
        ticket.progress(op, 100)
        tick()
    assert [(p["transferred"], p["active"]) for p in progress(tick())] == [(100, False)]


def test_request_between_ticks_reports_once(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec())
    with request(ticket, 0, 200) as op:
        ticket.progress(op, 200)
    assert [(p["transferred"], p["active"]) for p in progress(tick())] == [(200, False)]
    assert tick() == []


def test_request_that_moves_nothing_reports_nothing(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec())
    with request(ticket, 0, 200):
        assert tick() == []
    assert tick() == []


def test_inactive_once_per_idle_period(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec(inactivity_timeout=5))
    assert tick(5.0) == []  # idle_time 5 does not pass 5
    events = tick(1.0)
    assert events == [Event("Ticket.inactive", {"uuid": "u1", "idle_time": 6})]
    assert tick(1.0) == []
    ticket.touch()  # a request on the ticket starts a new idle period
    assert tick(5.0) == []
    assert names(tick(1.0)) == ["Ticket.inactive"]


def test_extend_does_not_end_an_idle_period(registry: Registry, tick: Ticks) -> None:
    registry.add(spec(inactivity_timeout=5))
    tick(3.0)
    registry.extend("u1", 30)  # the engine renews while the client is away
    assert names(tick(3.0)) == ["Ticket.inactive"]


def test_no_inactive_event_when_inactivity_timeout_is_zero(registry: Registry, tick: Ticks) -> None:
    registry.add(spec(inactivity_timeout=0))
    assert "Ticket.inactive" not in names(tick(20.0))


def test_no_inactive_event_while_request_runs(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec(inactivity_timeout=1))
    with request(ticket, 0, 10):
        assert tick(10.0) == []


def test_expired_once_and_again_after_extend(registry: Registry, tick: Ticks) -> None:
    registry.add(spec(timeout=10, inactivity_timeout=0))
    assert tick(9.8) == []
    assert tick(0.2) == [Event("Ticket.expired", {"uuid": "u1", "transfer_id": "tr1"})]
    assert tick(5.0) == []
    registry.extend("u1", 10)  # the engine extends after a pause
    assert tick(5.0) == []
    assert names(tick(5.0)) == ["Ticket.expired"]


def test_removed_after_final_progress(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec())
    with request(ticket, 0, 1000) as op:
        ticket.progress(op, 100)
        tick()
        ticket.progress(op, 100)
    registry.remove("u1")
    events = tick()
    assert names(events) == ["Ticket.progress", "Ticket.removed"]
    assert events[0].params["transferred"] == 200
    assert events[0].params["active"] is False
    assert events[1].params == {"uuid": "u1", "transfer_id": "tr1"}
    assert tick() == []


def test_ticket_added_and_removed_between_ticks(registry: Registry, tick: Ticks) -> None:
    registry.add(spec())
    registry.remove("u1")
    assert tick() == [Event("Ticket.removed", {"uuid": "u1", "transfer_id": "tr1"})]


def test_readded_uuid_is_a_new_ticket(registry: Registry, tick: Ticks) -> None:
    ticket = registry.add(spec())
    with request(ticket, 0, 1000) as op:
        ticket.progress(op, 500)
    tick()
    registry.remove("u1")
    again = registry.add(spec(transfer_id="tr2"))
    with request(again, 0, 1000) as op:
        again.progress(op, 100)
    events = tick()
    assert [(e.name, e.params["transfer_id"]) for e in events] == [
        ("Ticket.progress", "tr2"),
        ("Ticket.removed", "tr1"),
    ]
    assert events[0].params["transferred"] == 100


def test_expired_tickets_stay_without_grace(registry: Registry, tick: Ticks) -> None:
    registry.add(spec(timeout=1))
    tick(3600.0)
    assert registry.get("u1").expired()


def test_reaper_removes_ticket_expired_longer_than_grace(
    registry: Registry,
    clock: FakeClock,
) -> None:
    monitor = make_monitor(registry, clock, grace=5.0)
    tick = Ticks(monitor, clock)
    registry.add(spec(timeout=10, inactivity_timeout=0))
    assert names(tick(10.0)) == ["Ticket.expired"]
    assert tick(5.0) == []  # expired exactly the grace: kept
    assert names(tick(0.2)) == ["Ticket.removed"]
    with pytest.raises(TicketNotFound):
        registry.get("u1")


def test_reaper_spares_ticket_extended_in_time(registry: Registry, clock: FakeClock) -> None:
    monitor = make_monitor(registry, clock, grace=5.0)
    tick = Ticks(monitor, clock)
    registry.add(spec(timeout=10, inactivity_timeout=0))
    tick(14.0)
    registry.extend("u1", 10)
    tick(14.0)
    assert registry.get("u1").expired()


def test_canceled_ticket_reports_no_inactivity_or_expiry(
    registry: Registry,
    tick: Ticks,
) -> None:
    ticket = registry.add(spec(timeout=1, inactivity_timeout=1))
    ticket.cancel()  # what a removal that waits for requests looks like
    assert tick(10.0) == []


def test_thread_publishes_events_and_stops() -> None:
    registry = Registry(clock=time.monotonic, remove_timeout=1.0, default_inactivity_timeout=60)
    monitor = Monitor(registry, clock=time.monotonic, progress_interval=0.1)
    got: list[tuple[str, dict[str, Any]]] = []
    removed = threading.Event()

    def publish(name: str, params: dict[str, Any]) -> None:
        got.append((name, params))
        if name == "Ticket.removed":
            removed.set()

    thread = MonitorThread(monitor, publish, period=0.05)
    thread.start()
    try:
        ticket = registry.add(spec())
        with request(ticket, 0, 1000) as op:
            ticket.progress(op, 1000)
        registry.remove("u1")
        assert removed.wait(10.0)
    finally:
        start = time.monotonic()
        thread.stop()
        assert time.monotonic() - start < 5.0
    assert [name for name, _ in got] == ["Ticket.progress", "Ticket.removed"]


def test_thread_survives_a_failing_publisher() -> None:
    registry = Registry(clock=time.monotonic, remove_timeout=1.0, default_inactivity_timeout=60)
    monitor = Monitor(registry, clock=time.monotonic, progress_interval=0.1)
    calls: list[str] = []
    second = threading.Event()

    def publish(name: str, params: dict[str, Any]) -> None:
        calls.append(params["transfer_id"])
        if len(calls) == 2:
            second.set()
        raise RuntimeError("subscriber bug")

    thread = MonitorThread(monitor, publish, period=0.05)
    thread.start()
    try:
        registry.add(spec(uuid="a", transfer_id="ta"))
        registry.remove("a")
        registry.add(spec(uuid="b", transfer_id="tb"))
        registry.remove("b")
        assert second.wait(10.0)
    finally:
        thread.stop()
    assert calls == ["ta", "tb"]
