"""Registry.put (replace), remove_all and the status fields ovirt-imageio
reports, over a real Registry with a fake clock, storage and guard."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.tickets import FakeConn, valid_ticket
from vdsm_imageio.errors import (
    HookFailed,
    TicketBusy,
    TicketCanceled,
    TicketConflict,
    TicketNotFound,
    TicketRemoving,
    VolumeError,
)
from vdsm_imageio.registry import Registry
from vdsm_imageio.tickets import Kind, Ticket
from vdsm_imageio.ticketspec import TicketSpec


class World:
    """The registry's collaborators, recording what happens in what order."""

    def __init__(self) -> None:
        self.clock = FakeClock(1000.25)
        self.events: list[str] = []
        self.veto: set[tuple[str, str]] = set()
        self.fail_release: set[str] = set()
        self.registry = Registry(
            clock=self.clock,
            remove_timeout=0.05,
            default_inactivity_timeout=60,
            resolve_url=self.prepare,
            release=self.release,
            guard=self.guard,
        )
        self.registry.subscribe(lambda event, t: self.events.append(f"{event} {t.transfer_id}"))

    def prepare(self, spec: TicketSpec) -> str:
        self.events.append(f"prepare {spec.transfer_id}")
        assert spec.url is not None
        return spec.url

    def release(self, spec: TicketSpec) -> None:
        self.events.append(f"release {spec.transfer_id}")
        if spec.transfer_id in self.fail_release:
            raise VolumeError(action="teardown", sd_id="sd", vol_id="v", reason="LV in use")

    def guard(self, action: str, ticket: Ticket) -> None:
        self.events.append(f"guard-{action} {ticket.transfer_id}")
        if (action, ticket.transfer_id) in self.veto:
            raise HookFailed(hook="h", event=action, outcome="exit code 1", status=1, stderr="")


@pytest.fixture
def world() -> World:
    return World()


def ticket(**kw: Any) -> dict[str, Any]:
    return valid_ticket(**{"ops": ["write"], "timeout": 10, "transfer_id": "old", **kw})


# Status as ovirt-imageio reports it.


def test_ops_read_back_as_given_while_write_still_allows_read(world: World) -> None:
    t = world.registry.add(ticket(ops=["write"]))
    assert t.status().ops == ["write"]
    assert world.registry.authorize("u1", "read") is t
    assert world.registry.authorize("u1", "write") is t


def test_ops_as_given_are_the_content_compared(world: World) -> None:
    world.registry.add(ticket(ops=["write"]))
    with pytest.raises(TicketConflict, match="ops"):
        world.registry.add(ticket(ops=["read", "write"]))


def test_expires_is_the_clock_second_of_expiry(world: World) -> None:
    t = world.registry.add(ticket(timeout=10))
    assert t.status().expires == 1010
    world.clock.now += 3.5
    status = t.status()
    assert (status.expires, status.expires_in) == (1010, 6)
    world.registry.extend("u1", 30)
    assert t.status().expires == 1033
    assert t.status().timeout == 30  # the value last set


def test_expires_while_active_counts_from_now(world: World) -> None:
    t = world.registry.add(ticket(timeout=10))
    with t.operation(0, 10):
        world.clock.now += 100
        assert t.status().expires == 1110
        assert t.status().expires_in == 10
    # The end of the request was its last activity.
    world.clock.now += 4
    assert (t.status().expires, t.status().expires_in) == (1110, 6)


def test_expires_is_an_integer_in_every_state(world: World) -> None:
    t = world.registry.add(ticket(timeout=7))
    for step in (0.3, 5.55, 40.1):
        world.clock.now += step
        assert type(t.status().expires) is int
        with t.operation(0, 1):
            assert type(t.status().expires) is int


# put: add or replace.


def test_put_of_a_new_uuid_adds(world: World) -> None:
    t = world.registry.put(ticket())
    assert world.registry.get("u1") is t
    assert world.events == ["guard-add old", "prepare old", "added old"]


