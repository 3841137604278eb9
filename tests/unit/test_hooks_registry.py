"""Hooks wired to the ticket registry: vetoes and what after hooks learn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.errors import detail
from tests.support.tickets import valid_ticket
from vdsm_imageio.errors import HookFailed, TicketBusy, TicketNotFound
from vdsm_imageio.hooks import Hooks, Payload, TicketHooks
from vdsm_imageio.registry import Registry
from vdsm_imageio.ticketspec import TicketSpec


class Recorder(Hooks):
    """Stands in for Hooks to see the payloads (the runner has its own tests)."""

    def __init__(self) -> None:
        super().__init__("/nonexistent", timeout=0)  # runs no hook
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def installed(self, event: str) -> bool:
        return True  # every event has a hook, to see every payload

    def run(self, event: str, payload: Payload) -> None:
        self.calls.append((event, dict(payload)))


def ticket(**kw: Any) -> dict[str, Any]:
    return valid_ticket(**{"ops": ["write"], **kw})


def wired(hooks: Hooks, clock: FakeClock, **kw: Any) -> Registry:
    th = TicketHooks(hooks, clock)
    registry = Registry(
        clock=clock, remove_timeout=0.05, default_inactivity_timeout=60, guard=th.guard, **kw
    )
    registry.subscribe(th.listener)
    return registry


def deny(root: Path, event: str) -> None:
    path = root / event / "50-deny"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'not on this host' >&2\nexit 1\n")
    path.chmod(0o755)


def test_vetoed_add_leaves_no_ticket_and_prepares_no_storage(tmp_path: Path) -> None:
    deny(tmp_path, "before_ticket_add")
    prepared: list[TicketSpec] = []

    def resolve(spec: TicketSpec) -> str:
        prepared.append(spec)
        return spec.url or ""

    registry = wired(Hooks(str(tmp_path), timeout=10), FakeClock(), resolve_url=resolve)
    with pytest.raises(HookFailed) as e:
        registry.add(ticket())
    assert "not on this host" in detail(e.value, "stderr", str)
    assert prepared == []
    with pytest.raises(TicketNotFound):
        registry.get("u1")


def test_vetoed_remove_leaves_ticket_live(tmp_path: Path) -> None:
    deny(tmp_path, "before_ticket_remove")
    registry = wired(Hooks(str(tmp_path), timeout=10), FakeClock())
    registry.add(ticket())
    with pytest.raises(HookFailed):
        registry.remove("u1")
    t = registry.get("u1")
    assert not t.canceled
    t.authorize("write")


def test_readding_existing_ticket_runs_no_hooks() -> None:
    recorder = Recorder()
    registry = wired(recorder, FakeClock())
    registry.add(ticket())
    registry.add(ticket())
    assert [e for e, _ in recorder.calls] == ["before_ticket_add", "after_ticket_add"]


def test_hooks_see_lifecycle_in_order_with_duration() -> None:
    recorder = Recorder()
    clock = FakeClock()
    registry = wired(recorder, clock)
    registry.add(ticket())
    clock.now += 42.5
    registry.remove("u1")
    assert [e for e, _ in recorder.calls] == [
        "before_ticket_add",
        "after_ticket_add",
        "before_ticket_remove",
        "after_ticket_remove",
    ]
    _, removed = recorder.calls[-1]
    assert removed["transfer_id"] == "tr1"
    assert removed["duration"] == 42.5
    assert removed["interrupted"] is False
    assert removed["canceled"] is True


def test_removal_that_cuts_off_requests_is_interrupted_and_vetoed_once() -> None:
    recorder = Recorder()
    registry = wired(recorder, FakeClock())
    t = registry.add(ticket())
    with t.operation(0, 1024) as op:
        t.progress(op, 512)
        with pytest.raises(TicketBusy):
            registry.remove("u1")
    # The engine retries; the removal was already agreed.
    registry.remove("u1")
    events = [e for e, _ in recorder.calls]
    assert events.count("before_ticket_remove") == 1
    _, removed = recorder.calls[-1]
    assert removed["interrupted"] is True
    assert removed["transferred"] == 512


def test_payload_is_status_plus_duration() -> None:
    clock = FakeClock()
    th = TicketHooks(Recorder(), clock)
    registry = Registry(clock=clock, remove_timeout=0.05, default_inactivity_timeout=60)
    t = registry.add(ticket())
    clock.now += 3
    payload = th.payload(t)
    assert payload == {**t.status().to_json(), "duration": 3.0}
    # Hook-only fields stay out of the public status.
    assert "duration" not in t.status().to_json()
