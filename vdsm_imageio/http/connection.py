"""One client connection: the request loop, replies, and what it owns.

Theory of operation: a connection runs in its own worker thread. It reads a
request head under the server's header deadline (until it has been
authorized by a ticket; from then on the ticket's inactivity timeout bounds
every wait), dispatches it through the router, and replies. It owns, and
closes on exit: its socket, the backend opened for its current ticket, and
its slot in the ticket's reader/writer accounting; a request borrows its
I/O buffers from the server's pool (``vdsm_imageio.pipeline``).
Canceling a ticket calls ``abort()``, which shuts the socket down so a
request blocked on a slow peer fails at once.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Hashable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from .. import zerocopy
from ..backends import Abortable, Backend, ParallelReads
from ..errors import BackendError, ImageioError, PeerClosed, ServiceBusy
from ..tickets import Ticket
from . import cors
from . import errors as http_errors
from .message import Body, Request, read_head
from .reader import SocketReader

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger(__name__)

REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}
# Unread body bytes we read and drop to keep a connection after an error.
MAX_DRAIN = 64 * 1024
# Closing a socket with unread input makes the kernel send a reset, which
# can destroy an error reply before the client reads it (RFC 7230 section
# 6.6): after such a reply we stop writing and drop input for a while.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 16 * 1024**2


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        server: Server,
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
        self.peer = peer
        self.server = server
        self.admission = admission
        self.ticket: Ticket | None = None
        self._backend: Backend | None = None
        self._readers: list[Backend] = []
        self._rfile = SocketReader(sock)
        self._rfile.prime(head)
        self._close = False
        self._linger = False
        self._head_sent = False
        self._aborted = False
        self.request: Request | None = None
        self.body: Body | None = None
        # The lobby starts the clock of the first head at accept (monotonic).
        self._head_due = head_due

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
        backend = self._backend
        if isinstance(backend, Abortable):
            backend.abort()

    def bind(self, ticket: Ticket, kind: str | None) -> None:
        """Use ticket, which authorized the current request, on this connection.

        The connection becomes authorized (``vdsm_imageio.http.admission``),
        or the request is 503 when the authorized slots are full.
        kind "read" or "write" takes a reader or writer slot (the limits are
        enforced); None attaches without a slot: OPTIONS and extents take
        none, because ovirt-imageio's client keeps its first connection, used
        for those, open beside max_readers data connections.
        """
        if not self.server.authorize(self):
            raise ServiceBusy(limit=self.server.config.http.max_connections)
        if self.ticket is not ticket:
            self._release_ticket()
        http = self.server.config.http
        if kind is None:
            ticket.attach(self, "peek", 0)
        else:
            limit = http.max_writers if kind == "write" else http.max_readers
            ticket.attach(self, kind, limit)
        self.ticket = ticket
        ticket.touch()
        # From now on the ticket's inactivity timeout bounds every wait.
        self.sock.settimeout(ticket.spec.inactivity_timeout or None)

    def backend(self, ticket: Ticket) -> Backend:
        if self._backend is None:
            self._backend = self.server.open_backend(ticket)
        return self._backend

    def readers(self, ticket: Ticket, count: int) -> list[Backend]:
        """Up to count handles for reading in parallel, the backend first.

        Only backends that gain from it have more than one; the extra
        handles live as long as the backend. Failing to open one is not an
        error: the download runs with those it has.
        """
        main = self.backend(ticket)
        if not isinstance(main, ParallelReads):
            return [main]
        while len(self._readers) < count - 1:
            try:
                reader = main.open_reader()
            except BackendError as e:
                log.warning(
                    "READERS fewer than asked transfer=%s have=%d reason=%s",
                    ticket.transfer_id,
                    1 + len(self._readers),
                    e,
                )
                break
            if reader is None:
                break
            self._readers.append(reader)
        return [main, *self._readers[: count - 1]]

    def splice_target(self) -> socket.socket | None:
        """The socket when data may be spliced into it (not TLS)."""
        if isinstance(self.sock, ssl.SSLSocket) or not zerocopy.available():
            return None
        return self.sock

    def _release_ticket(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        if self._backend is not None:
            backend, self._backend = self._backend, None
            backend.close()
        if self.ticket is not None:
            self.ticket.detach(self)
            self.ticket = None

    def close(self) -> None:
        try:
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
            while not self._close and not self._aborted:
                if not self._serve_one():
                    break
        finally:
            self.close()

    def _serve_one(self) -> bool:
        self._head_sent = False
        self.request = None
        self.body = None
        try:
            self._arm()
            try:
                req = read_head(self._rfile, self.server.config.http.max_header_bytes)
            finally:
                self.server.deadlines.disarm(self)
            if req is None:
                return False
            self.request = req
            self._close = not req.keep_alive
            self.body = Body(self._rfile, req, self._peer_error, self._send_continue)
            self.server.router.dispatch(self, req)
            self._finish_body()
        except (OSError, PeerClosed) as e:
            self._log_peer_error(e)
            return False
        except ImageioError as e:
            reply = http_errors.reply_for(e) or http_errors.INTERNAL
            self._error(reply, e)
        except Exception:
            log.exception("INTERNAL error peer=%s request=%s", self.peer, self._what())
            self._error(http_errors.INTERNAL, None)
        return True

    def _arm(self) -> None:
        http = self.server.config.http
        if self.ticket is None:
            timeout = http.header_timeout
            if self._head_due is not None:
                timeout = max(0.001, self._head_due - time.monotonic())
                self._head_due = None
            self.sock.settimeout(timeout)
            self.server.deadlines.arm(self, timeout)
        else:
            idle = self.ticket.spec.inactivity_timeout
            self.sock.settimeout(idle or None)

    def _finish_body(self) -> None:
        if self.body is None or self.body.done:
            return
        if self._close:
            return
        if self.body.awaiting_continue:
            # Neither side knows whether the body will come: start afresh.
            self._close = True
            return
        # A handler that replied without reading the whole body leaves the
        # stream out of sync; drop a small rest, else close.
        sink = memoryview(bytearray(MAX_DRAIN))
        if self.body.readinto(sink) == MAX_DRAIN and not self.body.done:
            self._close = True

    def _error(self, reply: http_errors.Reply, error: Exception | None) -> None:
        status = reply.status
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(
            level,
            "ERROR status=%d peer=%s request=%s transfer=%s reason=%s",
            status,
            self.peer,
            self._what(),
            self._transfer(),
            reply.message,
        )
        if self._head_sent:
            # The reply is already on the wire: the client learns from the
            # short body and the closed connection.
            self._close = True
            return
        # Reply before draining: a client may send the head and wait for an
        # early answer before it sends a body we are going to refuse.
        if reply.close or not self._small_rest():
            self._close = True
        try:
            self.reply(
                status, (reply.message + "\n").encode(), "text/plain; charset=utf-8", reply.headers
            )
        except (OSError, PeerClosed) as e:
            self._log_peer_error(e)
            self._close = True
            return
        self._linger = self._close
        self._finish_body_after_error()

    def _small_rest(self) -> bool:
        """Whether the unread body is known and small enough to drop."""
        if self.body is None:
            # The head was refused: where this request ends, and so where
            # the next one starts, is unknown (RFC 9112 section 6.3).
            return False
        if self.body.awaiting_continue:
            return False
        left = self.body.left
        return left is not None and left <= MAX_DRAIN

    def _finish_body_after_error(self) -> None:
        try:
            self._finish_body()
        except (ImageioError, OSError):
            self._close = True

    # Replies.

    def send_head(self, status: int, headers: dict[str, str], length: int) -> None:
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            "Server: vdsm-imageio",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Length: {length}",
        ]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        lines.extend(f"{k}: {v}" for k, v in self._cors_headers().items())
        if self._close:
            lines.append("Connection: close")
        self._head_sent = True
        self.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _send_continue(self) -> None:
        self.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def sendall(self, data: bytes | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise self._peer_error(e) from e

    def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        all_headers = dict(headers or {})
        if body:
            all_headers.setdefault("Content-Type", content_type)
        self.send_head(status, all_headers, len(body))
        # RFC 9110 section 9.3.2: a reply to HEAD has no content, whatever
        # its status (HEAD is refused here, with 405); bytes after the head
        # would be read as the start of the next reply.
        if body and not (self.request is not None and self.request.method == "HEAD"):
            self.sendall(body)

    def reply_json(
        self, obj: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(obj).encode() + b"\n"
        self.reply(status, body, "application/json", headers)

    def close_after_reply(self) -> None:
        self._close = True

    def _cors_headers(self) -> dict[str, str]:
        return cors.headers(self.request)

    # Errors and logs.

    def _peer_error(self, e: OSError) -> Exception:
        return PeerClosed(reason=e.strerror or type(e).__name__)

    def _log_peer_error(self, e: Exception) -> None:
        if self._aborted:
            log.info("ABORTED peer=%s transfer=%s", self.peer, self._transfer())
        else:
            log.info("CLOSED peer=%s transfer=%s reason=%s", self.peer, self._transfer(), e)

    def _transfer(self) -> str:
        return self.ticket.transfer_id if self.ticket is not None else "-"

    def _what(self) -> str:
        req = self.request
        if req is None:
            return "-"
        # Never log the path: it holds the ticket id, which is the secret.
        return f"{req.method}:{self.server.router.route_name(req.path)}"


Opener = Callable[[Ticket], Backend]
