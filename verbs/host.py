"""The ``Host`` namespace: vdsm's image-ticket verbs, as vdsm answers them.

The engine drives image transfers through vdsm's ``Host.*_image_ticket``
verbs, which vdsm implements with ovirt-imageio's HTTP ticket API; these
verbs let the engine (or a vdsm that forwards them unchanged) reach the
same registry and get what vdsm would have returned:

- results: ``true`` to add, extend and remove, the status object to get;
- semantics of the HTTP API: adding a uuid that exists with other content
  replaces the ticket (``Registry.put``), where ``Ticket.add`` refuses;
- errors: vdsm's codes (``verbs.vdsm_errors``), where the ``Ticket`` verbs
  use ours; errors about a live ticket name its transfer, not its uuid,
  as the HTTP API's replies do.

The engine casts ``timeout`` and ``idle_time`` of the status to Java
integers; ``Ticket.status`` keeps them integers in every state.
"""

from __future__ import annotations

from vdsm_imageio.registry import Registry
from vdsm_imageio.ticketspec import MAX_TIMEOUT, check_integer

from . import params, vdsm_errors
from .errors import Method, verb
from .ticket import Json


class HostVerbs:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def add_image_ticket(self, ticket: object) -> bool:
        """Add ticket, or replace the ticket of its uuid (as vdsm does)."""
        uuid = ticket.get("uuid") if isinstance(ticket, dict) else None
        with self._registry.transfer_named(uuid if isinstance(uuid, str) else ""):
            self._registry.put(ticket)
        return True

    def extend_image_ticket(self, uuid: object, timeout: object) -> bool:
        """Set a new timeout, also on an expired ticket (after a pause)."""
        name = params.string("uuid", uuid)
        # vdsm sends the timeout as it came in a PATCH body: the ticket
        # API's check (and message) for it.
        self._registry.extend(name, check_integer("timeout", timeout, maximum=MAX_TIMEOUT))
        return True

    def get_image_ticket(self, uuid: object) -> Json:
        return self._registry.get(params.string("uuid", uuid)).status().to_json()

    def remove_image_ticket(self, uuid: object) -> bool:
        """Remove the ticket; an unknown uuid is already removed."""
        name = params.string("uuid", uuid)
        with self._registry.transfer_named(name):
            self._registry.remove(name)
        return True


def host_methods(registry: Registry) -> dict[str, Method]:
    verbs = HostVerbs(registry)
    return {
        name: verb(fn, name=name, errors_of=vdsm_errors.translate)
        for name, fn in (
            ("Host.add_image_ticket", verbs.add_image_ticket),
            ("Host.extend_image_ticket", verbs.extend_image_ticket),
            ("Host.get_image_ticket", verbs.get_image_ticket),
            ("Host.remove_image_ticket", verbs.remove_image_ticket),
        )
    }