def test_put_of_the_same_content_is_a_no_op(world: World) -> None:
    t = world.registry.put(ticket())
    world.events.clear()
    assert world.registry.put(ticket(engine_extra=1)) is t
    assert world.events == []


def test_put_of_other_content_replaces(world: World) -> None:
    old = world.registry.put(ticket())
    with old.operation(0, 100) as op:
        old.progress(op, 100)
    world.events.clear()
    new = world.registry.put(ticket(size=2048, transfer_id="new", ops=["read"]))
    assert new is not old
    assert world.registry.get("u1") is new
    assert old.canceled and not new.canceled
    status = new.status()
    assert (status.size, status.ops, status.transfer_id) == (2048, ["read"], "new")
    assert status.transferred == 0
    # Vetoable first; the new storage is ready before the old is let go.
    assert world.events == [
        "guard-add new",
        "guard-remove old",
        "prepare new",
        "canceled old",
        "release old",
        "removed old",
        "added new",
    ]


def test_replace_closes_the_old_tickets_connections(world: World) -> None:
    old = world.registry.put(ticket())
    idle, writer = FakeConn(), FakeConn()
    old.attach(idle, Kind.PEEK, 0)
    old.attach(writer, Kind.WRITE, limit=8)
    new = world.registry.put(ticket(timeout=600))
    assert idle.aborted and writer.aborted
    assert new.status().connections == 0
    # A client comes back under the new content.
    again = FakeConn()
    world.registry.authorize("u1", "write").attach(again, Kind.WRITE, limit=8)
    assert new.status().connections == 1


def test_replace_stops_a_running_request(world: World) -> None:
    registry = Registry(clock=world.clock, remove_timeout=5, default_inactivity_timeout=60)
    old = registry.put(ticket())
    started, stopped = threading.Event(), threading.Event()

    def request() -> None:
        with old.operation(0, 10) as op:
            started.set()
            try:
                for _ in range(500):
                    old.progress(op, 0)
                    threading.Event().wait(0.01)
            except TicketCanceled:
                stopped.set()

    worker = threading.Thread(target=request)
    worker.start()
    try:
        assert started.wait(5)
        new = registry.put(ticket(timeout=600))
        assert stopped.is_set()
        assert registry.get("u1") is new
    finally:
        worker.join(5)
    assert not worker.is_alive()


def test_replace_that_cannot_stop_a_request_is_busy_and_adds_nothing(world: World) -> None:
    old = world.registry.put(ticket())
    with old.operation(0, 10):
        world.events.clear()
        with pytest.raises(TicketBusy):
            world.registry.put(ticket(transfer_id="new"))
        # The new storage is given back; the old ticket stays, canceled, as
        # after a busy removal, and the uuid is taken until it is removed.
        assert world.events == [
            "guard-add new",
            "guard-remove old",
            "prepare new",
            "canceled old",
            "release new",
        ]
        assert world.registry.get("u1") is old and old.canceled
        with pytest.raises(TicketRemoving):
            world.registry.put(ticket(transfer_id="new"))
    world.registry.remove("u1")
    assert world.registry.put(ticket(transfer_id="new")).transfer_id == "new"


@pytest.mark.parametrize(("action", "vetoed"), [("add", "new"), ("remove", "old")])
def test_vetoed_replace_changes_nothing(world: World, action: str, vetoed: str) -> None:
    old = world.registry.put(ticket())
    conn = FakeConn()
    old.attach(conn, Kind.WRITE, limit=8)
    world.veto.add((action, vetoed))
    world.events.clear()
    with pytest.raises(HookFailed):
        world.registry.put(ticket(transfer_id="new"))
    assert world.registry.get("u1") is old
    assert not old.canceled and not conn.aborted
    assert not any(e.startswith(("prepare", "release", "canceled")) for e in world.events)


