"""The ``Ticket`` namespace: vdsm adds, polls, extends and removes tickets.

Thin verbs over ``vdsm_imageio.tickets.Registry``: they check the params,
call the registry and return status objects as JSON. The registry owns
the ticket lifecycle and its logs (with the transfer id, never the uuid).
"""

from __future__ import annotations

from typing import Any

from vdsm_imageio.registry import Registry
from vdsm_imageio.ticketspec import MAX_TIMEOUT

from . import params
from .errors import Method, verb

Json = dict[str, Any]


class TicketVerbs:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def add(self, ticket: object) -> Json:
        """Add ticket; adding the same ticket again is a no-op."""
        return self._registry.add(ticket).status().to_json()

    def extend(self, uuid: object, timeout: object) -> Json:
        ticket = self._registry.extend(
            params.string("uuid", uuid), params.integer("timeout", timeout, maximum=MAX_TIMEOUT)
        )
        return ticket.status().to_json()

    def remove(self, uuid: object) -> bool:
        """Remove the ticket; an unknown uuid is already removed."""
        self._registry.remove(params.string("uuid", uuid))
        return True

    def status(self, uuid: object) -> Json:
        return self._registry.get(params.string("uuid", uuid)).status().to_json()

    def list(self) -> list[Json]:
        return [ticket.status().to_json() for ticket in self._registry.list()]


def ticket_methods(registry: Registry) -> dict[str, Method]:
    verbs = TicketVerbs(registry)
    return {
        "Ticket.add": verb(verbs.add, name="Ticket.add"),
        "Ticket.extend": verb(verbs.extend, name="Ticket.extend"),
        "Ticket.remove": verb(verbs.remove, name="Ticket.remove"),
        "Ticket.status": verb(verbs.status, name="Ticket.status"),
        "Ticket.list": verb(verbs.list, name="Ticket.list"),
    }
