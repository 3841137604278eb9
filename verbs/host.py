"""The ``Host`` namespace: vdsm's image-ticket verbs, with vdsm's shapes.

The engine drives image transfers through vdsm's ``Host.*_image_ticket``
verbs; these aliases let it (or a vdsm that forwards them unchanged) reach
the same registry as the ``Ticket`` verbs. Only the results differ: vdsm
answers ``true`` to add, extend and remove, and the status object to get.
The params, their checks and the error codes are the ``Ticket`` verbs'.

The engine casts ``timeout`` and ``idle_time`` of the status to Java
integers; ``Ticket.status`` keeps them integers in every state.
"""

from __future__ import annotations

from vdsm_imageio.tickets import Registry

from .errors import Method, verb
from .ticket import Json, TicketVerbs


class HostVerbs:
    def __init__(self, registry: Registry) -> None:
        self._tickets = TicketVerbs(registry)

    def add_image_ticket(self, ticket: object) -> bool:
        """Add ticket; adding the same ticket again is a no-op."""
        self._tickets.add(ticket)
        return True

    def extend_image_ticket(self, uuid: object, timeout: object) -> bool:
        """Set a new timeout, also on an expired ticket (after a pause)."""
        self._tickets.extend(uuid, timeout)
        return True

    def get_image_ticket(self, uuid: object) -> Json:
        return self._tickets.status(uuid)

    def remove_image_ticket(self, uuid: object) -> bool:
        """Remove the ticket; an unknown uuid is already removed."""
        return self._tickets.remove(uuid)


def host_methods(registry: Registry) -> dict[str, Method]:
    verbs = HostVerbs(registry)
    return {
        "Host.add_image_ticket": verb(verbs.add_image_ticket, name="Host.add_image_ticket"),
        "Host.extend_image_ticket": verb(
            verbs.extend_image_ticket, name="Host.extend_image_ticket"
        ),
        "Host.get_image_ticket": verb(verbs.get_image_ticket, name="Host.get_image_ticket"),
        "Host.remove_image_ticket": verb(
            verbs.remove_image_ticket, name="Host.remove_image_ticket"
        ),
    }