def test_replace_whose_storage_fails_leaves_the_old_ticket(world: World) -> None:
    old = world.registry.put(ticket())

    def broken(spec: TicketSpec) -> str:
        raise VolumeError(action="prepare", sd_id="sd", vol_id="v", reason="no such LV")

    world.registry._resolve_url = broken
    with pytest.raises(VolumeError):
        world.registry.put(ticket(transfer_id="new"))
    assert world.registry.get("u1") is old and not old.canceled


def test_replace_whose_old_storage_fails_to_release_still_replaces(world: World) -> None:
    world.registry.put(ticket())
    world.fail_release.add("old")
    new = world.registry.put(ticket(transfer_id="new"))
    assert world.registry.get("u1") is new
    assert world.events[-2:] == ["removed old", "added new"]


def test_canceled_ticket_is_neither_added_nor_replaced(world: World) -> None:
    old = world.registry.put(ticket())
    with old.operation(0, 1):
        with pytest.raises(TicketBusy):
            world.registry.remove("u1")
        for content in (ticket(), ticket(size=4096)):
            with pytest.raises(TicketRemoving, match="being removed"):
                world.registry.put(content)
            with pytest.raises(TicketRemoving):
                world.registry.add(content)


def test_add_keeps_refusing_other_content(world: World) -> None:
    old = world.registry.add(ticket())
    with pytest.raises(TicketConflict, match="size"):
        world.registry.add(ticket(size=4096))
    assert world.registry.get("u1") is old and not old.canceled


# remove_all.


def test_remove_all_removes_every_ticket(world: World) -> None:
    conns = []
    for i in range(3):
        t = world.registry.put(ticket(uuid=f"u{i}", transfer_id=f"t{i}"))
        conns.append(FakeConn())
        t.attach(conns[-1], Kind.READ, limit=8)
    world.registry.remove_all()
    assert world.registry.list() == []
    assert all(c.aborted for c in conns)
    assert sorted(e for e in world.events if e.startswith("release")) == [
        "release t0",
        "release t1",
        "release t2",
    ]


def test_remove_all_of_nothing_is_fine(world: World) -> None:
    world.registry.remove_all()


def test_remove_all_cancels_every_ticket_before_waiting(world: World) -> None:
    tickets = [world.registry.put(ticket(uuid=f"u{i}", transfer_id=f"t{i}")) for i in range(3)]
    with tickets[0].operation(0, 1):
        with pytest.raises(TicketBusy) as e:
            world.registry.remove_all()
    # The busy ticket is named by its transfer, never by its uuid.
    assert "of transfer t0" in e.value.message and "u0" not in e.value.message
    assert all(t.canceled for t in tickets)
    assert [t.transfer_id for t in world.registry.list()] == ["t0"]
    world.registry.remove_all()
    assert world.registry.list() == []


def test_remove_all_goes_on_past_a_veto(world: World) -> None:
    for i in range(3):
        world.registry.put(ticket(uuid=f"u{i}", transfer_id=f"t{i}"))
    world.veto.add(("remove", "t1"))
    with pytest.raises(HookFailed):
        world.registry.remove_all()
    (kept,) = world.registry.list()
    assert kept.transfer_id == "t1" and not kept.canceled


# Errors name the transfer, not the uuid (the secret).


def test_transfer_named_hides_the_uuid_of_conflict_and_busy(world: World) -> None:
    t = world.registry.add(ticket(uuid="secret"))
    with pytest.raises(TicketConflict) as conflict, world.registry.transfer_named("secret"):
        world.registry.add(ticket(uuid="secret", size=1))
    with t.operation(0, 1), pytest.raises(TicketBusy) as busy:
        with world.registry.transfer_named("secret"):
            world.registry.remove("secret")
    for e in (conflict.value, busy.value):
        assert "secret" not in e.message
        assert "of transfer old" in e.message


def test_transfer_named_leaves_other_errors(world: World) -> None:
    with pytest.raises(TicketNotFound, match="nope"), world.registry.transfer_named("nope"):
        world.registry.get("nope")
