"""The registry of live tickets: add, replace, remove, look up.

Rules:
- A uuid names at most one ticket. Adding it again with the same content
  is a no-op; with other content ``add`` (the JSON-RPC verbs) refuses with
  TicketConflict, while ``put`` (ovirt-imageio's ``PUT /tickets/<uuid>``)
  replaces the ticket: the old one is removed and the new one added as one
  step, each as vetoable as on its own; the new ticket's storage is
  prepared before the old one's is released (a volume both use stays
  prepared, its lease held), and the old ticket's requests are stopped as
  by a removal. A canceled ticket is neither added again nor replaced
  (TicketRemoving) until its removal completes.
- ``remove`` cancels the ticket (aborting its connections), waits up to
  ``remove_timeout`` for its requests to end and raises TicketBusy
  otherwise (the caller retries, as the engine does). ``remove_all``
  cancels every ticket first, then waits once.
- Whoever takes a ticket out of the table releases its storage and emits
  ``removed``; ``added`` follows each addition.
- An injected guard (the ``before_*`` hooks) may veto an addition and the
  first removal: a vetoed add leaves no ticket, a vetoed remove leaves the
  ticket live and not canceled.
- Errors about a live ticket name its transfer, not its uuid, where the
  caller asks for it (``transfer_named``): the uuid is the secret.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from . import ticketspec
from .errors import (
    Forbidden,
    ImageioError,
    InvalidTicket,
    TicketBusy,
    TicketConflict,
    TicketNotFound,
    TicketRemoving,
)
from .tickets import Clock, Ticket
from .ticketspec import TicketSpec

log = logging.getLogger(__name__)

Listener = Callable[[str, Ticket], None]
# Called with "add" or "remove" before the registry changes; raising vetoes.
Guard = Callable[[str, Ticket], None]


class Registry:
    """The live tickets, keyed by their secret uuid."""

    def __init__(
        self,
        *,
        clock: Clock,
        remove_timeout: float,
        default_inactivity_timeout: int,
        resolve_url: Callable[[TicketSpec], str] | None = None,
        release: Callable[[TicketSpec], None] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._clock = clock
        self._remove_timeout = remove_timeout
        self._default_inactivity = default_inactivity_timeout
        self._resolve_url = resolve_url or _url_only
        self._release = release or (lambda spec: None)
        self._guard = guard or (lambda action, ticket: None)
        self._lock = threading.Lock()
        self._tickets: dict[str, Ticket] = {}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: str, ticket: Ticket) -> None:
        for listener in self._listeners:
            try:
                listener(event, ticket)
            except Exception:
                log.exception("LISTENER failed event=%s transfer=%s", event, ticket.transfer_id)

    def parse(self, obj: object) -> TicketSpec:
        return ticketspec.parse(obj, default_inactivity_timeout=self._default_inactivity)

    def add(self, obj: object) -> Ticket:
        """Add a ticket; the same content again is a no-op, other content is
        TicketConflict (the JSON-RPC verbs)."""
        spec = self.parse(obj)
        existing = self._existing(spec)
        if existing is None:
            return self._add_new(spec)
        diff = existing.spec.first_difference(spec)
        if diff is not None:
            raise TicketConflict(uuid=spec.uuid, field=diff)
        return existing

    def put(self, obj: object) -> Ticket:
        """Add a ticket, replacing a live one of its uuid that has other
        content (ovirt-imageio's PUT /tickets/<uuid>)."""
        spec = self.parse(obj)
        existing = self._existing(spec)
        if existing is None:
            return self._add_new(spec)
        if existing.spec.first_difference(spec) is None:
            return existing
        return self._replace(existing, spec)

    def _existing(self, spec: TicketSpec) -> Ticket | None:
        with self._lock:
            existing = self._tickets.get(spec.uuid)
        if existing is not None and existing.canceled:
            # Its removal was agreed: the uuid is taken until it completes.
            raise TicketRemoving(uuid=spec.uuid)
        return existing

    def _add_new(self, spec: TicketSpec) -> Ticket:
        # Vetoed before storage is prepared: a refused ticket costs nothing.
        self._guard("add", Ticket(spec, self._clock, spec.url or ""))
        url = self._resolve_url(spec)
        ticket = Ticket(spec, self._clock, url)
        with self._lock:
            raced = self._tickets.setdefault(spec.uuid, ticket)
        if raced is not ticket:
            self._release(spec)
            if raced.spec.first_difference(spec) is not None:
                raise TicketConflict(uuid=spec.uuid, field="uuid")
            return raced
        self._added(ticket)
        return ticket

    def _replace(self, old: Ticket, spec: TicketSpec) -> Ticket:
        """The removal of old and the addition of spec, as one step at the uuid.

        Either may be vetoed before anything changes. spec's storage is
        prepared before old's is released, so a volume both use stays
        prepared and its lease held. old's running requests were authorized
        by the content being replaced: they are stopped and its connections
        closed, as by a removal; its clients come back under the new content.
        """
        self._guard("add", Ticket(spec, self._clock, spec.url or ""))
        self._guard("remove", old)
        new = Ticket(spec, self._clock, self._resolve_url(spec))
        try:
            self._cancel(old)
            if not old.wait_idle(self._remove_timeout):
                raise TicketBusy(
                    uuid=spec.uuid, running=old.running(), timeout=self._remove_timeout
                )
            with self._lock:
                current = self._tickets.get(spec.uuid)
                if current is not None and current is not old:
                    raise TicketConflict(uuid=spec.uuid, field="uuid")
                self._tickets[spec.uuid] = new
        except BaseException:
            self._release(spec)
            raise
        log.info("REPLACE transfer=%s by=%s", old.transfer_id, spec.transfer_id)
        if current is old:
            try:
                self._dropped(old)
            except ImageioError as e:
                # The new ticket is live: the failed teardown of the old
                # storage is the storage plane's to report, not a failed add.
                log.warning("REPLACE release failed transfer=%s error=%s", old.transfer_id, e)
        self._added(new)
        return new

    def _added(self, ticket: Ticket) -> None:
        spec = ticket.spec
        log.info(
            "ADD transfer=%s size=%d ops=%s timeout=%d url=%s",
            spec.transfer_id,
            spec.size,
            ",".join(spec.ops),
            spec.timeout,
            _loggable(ticket.url),
        )
        self._emit("added", ticket)

    def get(self, uuid: str) -> Ticket:
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            raise TicketNotFound(uuid=uuid)
        return ticket

    def list(self) -> list[Ticket]:
        with self._lock:
            return list(self._tickets.values())

    def extend(self, uuid: str, timeout: int) -> Ticket:
        ticket = self.get(uuid)
        ticket.extend(timeout)
        log.info("EXTEND transfer=%s timeout=%d", ticket.transfer_id, timeout)
        return ticket

    def remove(self, uuid: str) -> None:
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            return
        if not ticket.canceled:
            # Once canceled, the removal was agreed: a retry is not vetoed.
            self._guard("remove", ticket)
            self._cancel(ticket)
        self._finish_removal(ticket, self._remove_timeout)

    def remove_all(self) -> None:
        """Remove every ticket (ovirt-imageio's DELETE /tickets/).

        All are canceled first, so their requests stop together and the
        whole takes about one remove_timeout. A veto or TicketBusy of one
        ticket leaves it and is raised, naming it by its transfer, after
        the others were removed.
        """
        errors: list[ImageioError] = []
        canceled = []
        for ticket in self.list():
            try:
                if not ticket.canceled:
                    self._guard("remove", ticket)
                    self._cancel(ticket)
                canceled.append(ticket)
            except ImageioError as e:
                errors.append(_named(e, ticket))
        deadline = self._clock() + self._remove_timeout
        for ticket in canceled:
            try:
                self._finish_removal(ticket, max(0.0, deadline - self._clock()))
            except ImageioError as e:
                errors.append(_named(e, ticket))
        if errors:
            raise errors[0]

    def _cancel(self, ticket: Ticket) -> None:
        log.info("CANCEL transfer=%s running=%d", ticket.transfer_id, ticket.running())
        ticket.cancel()
        self._emit("canceled", ticket)

    def _finish_removal(self, ticket: Ticket, timeout: float) -> None:
        uuid = ticket.spec.uuid
        if not ticket.wait_idle(timeout):
            raise TicketBusy(uuid=uuid, running=ticket.running(), timeout=self._remove_timeout)
        with self._lock:
            # Whoever takes a ticket out of the table releases its storage.
            if self._tickets.get(uuid) is not ticket:
                return
            del self._tickets[uuid]
        self._dropped(ticket)

    def _dropped(self, ticket: Ticket) -> None:
        try:
            self._release(ticket.spec)
        finally:
            log.info("REMOVE transfer=%s", ticket.transfer_id)
            self._emit("removed", ticket)

    @contextmanager
    def transfer_named(self, uuid: str) -> Iterator[None]:
        """Name the ticket by its transfer id in conflict and busy errors
        raised inside: their messages reach logs, and the uuid of a live
        ticket is its secret (the caller knows which ticket it meant)."""
        try:
            yield
        except (TicketConflict, TicketBusy) as e:
            with self._lock:
                ticket = self._tickets.get(uuid)
            raise _named(e, ticket) from None

    def authorize(self, uuid: str, op: str) -> Ticket:
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            raise Forbidden(reason="No such ticket")
        ticket.authorize(op)
        return ticket

    def cancel_all(self) -> None:
        for ticket in self.list():
            ticket.cancel()


def _named(error: ImageioError, ticket: Ticket | None) -> ImageioError:
    """error naming ticket's transfer instead of its uuid, if it names one."""
    if not isinstance(error, (TicketConflict, TicketBusy)):
        return error
    return error.renamed(f"of transfer {ticket.transfer_id}" if ticket else "(removed meanwhile)")


def _url_only(spec: TicketSpec) -> str:
    if spec.url is None:
        raise InvalidTicket(field="volume", reason="volume tickets need the storage plane")
    return spec.url


def _loggable(url: str) -> str:
    # The path of a proxied ticket's https URL holds the host's ticket id,
    # which is also this ticket's secret: only the host is logged.
    if not url.startswith("https:"):
        return url
    return f"https://{urlsplit(url).netloc}/..."
