"""The /tickets/<uuid> resource: ovirt-imageio's HTTP ticket API.

An unmodified vdsm drives ovirt-imageio with one request per connection on
a unix socket: ``PUT`` a ticket (JSON body, no Content-Type), ``GET`` its
status, ``PATCH`` ``{"timeout": N}`` to extend it, ``DELETE`` to remove it
(idempotent). These handlers map that onto the same registry the JSON-RPC
verbs use, with ovirt-imageio's semantics where they differ: a ``PUT`` of
an existing uuid with other content replaces the ticket, ``DELETE
/tickets/`` removes every ticket, and ``PUT`` and ``PATCH`` answer an empty
200. Errors are domain errors, turned into statuses by the one table in
``http.errors`` (InvalidTicket 400, TicketNotFound 404, TicketConflict and
TicketBusy 409, HookFailed 403).

The API serves its own listeners (``[control] ticket_socket``, and on a
proxy ``[control] ticket_port`` on a loopback address, as the engine
drives ovirt-imageio's proxy on its host) through its own router: the data
listeners never route /tickets, so a data client cannot add tickets.
Both are trusted (authorized from accept): the socket's file mode admits
only vdsm, and the TCP port only this host (``config.validate`` refuses
another address unless the administrator allowed it).
"""

from __future__ import annotations

import errno
import logging
import os
from contextlib import suppress
from typing import Any

from ..backends import Backend
from ..config import Config
from ..errors import BackendError, BadRequest, InvalidTicket
from ..registry import Registry
from ..tickets import Ticket
from ..ticketspec import MAX_TIMEOUT, check_integer, show
from .exchange import Exchange
from .listeners import Listener, tcp_listener, unix_listener
from .message import read_json
from .router import Router, route
from .server import Server

log = logging.getLogger(__name__)

# An engine ticket is well under 1 KiB; anything near this is not a ticket.
MAX_BODY = 64 * 1024


class Tickets:
    def __init__(self, registry: Registry, *, max_body: int = MAX_BODY) -> None:
        self._registry = registry
        self._max_body = max_body

    def router(self) -> Router:
        return Router(
            [
                route(
                    "tickets",
                    r"/tickets/([^/]*)/?",
                    get=self.get,
                    put=self.put,
                    patch=self.patch,
                    delete=self.delete,
                ),
            ]
        )

    def get(self, ex: Exchange, ticket_id: str) -> None:
        _require(ticket_id)
        ex.response.reply_json(self._registry.get(ticket_id).status().to_json())

    def put(self, ex: Exchange, ticket_id: str) -> None:
        _require(ticket_id)
        ticket = self._json(ex)
        # The URL names the resource; a body that names another is a mistake.
        given = ticket.setdefault("uuid", ticket_id)
        if given != ticket_id:
            raise InvalidTicket(field="uuid", reason="differs from the uuid in the URL")
        with self._registry.transfer_named(ticket_id):
            self._registry.put(ticket)
        # ovirt-imageio answers an empty 200; vdsm reads nothing of it.
        ex.response.reply(200)

    def patch(self, ex: Exchange, ticket_id: str) -> None:
        _require(ticket_id)
        msg = self._json(ex)
        unknown = sorted(set(msg) - {"timeout"})
        if unknown:
            raise BadRequest(field=show(unknown[0]), reason="cannot be changed; only timeout can")
        # The same range as the ticket's own timeout (ticketspec).
        timeout = check_integer("timeout", msg.get("timeout"), maximum=MAX_TIMEOUT)
        self._registry.extend(ticket_id, timeout)
        ex.response.reply(200)

    def delete(self, ex: Exchange, ticket_id: str) -> None:
        # RFC 9110 section 9.2.2: DELETE is idempotent; vdsm retries it.
        if ticket_id:
            with self._registry.transfer_named(ticket_id):
                self._registry.remove(ticket_id)
        else:
            self._registry.remove_all()
        ex.response.reply(204)

    def _json(self, ex: Exchange) -> dict[str, Any]:
        return read_json(ex.request, ex.body, self._max_body)


def _require(ticket_id: str) -> None:
    if not ticket_id:
        # Only DELETE has a meaning for the whole collection.
        raise BadRequest(field="path", reason="the ticket id is missing (/tickets/<uuid>)")


class TicketServer:
    """The ticket API's own listeners and workers: a unix socket path, a
    TCP address, or both."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        path: str | None,
        *,
        tcp: tuple[str, int] | None = None,
    ) -> None:
        self.path = path
        self._tcp = tcp
        self._mode = config.control.mode
        self._server = Server(config, Tickets(registry).router(), _no_backend)
        self._inode: int | None = None
        self.port: int | None = None

    def start(self) -> None:
        if self.path is not None:
            listener = unix_listener(self.path, self._mode)
            self._inode = os.stat(self.path).st_ino
            self._server.add_listener(Listener(listener.sock, "tickets", None, trusted=True))
            log.info("LISTEN tickets=%s mode=%o", self.path, self._mode)
        if self._tcp is not None:
            host, port = self._tcp
            tcp = tcp_listener(host, port, None, name="tickets-tcp", trusted=True)
            self._server.add_listener(tcp)
            self.port = tcp.port
            log.info("LISTEN tickets=%s:%d", host, self.port)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
        if self.path is None:
            return
        # Leave a socket that another daemon bound after us in place.
        with suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def connections(self) -> int:
        return self._server.connections()


def _no_backend(ticket: Ticket) -> Backend:
    # The ticket API moves no image data; a handler asking for it is a bug.
    raise BackendError(reason=os.strerror(errno.EOPNOTSUPP))
