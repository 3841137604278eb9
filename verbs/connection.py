"""One client of the control socket: ordered replies, pushed notifications.

Rules:
- One reader thread per connection reads lines and answers them in turn,
  so replies come in request order.
- Every line written (reply or notification) goes out under the writer
  lock, whole, so lines never interleave.
- A peer that stops reading is dropped after ``SEND_TIMEOUT`` rather than
  blocking a notifier; an idle peer is fine.
- A line longer than ``MAX_LINE`` gets one -32600 as soon as it passes the
  limit; the rest of it is read and dropped up to its newline, and the
  next line is served: the connection (and its subscriptions) survives a
  broken request, and memory stays bounded by ``MAX_LINE`` + ``RECV_SIZE``.
- Only the reader thread closes the socket, under the writer lock, so no
  notifier writes to a descriptor number the kernel has handed out again.
- ``close()`` shuts the socket down without the writer lock (a send stuck
  on a peer that stopped reading holds it for up to ``SEND_TIMEOUT``) but
  under the small socket lock that ``sock.close()`` also takes, so the
  shutdown never reaches a reused descriptor.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from . import protocol

log = logging.getLogger(__name__)

MAX_LINE = 1024**2
SEND_TIMEOUT = 30.0
RECV_SIZE = 65536

CloseCallback = Callable[["Connection"], None]


class Connection:
    """One client of the control socket; owns its socket."""

    def __init__(self, sock: socket.socket, ident: int) -> None:
        self.ident = ident
        self._sock = sock
        self._wlock = threading.Lock()
        self._slock = threading.Lock()
        self._closed = False
        self._callbacks: list[CloseCallback] = []
        # Blocking reads loop on the timeout; it bounds sends.
        sock.settimeout(SEND_TIMEOUT)

    @property
    def closed(self) -> bool:
        return self._closed

    def on_close(self, callback: CloseCallback) -> None:
        """Call callback once when the connection ends (subscriptions end)."""
        with self._wlock:
            if not self._closed:
                self._callbacks.append(callback)
                return
        callback(self)

    def notify(self, method: str, params: Any) -> bool:
        """Push a notification; False if the connection is gone."""
        return self.send_line(protocol.notification_line(method, params))

    def send_line(self, text: str) -> bool:
        data = text.encode("utf-8") + b"\n"
        with self._wlock:
            if self._closed:
                return False
            try:
                self._sock.sendall(data)
                return True
            except OSError as e:
                log.warning("DROP connection=%d reason=%s", self.ident, e)
                self._shutdown_locked()
                return False

    def close(self) -> None:
        """Stop the connection now; its reader thread releases the socket."""
        with self._slock:
            if self._sock.fileno() >= 0:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the peer is already gone
        with self._wlock:
            self._shutdown_locked()

    def serve(self, methods: protocol.Methods) -> None:
        try:
            for line in self._lines():
                if line.strip():
                    reply = self._respond(line, methods)
                    if reply is not None and not self.send_line(reply):
                        break
        except OSError as e:
            log.warning("DROP connection=%d reason=%s", self.ident, e)
        finally:
            self._release()

    def _respond(self, line: bytes, methods: protocol.Methods) -> str | None:
        try:
            return protocol.respond(line, methods, self)
        except Exception:
            # A bug in the wire code: one request fails, the connection and
            # its subscriptions go on.
            log.exception("FAILED connection=%d", self.ident)
            return protocol.error_line(protocol.INTERNAL_ERROR, "Internal error, see the log")

    def _lines(self) -> Iterator[bytes]:
        buf = bytearray()
        scanned = 0
        skipping = False  # inside a refused line, until its newline
        while True:
            nl = buf.find(b"\n", scanned)
            if nl >= 0:
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                scanned = 0
                if skipping:
                    skipping = False
                elif len(line) > MAX_LINE:
                    self._refuse_long_line()
                else:
                    yield line
                continue
            if skipping or len(buf) > MAX_LINE:
                if not skipping:
                    self._refuse_long_line()
                    skipping = True
                buf.clear()
                scanned = 0
            else:
                scanned = len(buf)
            try:
                chunk = self._sock.recv(RECV_SIZE)
            except TimeoutError:
                continue  # an idle client is fine
            if not chunk:
                return
            buf += chunk

    def _refuse_long_line(self) -> None:
        log.warning("REFUSE connection=%d reason=line-too-long limit=%d", self.ident, MAX_LINE)
        self.send_line(
            protocol.error_line(
                protocol.INVALID_REQUEST,
                "Invalid request",
                f"request line exceeds {MAX_LINE} bytes",
            )
        )

    def _shutdown_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer is already gone

    def _release(self) -> None:
        with self._wlock:
            self._shutdown_locked()
            with self._slock:
                self._sock.close()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("CLOSE callback failed connection=%d", self.ident)
        log.debug("CLOSE connection=%d", self.ident)
