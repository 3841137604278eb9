"""One client connection: the request loop and what the connection owns.

Theory of operation: a connection runs in its own worker thread. It reads a
request head under the header deadline (until it has been authorized by a
ticket; from then on the ticket's inactivity timeout bounds every wait),
makes an exchange of it (``http.exchange``: the request, its body and its
response, new for every request), dispatches it through the router and
turns a domain error into an error response (``http.errors``). It owns, and
closes on exit: its socket, its place on the ticket that authorized it,
the handles on that ticket's storage (``backends.handles``) and the pipes
and helper threads of its spliced downloads (``zerocopy.Splicer``); a request
borrows its I/O buffers from the shared pool (``vdsm_imageio.pipeline``).
Canceling a ticket calls ``abort()``, which shuts the socket down so a
request blocked on a slow peer fails at once, and aborts the handles so a
request blocked on its storage (a proxy waiting for its host) fails too.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial

from .. import ktls, zerocopy
from ..backends import Backend
from ..backends.handles import Handles
from ..config import Http
from ..errors import ImageioError, PeerClosed, ServiceBusy
from ..tickets import Kind, Ticket
from . import errors as http_errors
from .deadlines import Deadlines
from .exchange import Exchange
from .message import Body, Request, read_head
from .reader import SocketReader
from .response import Response, peer_closed
from .router import Router

log = logging.getLogger(__name__)

# Unread body bytes we read and drop to keep a connection after an error.
MAX_DRAIN = 64 * 1024
# Closing a socket with unread input makes the kernel send a reset, which
# can destroy an error reply before the client reads it (RFC 7230 section
# 6.6): after such a reply we stop writing and drop input for a while.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 16 * 1024**2


@dataclass(frozen=True)
class Context:
    """What every connection of one server shares."""

    http: Http
    router: Router
    deadlines: Deadlines
    open_backend: Callable[[Ticket], Backend]
    # Whether the connection known by this admission name may be
    # authorized (``vdsm_imageio.http.admission``).
    authorize: Callable[[Hashable], bool]


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        context: Context,
        *,
        admission: Hashable,
        head: bytes = b"",
        head_due: float | None = None,
    ) -> None:
        """A connection; head is what the lobby read, the first head is due at head_due.

        admission is the name the server's admission policy knows the
        connection by (the lobby admitted it before it became a Connection).
        """
        self.sock = sock
        if context.http.unix_send_buffer and sock.family == socket.AF_UNIX:
            # A client reading with one recv per wake-up (ovirt-imageio's
            # client: a poll and a recv, with its GIL) needs fewer of them
            # when more of the body waits for it in the socket.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, context.http.unix_send_buffer)
        self.peer = peer
        self.admission = admission
        self._context = context
        self._http = context.http
        self.ticket: Ticket | None = None
        self._handles: Handles | None = None
        self._rfile = SocketReader(sock)
        self._rfile.prime(head)
        self._aborted = False
        # Drop input before closing: an error reply left a body unread.
        self._linger = False
        # The lobby starts the clock of the first head at accept (monotonic).
        self._head_due = head_due
        # Whether the kernel encrypts this TLS connection; asked on first use.
        self._kernel_tls: bool | None = None
        # Pipes and helper threads of spliced downloads, made on first use
        # and kept for the next requests (zerocopy's theory of operation).
        self.splicer = zerocopy.Splicer()

    # Ownership.

    def abort(self) -> None:
        """Stop this connection now; safe from any thread."""
        self._aborted = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # A request may wait on its storage, not on the client (a proxy
        # waiting for its host daemon): stop that wait too.
        handles = self._handles
        if handles is not None:
            handles.abort()

    def bind(self, ticket: Ticket, kind: Kind) -> Handles:
        """Use ticket, which authorized the current request, on this connection.

        The connection becomes authorized (``vdsm_imageio.http.admission``),
        or the request is 503 when the authorized slots are full. A reader
        or writer takes a slot of the ticket (the limits are enforced).
        """
        if not self._context.authorize(self.admission):
            raise ServiceBusy(limit=self._http.max_connections)
        if self.ticket is not ticket:
            self._release_ticket()
        limit = self._http.max_writers if kind is Kind.WRITE else self._http.max_readers
        ticket.attach(self, kind, limit)
        self.ticket = ticket
        if self._handles is None:
            opener = partial(self._context.open_backend, ticket)
            self._handles = Handles(opener, transfer_id=ticket.transfer_id)
            if self._aborted:
                # abort() ran before these handles existed.
                self._handles.abort()
        ticket.touch()
        # From now on the ticket's inactivity timeout bounds every wait.
        self.sock.settimeout(ticket.spec.inactivity_timeout or None)
        return self._handles

    @property
    def splice_target(self) -> socket.socket | None:
        """The socket when data may be spliced into it: plain, or TLS that
        the kernel encrypts (``vdsm_imageio.ktls``)."""
        if not zerocopy.available():
            return None
        if isinstance(self.sock, ssl.SSLSocket):
            if self._kernel_tls is None:
                # Settled by the handshake: ask the socket once.
                self._kernel_tls = ktls.sends_in_kernel(self.sock)
            if not self._kernel_tls:
                return None
        return self.sock

    def _release_ticket(self) -> None:
        if self._handles is not None:
            handles, self._handles = self._handles, None
            handles.close()
        if self.ticket is not None:
            self.ticket.detach(self)
            self.ticket = None

    def close(self) -> None:
        try:
            self.splicer.close()
            self._release_ticket()
            if self._linger and not self._aborted:
                self._drop_input()
        finally:
            self.sock.close()

    def _drop_input(self) -> None:
        deadline = time.monotonic() + LINGER_TIMEOUT
        budget = LINGER_BYTES
        sink = bytearray(MAX_DRAIN)
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while budget > 0 and (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                n = self.sock.recv_into(sink)
                if n == 0:
                    return
                budget -= n
        except OSError:
            pass

    # The request loop.

    def run(self) -> None:
        try:
            while not self._aborted and self._serve_one():
                pass
        finally:
            self.close()

    def _serve_one(self) -> bool:
        """Serve the next request; whether the connection may take another."""
        ex: Exchange | None = None
        try:
            req = self._read_head()
            if req is None:
                return False
            response = Response(self.sock, req, close=not req.keep_alive)
            body = Body(self._rfile, req, peer_closed, response.send_continue)
            ex = Exchange(req, body, response, self)
            self._context.router.dispatch(ex)
            self._finish_body(ex)
            return not response.close
        except (OSError, PeerClosed) as e:
            self._log_peer_error(e)
            return False
        except ImageioError as e:
            return self._error(ex, http_errors.reply_for(e) or http_errors.INTERNAL)
        except Exception:
            log.exception("INTERNAL error peer=%s request=%s", self.peer, self._what(ex))
            return self._error(ex, http_errors.INTERNAL)

    def _read_head(self) -> Request | None:
        self._arm()
        try:
            return read_head(self._rfile, self._http.max_header_bytes)
        finally:
            self._context.deadlines.disarm(self)

    def _arm(self) -> None:
        if self.ticket is None:
            timeout = self._http.header_timeout
            if self._head_due is not None:
                timeout = max(0.001, self._head_due - time.monotonic())
                self._head_due = None
            self.sock.settimeout(timeout)
            self._context.deadlines.arm(self, timeout)
        else:
            idle = self.ticket.spec.inactivity_timeout
            self.sock.settimeout(idle or None)

    def _finish_body(self, ex: Exchange) -> None:
        body, response = ex.body, ex.response
        if body.done or response.close:
            return
        if body.awaiting_continue:
            # Neither side knows whether the body will come: start afresh.
            response.close_after()
            return
        # A handler that replied without reading the whole body leaves the
        # stream out of sync; drop a small rest, else close.
        sink = memoryview(bytearray(MAX_DRAIN))
        if body.readinto(sink) == MAX_DRAIN and not body.done:
            response.close_after()

    def _error(self, ex: Exchange | None, reply: http_errors.Reply) -> bool:
        """Answer with reply; whether the connection may take another request."""
        level = logging.WARNING if reply.status >= 500 else logging.INFO
        log.log(
            level,
            "ERROR status=%d peer=%s request=%s transfer=%s reason=%s",
            reply.status,
            self.peer,
            self._what(ex),
            self._transfer(),
            reply.message,
        )
        # A refused head has no response yet, and nobody knows where the
        # next request would start (RFC 9112 section 6.3).
        response = ex.response if ex else Response(self.sock, None, close=True)
        if response.head_sent:
            # The reply is already on the wire: the client learns from the
            # short body and the closed connection.
            return False
        # Reply before draining: a client may send the head and wait for an
        # early answer before it sends a body we are going to refuse.
        if ex is None or not _small_rest(ex.body):
            response.close_after()
        try:
            response.error(reply)
        except (OSError, PeerClosed) as e:
            self._log_peer_error(e)
            return False
        self._linger = response.close
        if ex is not None:
            try:
                self._finish_body(ex)
            except (ImageioError, OSError):
                return False
        return not response.close

    # Logs.

    def _log_peer_error(self, e: Exception) -> None:
        if self._aborted:
            log.info("ABORTED peer=%s transfer=%s", self.peer, self._transfer())
        else:
            log.info("CLOSED peer=%s transfer=%s reason=%s", self.peer, self._transfer(), e)

    def _transfer(self) -> str:
        return self.ticket.transfer_id if self.ticket is not None else "-"

    def _what(self, ex: Exchange | None) -> str:
        if ex is None:
            return "-"
        req = ex.request
        # Never log the path: it holds the ticket id, which is the secret.
        return f"{req.method}:{self._context.router.route_name(req.path)}"


def _small_rest(body: Body) -> bool:
    """Whether the unread body is known and small enough to drop."""
    if body.awaiting_continue:
        return False
    left = body.left
    return left is not None and left <= MAX_DRAIN
