"""Tickets as vdsm sends them in Ticket.add, and what a ticket holds."""

from __future__ import annotations

from typing import Any

from vdsm_imageio.ticketspec import TicketSpec, Volume


def valid_ticket(**fields: Any) -> dict[str, Any]:
    """A valid ticket for a file image; fields replace or add to it."""
    ticket: dict[str, Any] = {
        "uuid": "u1",
        "size": 1024,
        "ops": ["read"],
        "timeout": 300,
        "url": "file:///image",
        "transfer_id": "tr1",
    }
    ticket.update(fields)
    return ticket


def volume_of(spec: TicketSpec) -> Volume:
    """The volume of a ticket that names one."""
    assert spec.volume is not None, f"transfer {spec.transfer_id} has no volume"
    return spec.volume


class FakeConn:
    """A connection attached to a ticket: it records being aborted."""

    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True
